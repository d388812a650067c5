/*
 * pvtime guest runtime: the small bare-metal layer the AArch64 guest programs are built on.
 *
 * Machine contract (see guests/README.md): the platform is read from the device tree (x0 when
 * booted as an arm64 Image, else the start of QEMU virt's RAM, else QEMU virt's defaults): the
 * memory, the PSCI conduit (HVC or SMC), the GIC (v2 or v3; none: pvtime's line-level virtual
 * timer interrupt), the timer PPIs and the console (PL011 or 16550). Exit through Arm
 * semihosting where it exists, else `EXIT: <status>` and PSCI SYSTEM_OFF.
 *
 * The MMU stays off, so every data access is Device-nGnRnE: the code is built with
 * -mstrict-align and -mgeneral-regs-only, and cross-CPU coordination uses only plain aligned
 * loads and stores with DMB barriers (no exclusives, see rt_lock_*).
 */
#ifndef RT_H
#define RT_H

#include "rt_config.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64; /* LP64: printf %lu/%lx */
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long s64;
typedef unsigned long uptr;
typedef unsigned long usize;
typedef unsigned __int128 u128; /* products and the 128-by-64 division below */

#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define U64_MAX (~0UL)

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* ------------------------------------------------------------------------------------------ */
/* The platform, as the device tree describes it (platform.c)                                   */

#define RT_MAX_MEM_RANGES 8
#define RT_MAX_RSV_RANGES 16
#define RT_MAX_GICR_REGIONS 4
#define RT_BOOTARGS_MAX 256

enum rt_gic_kind { RT_GIC_NONE, RT_GIC_V2, RT_GIC_V3 };
enum rt_uart_kind { RT_UART_PL011, RT_UART_NS16550 };
enum rt_dtb_source { RT_DTB_NONE, RT_DTB_X0, RT_DTB_RAM_START };

struct rt_range {
	u64 base, size;
};

struct rt_platform {
	u64 dtb;        /* the device tree's address; 0: none found, QEMU virt defaults */
	u32 dtb_source; /* enum rt_dtb_source */
	u32 nmem, nrsv;
	struct rt_range mem[RT_MAX_MEM_RANGES]; /* memory nodes (default: QEMU virt's RAM window) */
	struct rt_range rsv[RT_MAX_RSV_RANGES]; /* /reserved-memory children and /memreserve/ */
	u32 psci_smc;   /* the PSCI node's method: 1 smc, 0 hvc (also the SMCCC conduit) */
	u32 gic;        /* enum rt_gic_kind; RT_GIC_NONE: the timer is a plain IRQ (pvtime) */
	u64 gicd;       /* distributor */
	u64 gicc;       /* GICv2 CPU interface */
	u32 ngicr;      /* GICv3 redistributor regions */
	struct rt_range gicr[RT_MAX_GICR_REGIONS];
	u32 vtimer_intid; /* the virtual timer's interrupt (a PPI: 16 + the DT's number) */
	u32 uart;       /* enum rt_uart_kind */
	u64 uart_base;
	u32 uart_shift, uart_width; /* 16550: reg-shift, reg-io-width (1 or 4 bytes) */
	u32 ncpus;      /* cpu nodes in the tree (0: none; count with AFFINITY_INFO) */
	u64 cpu_mpidr[RT_MAX_CPUS]; /* their MPIDR affinity, the boot CPU first, then DT order */
	char bootargs[RT_BOOTARGS_MAX]; /* /chosen/bootargs (truncated), NUL-terminated */
};

/* Filled by vCPU 0 before main() runs (read-only afterwards). */
extern struct rt_platform rt_plat;

/* Is `word` one of the whitespace-separated words of /chosen/bootargs? */
int rt_bootarg(const char *word);
/* Where the device tree came from: "x0", "start of RAM" or "none (QEMU virt defaults)". */
const char *rt_dtb_source_name(void);

/* ------------------------------------------------------------------------------------------ */
/* Program interface: provided by each program.                                                 */

