/*
 * GICv2 and GICv3 for the virtual timer's interrupt, programmed as Linux's irq-gic.c and
 * irq-gic-v3.c do for a PPI: distributor enabled once; per CPU the PPI's priority, group (v3:
 * Group 1, which is what reaches EL1 as an IRQ) and enable bit in its banked registers, the CPU
 * interface enabled with a priority mask that lets it through. Interrupts are level-sensitive
 * (the timer's PPIs are), acknowledged through the IAR and ended through the EOIR.
 */
#include "gic.h"

#define GIC_PRIO 0xa0 /* GICD_INT_DEF_PRI */
#define GIC_PMR 0xf0  /* DEFAULT_PMR_VALUE: any priority above 0xf0 is signalled */

/* GICv2 distributor and CPU interface (IHI 0048B 4.1). */
#define GICD_CTLR 0x000
#define GICD_ISENABLER 0x100
#define GICD_IPRIORITYR 0x400
#define GICC_CTLR 0x00
#define GICC_PMR 0x04
#define GICC_IAR 0x0c
#define GICC_EOIR 0x10
#define GICD_CTLR_ENABLE 1u
#define GICC_CTLR_ENABLE 1u

/* GICv3 (IHI 0069 12.1): the distributor, and per CPU a redistributor of an RD_base frame
 * and an SGI_base frame 64 KiB above it (two more frames with virtual LPIs). */
#define GICD_CTLR_RWP (1u << 31)
#define GICD_CTLR_ARE (1u << 4)
#define GICD_CTLR_ENABLE_G1A (1u << 1)
#define GICD_CTLR_ENABLE_G1 (1u << 0)
#define GICR_TYPER 0x0008
#define GICR_WAKER 0x0014
#define GICR_TYPER_VLPIS (1u << 1)
#define GICR_TYPER_LAST (1u << 4)
#define GICR_WAKER_PROCESSOR_SLEEP (1u << 1)
#define GICR_WAKER_CHILDREN_ASLEEP (1u << 2)
#define GICR_SGI_BASE 0x10000
#define GICR_FRAME 0x20000
#define GICR_IGROUPR0 0x0080
#define GICR_ISENABLER0 0x0100
#define GICR_IPRIORITYR 0x0400
#define SPIN_LIMIT 1000000 /* polls of RWP / ChildrenAsleep before giving up */

/* Each vCPU's redistributor (RD_base), found by rt_gic_cpu_init. */
static u64 gicr_base[RT_MAX_CPUS];

static inline u32 rd32(u64 addr) { return *(const volatile u32 *)(uptr)addr; }
static inline void wr32(u64 addr, u32 v) { *(volatile u32 *)(uptr)addr = v; }

/* Set interrupt `intid`'s 8-bit priority in a byte-per-interrupt array at `reg` (word accesses). */
static void set_priority(u64 reg, u32 intid, u32 prio)
{
	u64 word = reg + (intid & ~3u);
	u32 shift = 8 * (intid & 3);
	wr32(word, (rd32(word) & ~(0xffu << shift)) | prio << shift);
}

static void v3_wait_rwp(void)
{
	for (unsigned i = 0; i < SPIN_LIMIT && rd32(rt_plat.gicd + GICD_CTLR) & GICD_CTLR_RWP; i++)
		rt_cpu_relax();
}

/* This CPU's redistributor: the frame whose GICR_TYPER affinity is our MPIDR's (0: none). */
static u64 v3_find_redist(void)
{
	u64 mpidr = rt_read_sysreg(mpidr_el1);
	u32 aff = (u32)(RT_MPIDR_AFF3(mpidr) << 24 | RT_MPIDR_AFF2(mpidr) << 16 |
			RT_MPIDR_AFF1(mpidr) << 8 | RT_MPIDR_AFF0(mpidr));
	for (unsigned r = 0; r < rt_plat.ngicr; r++) {
		u64 base = rt_plat.gicr[r].base, end = base + rt_plat.gicr[r].size;
		for (u64 rd = base; rd + GICR_FRAME <= end;) {
			u32 typer_lo = rd32(rd + GICR_TYPER), typer_hi = rd32(rd + GICR_TYPER + 4);
			if (typer_hi == aff)
				return rd;
			if (typer_lo & GICR_TYPER_LAST)
				break;
			rd += typer_lo & GICR_TYPER_VLPIS ? 2 * GICR_FRAME : GICR_FRAME;
		}
	}
	return 0;
}

