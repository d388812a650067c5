/* Constants shared by the assembly start-up code and the C runtime. */
#ifndef RT_CONFIG_H
#define RT_CONFIG_H

/* Highest number of vCPUs the runtime supports (vCPU index decoded from MPIDR_EL1, see rt.h). */
#define RT_MAX_CPUS 64
/* Per-vCPU stack size in bytes (16-byte aligned). */
#define RT_STACK_SIZE 0x4000

/* Size of the register frame saved on exception entry (see struct rt_frame). */
#define RT_FRAME_SIZE (34 * 8)

/* Exception classes reported to rt_exception() by the vector table. */
#define RT_VEC_SYNC 0
#define RT_VEC_IRQ 1
#define RT_VEC_FIQ 2
#define RT_VEC_SERROR 3
/* Added to the above for entries from SP_EL0 (+4) and from a lower EL (+8 AArch64, +12 AArch32). */

#endif
