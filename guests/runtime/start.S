/*
 * Start-up and exception vectors.
 *
 * The image begins with an arm64 Image header (Linux's Documentation/arch/arm64/booting.rst),
 * so one build boots both as an ELF (entry _start, the header's first word: a branch) and as a
 * raw Image. The code is position-independent (every address is PC-relative: adrp/add, adr,
 * branches; guests/build.py checks it by linking twice), so an Image runs wherever the loader
 * puts it: 2 MiB-aligned base + text_offset (0), e.g. at 0x80000000 under kvmtool and Firecracker.
 *
 * vCPU 0 enters at _start (EL1h, MMU off, DAIF masked; x0 = the device tree for an Image, 0 for
 * an ELF under QEMU or pvtime); the other vCPUs enter at rt_secondary_entry through PSCI CPU_ON
 * (x0 = context id). Each vCPU takes the stack rt_stacks[index] (its vCPU index, decoded from
 * MPIDR_EL1 as rt_mpidr_to_cpu does) and points VBAR_EL1 at rt_vectors; vCPU 0 alone clears .bss
 * (before it starts any other vCPU) and calls rt_primary_start(x0 at entry, image start), the
 * others call rt_secondary_start(context id).
 */
#include "rt_config.h"

/*
 * \xd = this vCPU's index, decoded from MPIDR_EL1 packed as KVM's reset_mpidr does
 * (Aff0 = index[3:0], Aff1 = index[11:4], Aff2 = index[19:12]); \tmp is clobbered. Branches to
 * \bad if MPIDR_EL1 is no such packing (Aff0 > 15 or Aff3 != 0); the caller checks the range.
 */
	.macro	RT_CPU_INDEX xd, tmp, bad
	mrs	\tmp, mpidr_el1
	tst	\tmp, #0xff00000000	/* Aff3 */
	b.ne	\bad
	ubfx	\xd, \tmp, #0, #8	/* Aff0 */
	cmp	\xd, #0xf
	b.hi	\bad
	lsr	\tmp, \tmp, #8
	and	\tmp, \tmp, #0xffff	/* Aff2:Aff1 */
	orr	\xd, \xd, \tmp, lsl #4
	.endm

/* Image header flags: little-endian (bit 0 clear), 4 KiB pages (bits 2:1 = 1), and the
 * 2 MiB-aligned base may be anywhere in physical memory (bit 3). */
#define RT_IMAGE_FLAGS ((1 << 1) | (1 << 3))

	.section .text.boot, "ax"
	.global _start
	.type _start, %function
_start:
	b	rt_image_entry		/* code0 */
	.long	0			/* code1 */
	.quad	0			/* text_offset */
	.quad	__image_size		/* image_size: from here to the end of .bss and the stacks */
	.quad	RT_IMAGE_FLAGS		/* flags */
	.quad	0, 0, 0			/* res2, res3, res4 */
	.ascii	"ARM\x64"		/* magic */
	.long	0			/* res5 (no PE header) */
rt_image_entry:
	msr	daifset, #0xf
	mov	x19, x0
	mov	x20, #1
	b	rt_common_entry
	.size _start, . - _start

	.global rt_secondary_entry
	.type rt_secondary_entry, %function
rt_secondary_entry:
	msr	daifset, #0xf
	mov	x19, x0
	mov	x20, #0
	b	rt_common_entry
	.size rt_secondary_entry, . - rt_secondary_entry

	.type rt_common_entry, %function
rt_common_entry:
	msr	spsel, #1
	RT_CPU_INDEX x1, x2, rt_park
	cmp	x1, #RT_MAX_CPUS
	b.hs	rt_park
	/* sp = rt_stacks + (index + 1) * RT_STACK_SIZE */
	adrp	x2, rt_stacks
	add	x2, x2, :lo12:rt_stacks
	add	x3, x1, #1
	mov	x4, #RT_STACK_SIZE
	madd	x2, x3, x4, x2
	mov	sp, x2
	adrp	x2, rt_vectors
	add	x2, x2, :lo12:rt_vectors
	msr	vbar_el1, x2
	isb
	mov	x29, #0
	mov	x30, #0
	cbz	x20, 2f
	/* vCPU 0: clear .bss (8-byte aligned bounds, see link.ld) */
	adrp	x2, __bss_start
	add	x2, x2, :lo12:__bss_start
	adrp	x3, __bss_end
	add	x3, x3, :lo12:__bss_end
1:	cmp	x2, x3
	b.hs	3f
	str	xzr, [x2], #8
	b	1b
3:	dsb	sy
	mov	x0, x19
	adrp	x1, __image_start
	add	x1, x1, :lo12:__image_start
	bl	rt_primary_start
	b	rt_park
2:	mov	x0, x19
	bl	rt_secondary_start
	.global rt_park