#define ICC_SRE_EL1 S3_0_C12_C12_5
#define ICC_PMR_EL1 S3_0_C4_C6_0
#define ICC_IGRPEN1_EL1 S3_0_C12_C12_7
#define ICC_IAR1_EL1 S3_0_C12_C12_0
#define ICC_EOIR1_EL1 S3_0_C12_C12_1
#define RT_XSTR(x) #x
#define RT_STR(x) RT_XSTR(x)

static void v3_cpu_init(void)
{
	unsigned cpu = rt_cpu_id();
	u64 rd = v3_find_redist();
	gicr_base[cpu] = rd;
	if (!rd)
		return; /* no redistributor for this CPU: its timer interrupt cannot be delivered */
	wr32(rd + GICR_WAKER, rd32(rd + GICR_WAKER) & ~GICR_WAKER_PROCESSOR_SLEEP);
	for (unsigned i = 0; i < SPIN_LIMIT && rd32(rd + GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP; i++)
		rt_cpu_relax();
	u64 sgi = rd + GICR_SGI_BASE;
	u32 intid = rt_plat.vtimer_intid;
	wr32(sgi + GICR_IGROUPR0, rd32(sgi + GICR_IGROUPR0) | 1u << intid);
	set_priority(sgi + GICR_IPRIORITYR, intid, GIC_PRIO);
	wr32(sgi + GICR_ISENABLER0, 1u << intid);
	__asm__ volatile("mrs x9, " RT_STR(ICC_SRE_EL1) "\n\t"
			 "orr x9, x9, #1\n\t" /* SRE: the system-register interface */
			 "msr " RT_STR(ICC_SRE_EL1) ", x9\n\t"
			 "isb\n\t"
			 "msr " RT_STR(ICC_PMR_EL1) ", %0\n\t"
			 "msr " RT_STR(ICC_IGRPEN1_EL1) ", %1\n\t"
			 "isb" ::"r"((u64)GIC_PMR), "r"(1UL)
			 : "x9", "memory");
}

static void v2_cpu_init(void)
{
	u32 intid = rt_plat.vtimer_intid;
	set_priority(rt_plat.gicd + GICD_IPRIORITYR, intid, GIC_PRIO);
	wr32(rt_plat.gicd + GICD_ISENABLER, 1u << intid); /* banked per CPU for SGIs and PPIs */
	wr32(rt_plat.gicc + GICC_PMR, GIC_PMR);
	wr32(rt_plat.gicc + GICC_CTLR, GICC_CTLR_ENABLE);
}

void rt_gic_cpu_init(void)
{
	if (rt_plat.gic == RT_GIC_V2)
		v2_cpu_init();
	else if (rt_plat.gic == RT_GIC_V3)
		v3_cpu_init();
}

void rt_gic_init(void)
{
	if (rt_plat.gic == RT_GIC_V2) {
		wr32(rt_plat.gicd + GICD_CTLR, GICD_CTLR_ENABLE);
	} else if (rt_plat.gic == RT_GIC_V3) {
		wr32(rt_plat.gicd + GICD_CTLR, 0);
		v3_wait_rwp();
		wr32(rt_plat.gicd + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1);
		v3_wait_rwp();
	}
	rt_gic_cpu_init();
}

u32 rt_gic_ack(void)
{
	if (rt_plat.gic == RT_GIC_V3) {
		u64 iar;
		__asm__ volatile("mrs %0, " RT_STR(ICC_IAR1_EL1) "\n\tdsb sy" : "=r"(iar)::"memory");
		return (u32)iar;
	}
	return rd32(rt_plat.gicc + GICC_IAR);
}

void rt_gic_eoi(u32 iar)
{
	if (rt_plat.gic == RT_GIC_V3)
		__asm__ volatile("msr " RT_STR(ICC_EOIR1_EL1) ", %0\n\tisb" ::"r"((u64)iar) : "memory");
	else
		wr32(rt_plat.gicc + GICC_EOIR, iar);
}