/* Runs on vCPU 0 after start-up; its return value is the semihosting exit status. */
int main(void);
/* Runs on a vCPU started by rt_psci_cpu_on(..., rt_secondary_entry, ctx); must not return
 * (if it does, the runtime calls PSCI CPU_OFF). */
void secondary_main(u64 ctx);

/* Entry point to pass to PSCI CPU_ON (start.S). */
extern char rt_secondary_entry[];

/* ------------------------------------------------------------------------------------------ */
/* Barriers, system registers, CPU identity                                                     */

static inline void rt_dmb(void) { __asm__ volatile("dmb sy" ::: "memory"); }
static inline void rt_dsb(void) { __asm__ volatile("dsb sy" ::: "memory"); }
static inline void rt_isb(void) { __asm__ volatile("isb" ::: "memory"); }
static inline void rt_wfi(void) { __asm__ volatile("dsb sy\n\twfi" ::: "memory"); }
static inline void rt_cpu_relax(void) { __asm__ volatile("yield" ::: "memory"); }

#define rt_read_sysreg(r)                                                                        \
	({                                                                                       \
		u64 __v;                                                                         \
		__asm__ volatile("mrs %0, " #r : "=r"(__v)::"memory");                           \
		__v;                                                                             \
	})
#define rt_write_sysreg(r, v)                                                                    \
	do {                                                                                     \
		u64 __v = (u64)(v);                                                              \
		__asm__ volatile("msr " #r ", %0" ::"r"(__v) : "memory");                        \
	} while (0)

static inline void rt_irq_enable(void) { __asm__ volatile("msr daifclr, #2" ::: "memory"); }
static inline void rt_irq_disable(void) { __asm__ volatile("msr daifset, #2" ::: "memory"); }

/*
 * vCPU index <-> MPIDR_EL1. The hypervisor packs the index as KVM's reset_mpidr
 * (arch/arm64/kvm/sys_regs.c) does, 16 vCPUs per Aff0 (the GICv3 SGI target list width):
 *   Aff0 = index[3:0], Aff1 = index[11:4], Aff2 = index[19:12], Aff3 = 0, bit 31 (RES1) set.
 * So vCPU 15 is 0x8000000f, vCPU 16 is 0x80000100, vCPU 20 is 0x80000104.
 */
#define RT_MPIDR_AFF0(m) ((u64)(m) & 0xff)
#define RT_MPIDR_AFF1(m) (((u64)(m) >> 8) & 0xff)
#define RT_MPIDR_AFF2(m) (((u64)(m) >> 16) & 0xff)
#define RT_MPIDR_AFF3(m) (((u64)(m) >> 32) & 0xff)
/* The affinity fields of MPIDR_EL1 (Aff3..Aff0), what PSCI compares. */
#define RT_MPIDR_HWID_MASK 0xff00ffffffUL
/* rt_mpidr_to_cpu's answer for an MPIDR that packs no index. */
#define RT_CPU_INVALID (~0u)

/* The MPIDR affinity fields (no bit 31) of vCPU `cpu`, as PSCI CPU_ON/AFFINITY_INFO take them. */
static inline u64 rt_cpu_mpidr(unsigned cpu)
{
	return ((u64)cpu & 0xf) | (((u64)cpu >> 4) & 0xff) << 8 | (((u64)cpu >> 12) & 0xff) << 16;
}
/* The vCPU index an MPIDR_EL1 value packs, or RT_CPU_INVALID if it is not such a packing
 * (Aff0 above 15 or Aff3 non-zero). Bits outside the affinity fields (31, U, MT) are ignored. */
static inline unsigned rt_mpidr_to_cpu(u64 mpidr)
{
	if (RT_MPIDR_AFF0(mpidr) > 0xf || RT_MPIDR_AFF3(mpidr) != 0)
		return RT_CPU_INVALID;
	return (unsigned)(RT_MPIDR_AFF0(mpidr) | RT_MPIDR_AFF1(mpidr) << 4 |
			  RT_MPIDR_AFF2(mpidr) << 12);
}
/* This vCPU's index (always < RT_MAX_CPUS: start.S parks a vCPU whose index is not). */
static inline unsigned rt_cpu_id(void) { return rt_mpidr_to_cpu(rt_read_sysreg(mpidr_el1)); }

/* ------------------------------------------------------------------------------------------ */
/* SMCCC                                                                                        */

struct rt_smccc_res {
	u64 a0, a1, a2, a3;
};

/* One SMCCC call with the given conduit instruction; x4..x17 are treated as clobbered. */
#define RT_SMCCC_CALL(insn, fid, arg1, arg2, arg3)                                               \
	({                                                                                       \
		register u64 __x0 __asm__("x0") = (u64)(fid);                                    \
		register u64 __x1 __asm__("x1") = (u64)(arg1);                                   \
		register u64 __x2 __asm__("x2") = (u64)(arg2);                                   \
		register u64 __x3 __asm__("x3") = (u64)(arg3);                                   \
		__asm__ volatile(insn                                                            \
				 : "+r"(__x0), "+r"(__x1), "+r"(__x2), "+r"(__x3)                \
				 :                                                               \
				 : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12",      \
				   "x13", "x14", "x15", "x16", "x17", "memory");                 \
		(struct rt_smccc_res){__x0, __x1, __x2, __x3};                                   \
	})

static inline struct rt_smccc_res rt_hvc(u64 fid, u64 a1, u64 a2, u64 a3)
{
	return RT_SMCCC_CALL("hvc #0", fid, a1, a2, a3);
}
static inline struct rt_smccc_res rt_hvc_imm1(u64 fid, u64 a1, u64 a2, u64 a3)
{
	return RT_SMCCC_CALL("hvc #1", fid, a1, a2, a3);
}
static inline struct rt_smccc_res rt_smc(u64 fid, u64 a1, u64 a2, u64 a3)
{
	return RT_SMCCC_CALL("smc #0", fid, a1, a2, a3);
}
static inline struct rt_smccc_res rt_smc_imm1(u64 fid, u64 a1, u64 a2, u64 a3)
{
	return RT_SMCCC_CALL("smc #1", fid, a1, a2, a3);
}
/* An SMCCC call through the platform's conduit (the PSCI node's method), as Linux makes them. */
static inline struct rt_smccc_res rt_smccc(u64 fid, u64 a1, u64 a2, u64 a3)
{
	return rt_plat.psci_smc ? rt_smc(fid, a1, a2, a3) : rt_hvc(fid, a1, a2, a3);
}

/*
 * Instructions that may be UNDEFINED here (an HVC or SMC with nothing behind it, semihosting's
 * HLT): between rt_undef_arm() and rt_undef_disarm() an UNDEF exception on this vCPU is caught
 * by the runtime's vector, which skips the instruction (its registers are left as they were);
 * rt_undef_disarm() returns 1 if that happened.
 */
void rt_undef_arm(void);
int rt_undef_disarm(void);

/* SMCCC function ids and return codes (REFERENCE section 1). */
#define SMCCC_VERSION 0x80000000u
#define SMCCC_ARCH_FEATURES 0x80000001u
#define SMCCC_PV_TIME_FEATURES 0xC5000020u
#define SMCCC_PV_TIME_ST 0xC5000021u
#define SMCCC_PV_TIME_LPT 0xC5000022u
#define SMCCC_VERSION_1_1 0x10001u
#define SMCCC_RET_SUCCESS 0ULL
#define SMCCC_RET_NOT_SUPPORTED U64_MAX /* -1 */
#define SMCCC_RET_NOT_REQUIRED ((u64)-2)
#define SMCCC_RET_INVALID_PARAMETER ((u64)-3)

/* ------------------------------------------------------------------------------------------ */
/* PSCI (through the conduit the device tree names)                                             */

#define PSCI_VERSION 0x84000000u
#define PSCI_CPU_OFF 0x84000002u
#define PSCI_CPU_ON 0xC4000003u
#define PSCI_AFFINITY_INFO 0xC4000004u
#define PSCI_SYSTEM_OFF 0x84000008u
#define PSCI_SYSTEM_RESET 0x84000009u
#define PSCI_FEATURES 0x8400000Au

#define PSCI_RET_SUCCESS 0
#define PSCI_RET_NOT_SUPPORTED (-1)
#define PSCI_RET_INVALID_PARAMETERS (-2)
#define PSCI_RET_DENIED (-3)
#define PSCI_RET_ALREADY_ON (-4)
#define PSCI_RET_ON_PENDING (-5)
#define PSCI_RET_INTERNAL_FAILURE (-6)
#define PSCI_RET_NOT_PRESENT (-7)
#define PSCI_RET_DISABLED (-8)
#define PSCI_RET_INVALID_ADDRESS (-9)

#define PSCI_AFFINITY_ON 0
#define PSCI_AFFINITY_OFF 1
#define PSCI_AFFINITY_ON_PENDING 2

static inline u32 rt_psci_version(void) { return (u32)rt_smccc(PSCI_VERSION, 0, 0, 0).a0; }
static inline s32 rt_psci_features(u32 fid) { return (s32)rt_smccc(PSCI_FEATURES, fid, 0, 0).a0; }
static inline s64 rt_psci_cpu_on(u64 target_mpidr, void *entry, u64 ctx)
{
	return (s64)rt_smccc(PSCI_CPU_ON, target_mpidr, (u64)(uptr)entry, ctx).a0;
}
static inline s64 rt_psci_affinity_info(u64 target_mpidr, u32 level)
{
	return (s64)rt_smccc(PSCI_AFFINITY_INFO, target_mpidr, level, 0).a0;
}
__attribute__((noreturn)) void rt_psci_cpu_off(void);
__attribute__((noreturn)) void rt_psci_system_off(void);
__attribute__((noreturn)) void rt_psci_system_reset(void);

/*
 * Discover how many vCPUs the machine has: for index 1, 2, ... ask AFFINITY_INFO(level 0) of
 * rt_cpu_mpidr(index) and stop at the first index answered INVALID_PARAMETERS or NOT_PRESENT (or
 * at RT_MAX_CPUS).
 * Returns the count including vCPU 0.
 */
unsigned rt_probe_cpus(void);

/* ------------------------------------------------------------------------------------------ */
/* Semihosting                                                                                  */

#define SEMIHOST_SYS_WRITEC 0x03
#define SEMIHOST_SYS_WRITE0 0x04
#define SEMIHOST_SYS_EXIT 0x18
#define SEMIHOST_SYS_EXIT_EXTENDED 0x20
#define SEMIHOST_ADP_STOPPED_APPLICATION_EXIT 0x20026

static inline u64 rt_semihost(u64 op, u64 param)
{
	register u64 x0 __asm__("x0") = op;
	register u64 x1 __asm__("x1") = param;
	__asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
	return x0;
}

/* Exit the whole machine with `status`: semihosting SYS_EXIT_EXTENDED (ApplicationExit, subcode =
 * status); where semihosting is absent (HLT UNDEFs) or returns, print `EXIT: <status>` and power
 * off with PSCI SYSTEM_OFF. */
__attribute__((noreturn)) void rt_exit(int status);

/* Exit status used by the runtime when a CPU takes an unexpected exception. */
#define RT_EXIT_FATAL 70

/* ------------------------------------------------------------------------------------------ */
/* Console                                                                                      */

/* The console is the device tree's stdout-path (else its first PL011 or 16550 UART). */
void rt_putc(char c);
void rt_puts(const char *s); /* no newline added */
/* printf over the console: %d %i %u %x %X %p %s %c %%, length l/ll/z, flags '0' '-', width. The
 * whole line is emitted under the console lock so lines from different CPUs do not mix. */
__attribute__((format(printf, 1, 2))) int rt_printf(const char *fmt, ...);
/* The same without the lock (the fatal-exception path). */
__attribute__((format(printf, 1, 2))) int rt_printf_unlocked(const char *fmt, ...);

/* ------------------------------------------------------------------------------------------ */
/* Generic timer                                                                                */

#define RT_CNT_CTL_ENABLE (1u << 0)
#define RT_CNT_CTL_IMASK (1u << 1)
#define RT_CNT_CTL_ISTATUS (1u << 2)

static inline u64 rt_cntfrq(void) { return rt_read_sysreg(cntfrq_el0) & 0xffffffffu; }
static inline u64 rt_cntvct(void)
{
	rt_isb();
	return rt_read_sysreg(cntvct_el0);
}
static inline u32 rt_cntv_ctl(void) { return (u32)rt_read_sysreg(cntv_ctl_el0); }
static inline void rt_cntv_set_ctl(u32 ctl)
{
	rt_write_sysreg(cntv_ctl_el0, ctl);
	rt_isb();
}
static inline void rt_cntv_set_cval(u64 cval)
{
	rt_write_sysreg(cntv_cval_el0, cval);
	rt_isb();
}
static inline void rt_cntv_set_tval(s32 tval)
{
	rt_write_sysreg(cntv_tval_el0, (u64)(s64)tval);
	rt_isb();
}
static inline u64 rt_cntv_cval(void) { return rt_read_sysreg(cntv_cval_el0); }
static inline u64 rt_cntpct(void)
{
	rt_isb();
	return rt_read_sysreg(cntpct_el0);
}

/* CNTKCTL_EL1: EL0 access to the counters and the event stream (Arm ARM D13.8.14). */
#define RT_CNTKCTL_EL0PCTEN (1u << 0)
#define RT_CNTKCTL_EL0VCTEN (1u << 1)
#define RT_CNTKCTL_EVNTEN (1u << 2)
#define RT_CNTKCTL_EVNTI_SHIFT 4
#define RT_CNTKCTL_EVNTI_MASK (0xfu << RT_CNTKCTL_EVNTI_SHIFT)
static inline u32 rt_cntkctl(void) { return (u32)rt_read_sysreg(cntkctl_el1); }
static inline void rt_set_cntkctl(u32 v)
{
	rt_write_sysreg(cntkctl_el1, v);
	rt_isb();
}

/*
 * (n / d, n % d) for a 128-bit n and a non-zero 64-bit d: the quotient (128 bits) is returned and
 * the remainder stored at *rem (if not NULL). Shift-and-subtract: the build links no compiler-rt
 * (-nostdlib), so clang's __udivti3 is not available.
 */
u128 rt_udiv128_64(u128 n, u64 d, u64 *rem);

/* Counter ticks <-> nanoseconds at CNTFRQ (no 128-bit division needed). */
u64 rt_ticks_to_ns(u64 ticks, u64 freq);
u64 rt_ns_to_ticks(u64 ns, u64 freq);
/* Busy-wait (no WFI) for `ns` nanoseconds of counter time. */
void rt_delay_ns(u64 ns);
/* Wait in WFI for `ns` of counter time using the virtual timer with the IRQ *masked* (PSTATE.I
 * set): WFI wakes on the pending timer condition without taking the interrupt. The virtual
 * timer is disabled again on return. Must not be used while a tick is armed. */
void rt_wfi_sleep_ns(u64 ns);

/* ------------------------------------------------------------------------------------------ */
/* Exceptions                                                                                   */

struct rt_frame {
	u64 x[31]; /* x0..x30 */
	u64 sp;    /* SP at the time of the exception */
	u64 elr;
	u64 spsr;
};

/* Called on the virtual timer's interrupt taken from EL1h (VBAR_EL1 + 0x280) or from EL0
 * (+ 0x480), with IRQs masked. NULL: fatal. `frame->spsr` tells which (M[3:0] == 0: from EL0).
 * With a GIC the runtime acknowledges the interrupt before and ends it (EOI) after the handler;
 * without one the handler is the whole story (pvtime's line-level timer). The handler must
 * deassert the timer (a later CVAL, or disable it). */
typedef void (*rt_irq_handler_fn)(struct rt_frame *frame);
void rt_set_irq_handler(rt_irq_handler_fn fn);

/* Called on a synchronous exception (kind = RT_VEC_SYNC, + 4 from EL1t, + 8 from EL0) with
 * ESR_EL1; returns non-zero when it handled it (the frame, ELR included, is then restored and
 * the exception returns), 0 to let the runtime report it as fatal. NULL: every one is fatal. */
typedef int (*rt_sync_handler_fn)(u64 kind, u64 esr, struct rt_frame *frame);
void rt_set_sync_handler(rt_sync_handler_fn fn);

/* ESR_EL1 fields. EC 0x18: a trapped MSR/MRS; its ISS is Op0[21:20] Op2[19:17] Op1[16:14]
 * CRn[13:10] Rt[9:5] CRm[4:1] Direction[0] (1 = read, MRS). */
#define RT_ESR_EC(esr) (((esr) >> 26) & 0x3f)
#define RT_ESR_EC_SYSREG 0x18
#define RT_ESR_ISS_SYSREG_RT(esr) (((esr) >> 5) & 31)
#define RT_ESR_ISS_SYSREG_READ(esr) ((esr) & 1)
/* The register identity (Op0, Op2, Op1, CRn, CRm) of an EC 0x18 ISS, without Rt and Direction. */
#define RT_ESR_ISS_SYSREG_ID(esr) ((esr) & 0x3ffc1e)
#define RT_SYSREG_ISS_ID(op0, op1, crn, crm, op2)                                                \
	(((u64)(op0) << 20) | ((u64)(op2) << 17) | ((u64)(op1) << 14) | ((u64)(crn) << 10) |     \
	 ((u64)(crm) << 1))

/*
 * Run `fn(arg)` at EL0 (EL0t, DAIF clear, SP_EL0 = `sp_el0`, 16-byte aligned) and return when a
 * handler of an exception taken from it calls rt_el0_exit(value): the call returns `value`, with
 * the callee-saved registers, SP and DAIF as they were. `fn` must never return. One EL0 call per
 * vCPU at a time (the context is saved per vCPU).
 */
u64 rt_el0_call(void (*fn)(u64), u64 arg, void *sp_el0);
/* From an exception handler (EL1h, any depth): abandon the exception and the EL0 code, and make
 * this vCPU's rt_el0_call return `value` (an interrupt being handled is ended first). */
__attribute__((noreturn)) void rt_el0_exit(u64 value);

/* ------------------------------------------------------------------------------------------ */
/* Cross-CPU coordination (memory is Device-nGnRnE with the MMU off: no exclusives)            */

/* Publish `v` to other CPUs: every earlier store is visible before it. */
static inline void rt_store_release_u64(volatile u64 *p, u64 v)
{
	rt_dmb();
	*p = v;
	rt_dmb();
}
/* Read a value published by another CPU; later loads are ordered after it. */
static inline u64 rt_load_acquire_u64(const volatile u64 *p)
{
	u64 v = *p;
	rt_dmb();
	return v;
}

/*
 * Wait until another CPU publishes a non-zero value at `p`, for at most `timeout_ns` of counter
 * time, sleeping in WFI (rt_wfi_sleep_ns, 50 us) between looks so that an idle waiter costs the
 * hypervisor nothing. Returns the value, or 0 on timeout. Same restriction as rt_wfi_sleep_ns.
 */
u64 rt_wait_nonzero_u64(const volatile u64 *p, u64 timeout_ns);
/* The same with an absolute deadline in counter ticks (CNTVCT_EL0). */
u64 rt_wait_nonzero_u64_until(const volatile u64 *p, u64 deadline);

/* Lamport's bakery lock for up to RT_MAX_CPUS CPUs: plain loads and stores only. */
struct rt_lock {
	volatile u64 choosing[RT_MAX_CPUS];
	volatile u64 number[RT_MAX_CPUS];
};
void rt_lock_acquire(struct rt_lock *l);
void rt_lock_release(struct rt_lock *l);

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                       */

void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);

#endif