rt_park:
	msr	daifset, #0xf
	wfi
	b	rt_park
	.size rt_common_entry, . - rt_common_entry

/* ---------------------------------------------------------------------------------------- */
/* EL0 calls (rt.h): rt_el0_call(fn, arg, sp_el0) saves the callee-saved registers, LR and DAIF
 * on the EL1 stack, records SP_EL1 in rt_el0_saved_sp[vCPU index] and ERETs to fn(arg) at EL0t
 * with DAIF clear. An exception taken from EL0 pushes its frame below that save area; its
 * handler calls rt_el0_exit(value) (rt.c), which ends an interrupt in progress and calls
 * rt_el0_resume(value): that drops everything below the save area and returns from
 * rt_el0_call with `value`.                                                                   */

	.section .text, "ax"
	.global rt_el0_call
	.type rt_el0_call, %function
rt_el0_call:
	sub	sp, sp, #112
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	mrs	x9, daif
	str	x9, [sp, #96]
	RT_CPU_INDEX x9, x10, rt_park
	adrp	x10, rt_el0_saved_sp
	add	x10, x10, :lo12:rt_el0_saved_sp
	mov	x11, sp
	str	x11, [x10, x9, lsl #3]
	msr	daifset, #0xf
	msr	sp_el0, x2
	msr	elr_el1, x0
	msr	spsr_el1, xzr		/* EL0t, DAIF clear */
	mov	x0, x1
	eret
	.size rt_el0_call, . - rt_el0_call

	.global rt_el0_resume
	.type rt_el0_resume, %function
rt_el0_resume:
	RT_CPU_INDEX x9, x10, rt_park
	adrp	x10, rt_el0_saved_sp
	add	x10, x10, :lo12:rt_el0_saved_sp
	ldr	x11, [x10, x9, lsl #3]
	mov	sp, x11
	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldr	x9, [sp, #96]
	add	sp, sp, #112
	msr	daif, x9
	ret
	.size rt_el0_resume, . - rt_el0_resume

/* ---------------------------------------------------------------------------------------- */
/* Vector table: every entry saves a struct rt_frame and calls rt_exception(kind, frame).   */

	.macro	VENTRY kind
	.balign	0x80
	sub	sp, sp, #RT_FRAME_SIZE
	stp	x0, x1, [sp, #0]
	mov	x0, #\kind
	b	rt_exception_entry
	.endm

	.section .text.vectors, "ax"
	.balign	0x800
	.global	rt_vectors
rt_vectors:
	/* current EL, SP_EL0 */
	VENTRY	(RT_VEC_SYNC + 4)
	VENTRY	(RT_VEC_IRQ + 4)
	VENTRY	(RT_VEC_FIQ + 4)
	VENTRY	(RT_VEC_SERROR + 4)
	/* current EL, SP_ELx */
	VENTRY	RT_VEC_SYNC
	VENTRY	RT_VEC_IRQ
	VENTRY	RT_VEC_FIQ
	VENTRY	RT_VEC_SERROR
	/* lower EL, AArch64 */
	VENTRY	(RT_VEC_SYNC + 8)
	VENTRY	(RT_VEC_IRQ + 8)
	VENTRY	(RT_VEC_FIQ + 8)
	VENTRY	(RT_VEC_SERROR + 8)
	/* lower EL, AArch32 */
	VENTRY	(RT_VEC_SYNC + 12)
	VENTRY	(RT_VEC_IRQ + 12)
	VENTRY	(RT_VEC_FIQ + 12)
	VENTRY	(RT_VEC_SERROR + 12)

	.balign	0x80
	.type rt_exception_entry, %function
rt_exception_entry:
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x19, [sp, #144]
	stp	x20, x21, [sp, #160]
	stp	x22, x23, [sp, #176]
	stp	x24, x25, [sp, #192]
	stp	x26, x27, [sp, #208]
	stp	x28, x29, [sp, #224]
	add	x2, sp, #RT_FRAME_SIZE
	stp	x30, x2, [sp, #240]
	mrs	x2, elr_el1
	mrs	x3, spsr_el1
	stp	x2, x3, [sp, #256]
	mov	x1, sp
	bl	rt_exception
	ldp	x2, x3, [sp, #256]
	msr	elr_el1, x2
	msr	spsr_el1, x3
	ldp	x0, x1, [sp, #0]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x19, [sp, #144]
	ldp	x20, x21, [sp, #160]
	ldp	x22, x23, [sp, #176]
	ldp	x24, x25, [sp, #192]
	ldp	x26, x27, [sp, #208]
	ldp	x28, x29, [sp, #224]
	ldr	x30, [sp, #240]
	add	sp, sp, #RT_FRAME_SIZE
	eret
	.size rt_exception_entry, . - rt_exception_entry
