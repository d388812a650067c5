/*
 * The GIC driver the runtime uses for the virtual timer's interrupt (gic.c): GICv2 (Arm IHI
 * 0048B) or GICv3 (Arm IHI 0069), whichever the device tree names. Programs do not call it: the
 * runtime sets it up at start-up and acknowledges and ends each interrupt around the handler.
 */
#ifndef RT_GIC_H
#define RT_GIC_H

#include "rt.h"

/* vCPU 0, once: the distributor, then its own CPU interface (nothing without a GIC). */
void rt_gic_init(void);
/* Each vCPU: its redistributor (v3), its CPU interface, the virtual timer's PPI enabled. */
void rt_gic_cpu_init(void);
/* Acknowledge the highest-priority pending interrupt: the IAR value. */
u32 rt_gic_ack(void);
/* End the interrupt `iar` (an rt_gic_ack value): priority drop and deactivation (EOImode 0). */
void rt_gic_eoi(u32 iar);

/* The INTID an IAR value names (v2: bits [9:0], an SGI's source CPU above; v3: bits [23:0]). */
static inline u32 rt_gic_intid(u32 iar) { return rt_plat.gic == RT_GIC_V2 ? iar & 0x3ff : iar & 0xffffff; }
#define RT_GIC_SPECIAL_FIRST 1020 /* INTIDs 1020-1023 are special (1023: nothing pending) */

#endif
