/*
 * minikernel: a guest kernel that uses stolen time the way Linux/arm64 does.
 *
 * - Probe (arch/arm64/kernel/paravirt.c, drivers/firmware/psci): PSCI_VERSION >= 1.0,
 *   PSCI_FEATURES(SMCCC_VERSION) supported, SMCCC_VERSION >= 1.1, then
 *   ARCH_FEATURES(PV_TIME_FEATURES) == 0, then PV_TIME_FEATURES(PV_TIME_ST) == 0.
 * - CPU online (every vCPU, on itself): PV_TIME_ST; -1 fails; revision or attributes != 0 fails.
 *   para_steal_clock(cpu) is then one 64-bit load of the record's stolen_time.
 * - A periodic tick of HZ = 250 from the virtual timer IRQ (CVAL advanced by CNTFRQ/HZ; missed
 *   ticks are skipped as hrtimer_forward does in tick_sched_timer) calls account_process_tick():
 *   steal = steal_account_process_time(ULONG_MAX); if steal >= TICK_NSEC the tick is consumed,
 *   else TICK_NSEC - steal goes to user (busy loop), idle (WFI idle loop) or system (anything
 *   else), as kernel/sched/cputime.c does. cpustat is kept in ns.
 * - Workload, identical on every vCPU, from a common start T0: busy `busy_ms`, then idle in WFI
 *   for `idle_ms` (idle ends at the first tick after that), repeated until T0 + `duration_ms`,
 *   all in counter time (CNTVCT_EL0 / CNTFRQ_EL0). Defaults: 2000 ms, 30 ms busy, 20 ms idle.
 *   These live in the symbol `minikernel_config` (.data) and may be patched in the ELF file:
 *   struct { u64 magic = "PVMKCFG1" (LE); u64 duration_ms; u64 busy_ms; u64 idle_ms; }.
 * - Then vCPU 0 prints /proc/stat-style lines in USER_HZ = 100 units (nsec_to_clock_t):
 *       cpu  user nice system idle iowait irq softirq steal guest guest_nice
 *       cpuN user nice system idle iowait irq softirq steal guest guest_nice
 *   (the aggregate converts the sum of the per-CPU ns, as show_stat() does), then per vCPU
 *       steal_ns cpuN <cpustat[CPUTIME_STEAL] in ns>
 *   and exits 0 through semihosting. Other lines start with "minikernel:".
 *
 * Live Physical Time (REFERENCE section 5, the 2020 RFC), mirroring the Python model guest
 * (src/pvtime/guest/lpt.py) and computing exactly what src/pvtime/fixedpoint.py does:
 * - Probe (vCPU 0, before stolen time): SMCCC >= 1.1, ARCH_FEATURES(PV_TIME_FEATURES) == 0,
 *   PV_TIME_FEATURES(PV_TIME_LPT) == 0, PV_TIME_LPT(x1 = 0) -> the record's IPA; the record must
 *   have revision and attributes 0, an even sequence_number, non-zero frequencies, shifts in
 *   1..63 and exactly the canonical scale factors of its frequencies. Otherwise (LPT not offered
 *   or a bad record) the kernel uses the architected counter as before.
 * - Clocksource: the PV counter at pv_freq (the kernel's CNTFRQ). Every counter read is
 *   native -> PV, `(scale_mult * native) >> fracbits` with a 128-bit product; every CVAL write
 *   is PV -> native with the smallest native n whose PV value reaches the deadline
 *   (ceil((pv << fracbits) / scale_mult), a 128-by-64 division: never early, unlike the RFC's
 *   truncating reverse product). Each access sits in the sequence retry loop: read
 *   sequence_number, take the factors (re-read and re-validated only when the sequence moved;
 *   a bad record keeps the last good factors), access, re-read; retry while it moved or is odd.
 *   Each vCPU keeps its own copy of the factors.
 * - Event stream: every vCPU enables Linux's 10 kHz event stream (CNTKCTL_EL1.EVNTEN, EVNTI for
 *   the kernel's frequency); under LPT the EVNTI chosen at pv_freq moves by the nearest power of
 *   two of native/pv (clamped to 0..15), re-translated at a tick after the sequence moves.
 * - EL0 counter reads: under LPT CNTKCTL_EL1.EL0VCTEN and EL0PCTEN are cleared, so an EL0 read of
 *   CNTVCT, CNTPCT or CNTFRQ traps (ESR EC 0x18) and the synchronous exception handler emulates
 *   it through the clocksource (the PV count; pv_freq for CNTFRQ). Without LPT, EL0VCTEN is set
 *   as Linux does (CNTVCT and CNTFRQ read directly; CNTPCT traps and is emulated raw). At the end
 *   vCPU 0 runs a small EL0 task (ERET to EL0t): it reads CNTVCT several times, CNTPCT and
 *   CNTFRQ into memory, then spins until the timer preempts it; the IRQ handler reaps it.
 * - Timer: each tick checks the PV counter against its PV deadline (an early fire is counted and
 *   retried a native tick later, as the Python guest does) and keeps the maximum lateness.
 * Extra output lines (after the steal lines):
 *       el0 reads <n> traps <n> cntfrq <hz> monotonic <0|1> before <v> first <v> last <v> after <v> cntpct <v>
 *       clocksource <arch_sys_counter|pv_lpt_counter> freq <hz>
 *       lpt pv_freq <hz> native_freq <hz> seq <n> scale_mult <m> fracbits <f> rscale_mult <m> rfracbits <f>
 *       lpt retries <n> refreshes <n> bad_records <n>
 *       clock native <n> value <v>          (one clocksource read: the native count and its value)
 *       timer fires <n> early <n> max_late_ns <ns>
 *       evnti cpuN guest <e> programmed <e> cntkctl 0x<x>
 *   (`lpt` lines only under LPT; `before`/`after` are kernel clocksource reads around the EL0 task.)
 *
 * Without PV time (a probe step fails) the kernel runs on with a steal clock that reads 0, as
 * Linux does, saying `minikernel: stolen time not available: <why> (got <value>); steal reads 0`.
 * Every SMCCC and PSCI call goes through the device tree's conduit (rt_smccc).
 *
 * Exit status: 0 success; 13 PV_TIME_ST answered -1 on a vCPU; 14 a record has revision or
 * attributes != 0; 15 a vCPU could not be brought up; 16 a vCPU did not finish; 17 the EL0 task
 * did not come back; 70 unexpected exception (runtime).
 */
#include "rt.h"

#define EXIT_PV_TIME_ST_FAILED 13
#define EXIT_BAD_RECORD 14
#define EXIT_BRINGUP_FAILED 15
#define EXIT_NOT_FINISHED 16
#define EXIT_EL0_FAILED 17

#define NSEC_PER_SEC 1000000000ULL
#define HZ 250
#define TICK_NSEC ((NSEC_PER_SEC + HZ / 2) / HZ)
#define USER_HZ 100

#define MINIKERNEL_CONFIG_MAGIC 0x314746434b4d5650ULL /* "PVMKCFG1" little-endian */

struct minikernel_config {
	u64 magic;
	u64 duration_ms;
	u64 busy_ms;
	u64 idle_ms;
};

__attribute__((used)) volatile struct minikernel_config minikernel_config = {
	.magic = MINIKERNEL_CONFIG_MAGIC,
	.duration_ms = 2000,
	.busy_ms = 30,
	.idle_ms = 20,
};

/* include/linux/kernel_stat.h */
enum cpu_usage_stat {
	CPUTIME_USER,
	CPUTIME_NICE,
	CPUTIME_SYSTEM,
	CPUTIME_SOFTIRQ,
	CPUTIME_IRQ,
	CPUTIME_IDLE,
	CPUTIME_IOWAIT,
	CPUTIME_STEAL,
	CPUTIME_GUEST,
	CPUTIME_GUEST_NICE,
	NR_STATS,
};

/* What the vCPU was doing when the tick hit. */
enum activity { ACT_SYSTEM, ACT_USER, ACT_IDLE };

/* Bring-up status of a vCPU (online). */
enum { ONLINE_PENDING = 0, ONLINE_OK = 1 }; /* otherwise an exit status */

struct pcpu {
	u64 cpustat[NR_STATS];
	u64 prev_steal_time;           /* rq->prev_steal_time */
	const volatile u64 *steal_rec; /* &record->stolen_time, NULL until online */
	volatile u64 activity;
	u64 ticks;
	u64 spurious_irqs;
	u64 next_cval;
	u64 last_steal_clock;
	volatile u64 online;
	volatile u64 done;
	u64 sink;
	/* clocksource (LPT: this vCPU's copy of the factors and the sequence they were read at) */
	u64 lpt_seq;
	struct lpt_factors {
		u64 scale_mult, rscale_mult;
		u32 native_hz, pv_hz, fracbits, rfracbits;
	} sf;
	u64 reads, retries, refreshes, bad_records;
	u64 evnti, evnt_seq, evnt_native;
	int evnt_set;
	/* the tick timer as this vCPU saw it */
	u64 timer_fires, timer_early, max_late_ns;
	u64 el0_traps;
	u64 cntkctl; /* CNTKCTL_EL1 at the end of the workload */
} __attribute__((aligned(64)));

static struct pcpu pcpus[RT_MAX_CPUS];

/* Stolen time is offered (probe); otherwise steal reads 0 on every vCPU. */
static int steal_clock;

/* Shared start signal and schedule (written by vCPU 0 before `go`). */
static volatile u64 go;
static u64 t0, t_end, tick_period, busy_ticks, idle_ticks;

/* ------------------------------------------------------------------------------------------ */
/* Clocksource: the architected counter, or Live Physical Time (src/pvtime/guest/lpt.py)       */

/* The 48-byte LPT record (REFERENCE section 5). */
struct lpt_record {
	u32 revision;
	u32 attributes;
	u64 sequence_number;
	u32 native_freq;
	u32 pv_freq;
	u64 scale_mult;
	u64 rscale_mult;
	u32 fracbits;
	u32 rfracbits;
};
_Static_assert(sizeof(struct lpt_record) == 48, "LPT record layout");

#define LPT_MAX_RETRIES 64 /* a sequence that keeps moving would be a broken host */
#define EVT_STREAM_HZ 10000 /* ARCH_TIMER_EVT_STREAM_FREQ */
#define EVNTI_MAX 15

static int lpt;                                   /* the clocksource is LPT's PV counter */
static const volatile struct lpt_record *lpt_rec; /* at the IPA PV_TIME_LPT answered */
static u64 lpt_boot_seq;                          /* the factors vCPU 0 probed, for the others */
static struct lpt_factors lpt_boot_sf;
static u64 clock_freq;                            /* CNTFRQ as the kernel sees it */

static u32 bit_length(u64 v) { return v ? 64 - (u32)__builtin_clzl(v) : 0; }

/* ilog2(floor(num/den)) + 1, at least 1 (fixedpoint._intbits). */
static u32 intbits(u64 num, u64 den)
{
	u32 n = bit_length(num / den);
	return n ? n : 1;
}

/* fixedpoint.scale_factors: what the host writes for these frequencies. */
static struct lpt_factors canonical_factors(u32 native_hz, u32 pv_hz)
{
	struct lpt_factors sf;
	sf.native_hz = native_hz;
	sf.pv_hz = pv_hz;
	sf.fracbits = 64 - intbits(pv_hz, native_hz);
	sf.rfracbits = 64 - intbits(native_hz, pv_hz);
	sf.scale_mult = (u64)rt_udiv128_64((u128)pv_hz << sf.fracbits, native_hz, NULL);
	sf.rscale_mult = (u64)rt_udiv128_64((u128)native_hz << sf.rfracbits, pv_hz, NULL);
	return sf;
}

/* Read the record: 1 with its sequence and factors when a guest may trust it (LptRecord.validate
 * and ScaleFactors.is_canonical), else 0 with *why set. */
static int lpt_read_record(u64 *seq, struct lpt_factors *sf, const char **why)
{
	const volatile struct lpt_record *r = lpt_rec;
	u32 revision = r->revision, attributes = r->attributes;
	*seq = r->sequence_number;
	rt_dmb();
	sf->native_hz = r->native_freq;
	sf->pv_hz = r->pv_freq;
	sf->scale_mult = r->scale_mult;
	sf->rscale_mult = r->rscale_mult;
	sf->fracbits = r->fracbits;
	sf->rfracbits = r->rfracbits;
	*why = revision ? "revision is not 0"
	       : attributes ? "attributes is not 0"
	       : *seq & 1 ? "sequence_number bit 0 is reserved and set"
	       : !sf->native_hz || !sf->pv_hz ? "native_freq and pv_freq must be non-zero"
	       : sf->fracbits < 1 || sf->fracbits > 63 || sf->rfracbits < 1 || sf->rfracbits > 63
		       ? "fracbits / rfracbits out of 1..63"
		       : NULL;
	if (*why)
		return 0;
	struct lpt_factors c = canonical_factors(sf->native_hz, sf->pv_hz);
	if (c.scale_mult != sf->scale_mult || c.rscale_mult != sf->rscale_mult ||
	    c.fracbits != sf->fracbits || c.rfracbits != sf->rfracbits) {
		*why = "scale factors do not match the frequencies";
		return 0;
	}
	return 1;
}

/* fixedpoint.native_to_pv: (scale_mult * native) >> fracbits, 128-bit product, truncated to u64. */
static inline u64 native_to_pv(u64 native, const struct lpt_factors *sf)
{
	return (u64)(((u128)sf->scale_mult * native) >> sf->fracbits);
}

/* fixedpoint.pv_to_native_deadline: the smallest native n with native_to_pv(n) >= pv,
 * ceil((pv << fracbits) / scale_mult), saturated at 2^64 - 1. */
static u64 pv_to_native_deadline(u64 pv, const struct lpt_factors *sf)
{
	u64 rem;
	u128 n = rt_udiv128_64((u128)pv << sf->fracbits, sf->scale_mult, &rem);
	if (rem)
		n++;
	return n > (u128)U64_MAX ? U64_MAX : (u64)n;
}

/* fixedpoint.evnti_shift: the nearest integer to log2(native/pv) (exact; there are no ties). */
static int evnti_shift(const struct lpt_factors *sf)
{
	u64 hi = sf->native_hz, lo = sf->pv_hz;
	if (hi < lo) {
		hi = sf->pv_hz;
		lo = sf->native_hz;
	}
	u32 k = bit_length(hi / lo) - 1;
	if ((u128)hi * hi >= ((u128)lo * lo) << (2 * k + 1))
		k++;
	return sf->native_hz >= sf->pv_hz ? (int)k : -(int)k;
}

/* fixedpoint.translate_evnti. */
static u64 translate_evnti(u64 evnti, const struct lpt_factors *sf)
{
	int v = (int)evnti + evnti_shift(sf);
	return v < 0 ? 0 : v > EVNTI_MAX ? EVNTI_MAX : (u64)v;
}

/* arch_timer_configure_evtstream: the closest power of two to freq / 10 kHz, clamped to 0..15. */
static u64 linux_evnti(u64 freq)
{
	u64 div = freq / EVT_STREAM_HZ;
	u32 pos = bit_length(div);
	if (pos > 1 && !(div & (1UL << (pos - 2))))
		pos--;
	return pos > EVNTI_MAX ? EVNTI_MAX : pos;
}

/* The sequence now, with this vCPU's factors refreshed if it moved (LptClock._factors). */
static u64 lpt_factors(struct pcpu *pc)
{
	u64 seq = lpt_rec->sequence_number;
	rt_dmb();
	if (seq != pc->lpt_seq && !(seq & 1)) {
		u64 rseq;
		struct lpt_factors sf;
		const char *why;
		if (!lpt_read_record(&rseq, &sf, &why) || rseq != seq || sf.pv_hz != clock_freq) {
			pc->bad_records++; /* keep the last good factors (reported at the end) */
			return seq;
		}
		pc->lpt_seq = seq;
		pc->sf = sf;
		pc->refreshes++;
	}
	return seq;
}

/* The access made under `seq` is valid (LptClock._stable). */
static int lpt_stable(struct pcpu *pc, u64 seq)
{
	rt_dmb();
	if (!(seq & 1) && lpt_rec->sequence_number == seq)
		return 1;
	pc->retries++;
	return 0;
}

/* CNTVCT (or CNTPCT) as the kernel's clocksource reads it; *native_out gets the raw count. */
static u64 clock_read_native(struct pcpu *pc, int physical, u64 *native_out)
{
	pc->reads++;
	u64 native = 0;
	if (!lpt) {
		native = physical ? rt_cntpct() : rt_cntvct();
		if (native_out)
			*native_out = native;
		return native;
	}
	for (unsigned i = 0; i < LPT_MAX_RETRIES; i++) {
		u64 seq = lpt_factors(pc);
		native = physical ? rt_cntpct() : rt_cntvct();
		if (lpt_stable(pc, seq))
			break;
	}
	if (native_out)
		*native_out = native;
	return native_to_pv(native, &pc->sf);
}

static u64 clock_read(struct pcpu *pc) { return clock_read_native(pc, 0, NULL); }

/* Program the virtual timer to fire once the clocksource reaches `deadline`, never before. */
static void clock_set_cval(struct pcpu *pc, u64 deadline)
{
	if (!lpt) {
		rt_cntv_set_cval(deadline);
		return;
	}
	for (unsigned i = 0; i < LPT_MAX_RETRIES; i++) {
		u64 seq = lpt_factors(pc);
		rt_cntv_set_cval(pv_to_native_deadline(deadline, &pc->sf));
		if (lpt_stable(pc, seq))
			break;
	}
}

static void write_evnt(u64 evnti)
{
	u32 ctl = rt_cntkctl() & ~RT_CNTKCTL_EVNTI_MASK;
	rt_set_cntkctl(ctl | RT_CNTKCTL_EVNTEN | (u32)(evnti & 0xf) << RT_CNTKCTL_EVNTI_SHIFT);
}

static void apply_evnt(struct pcpu *pc)
{
	u64 seq = 0, native = pc->evnti;
	for (unsigned i = 0; i < LPT_MAX_RETRIES; i++) {
		seq = lpt_factors(pc);
		native = translate_evnti(pc->evnti, &pc->sf);
		write_evnt(native);
		if (lpt_stable(pc, seq))
			break;
	}
	pc->evnt_seq = seq;
	pc->evnt_native = native;
}

/* Enable the event stream for an EVNTI chosen at the kernel's frequency. */
static void clock_set_event_stream(struct pcpu *pc, u64 evnti)
{
	pc->evnti = evnti;
	pc->evnt_set = 1;
	if (!lpt) {
		write_evnt(evnti);
		pc->evnt_native = evnti;
		return;
	}
	apply_evnt(pc);
}

/* After a new VM start (the sequence moved): translate the event stream again. */
static void clock_refresh(struct pcpu *pc)
{
	if (lpt && pc->evnt_set && pc->evnt_seq != lpt_rec->sequence_number)
		apply_evnt(pc);
}

/* Per-CPU clocksource setup: EL0 counter access (trapped under LPT), the factors, the event
 * stream. */
static void clock_cpu_init(struct pcpu *pc)
{
	u32 ctl = rt_cntkctl();
	if (lpt) {
		pc->lpt_seq = lpt_boot_seq;
		pc->sf = lpt_boot_sf;
		ctl &= ~(RT_CNTKCTL_EL0PCTEN | RT_CNTKCTL_EL0VCTEN);
	} else {
		ctl |= RT_CNTKCTL_EL0VCTEN;
	}
	rt_set_cntkctl(ctl);
	clock_set_event_stream(pc, linux_evnti(clock_freq));
}

/* SMCCC >= 1.1 as Linux finds it (psci_init_smccc), without messages. */
static int smccc_1_1(void)
{
	u32 psci = rt_psci_version();
	if ((psci >> 16) < 1 || psci == 0xffffffffu)
		return 0;
	if (rt_psci_features(SMCCC_VERSION) == PSCI_RET_NOT_SUPPORTED)
		return 0;
	return (s32)rt_smccc(SMCCC_VERSION, 0, 0, 0).a0 >= (s32)SMCCC_VERSION_1_1;
}

/* LptClock.probe: 1 when the PV counter is in use. */
static int lpt_probe(void)
{
	if (!smccc_1_1())
		return 0;
	if (rt_smccc(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0 != SMCCC_RET_SUCCESS)
		return 0;
	if (rt_smccc(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_LPT, 0, 0).a0 != SMCCC_RET_SUCCESS)
		return 0;
	u64 ipa = rt_smccc(SMCCC_PV_TIME_LPT, 0, 0, 0).a0;
	if ((s64)ipa < 0)
		return 0;
	lpt_rec = (const volatile struct lpt_record *)(uptr)ipa;
	const char *why;
	if (!lpt_read_record(&lpt_boot_seq, &lpt_boot_sf, &why)) {
		rt_printf("minikernel: arm-pv: LPT record rejected (%s); using the architected counter\n",
			  why);
		lpt_rec = NULL;
		return 0;
	}
	rt_printf("minikernel: arm-pv: using LPT, %u Hz over a %u Hz counter\n", lpt_boot_sf.pv_hz,
		  lpt_boot_sf.native_hz);
	return 1;
}

static void clock_init(void)
{
	lpt = lpt_probe();
	clock_freq = lpt ? lpt_boot_sf.pv_hz : rt_cntfrq(); /* read once at boot, as arch_timer */
}

/* ------------------------------------------------------------------------------------------ */
/* Stolen time: arch/arm64/kernel/paravirt.c                                                    */

static int stolen_time_cpu_online(struct pcpu *pc)
{
	struct rt_smccc_res res = rt_smccc(SMCCC_PV_TIME_ST, 0, 0, 0);
	if (res.a0 == SMCCC_RET_NOT_SUPPORTED)
		return EXIT_PV_TIME_ST_FAILED;
	u64 ipa = res.a0;
	u32 revision = *(const volatile u32 *)(uptr)ipa;
	u32 attributes = *(const volatile u32 *)(uptr)(ipa + 4);
	pc->steal_rec = (const volatile u64 *)(uptr)(ipa + 8); /* stays published, as in Linux */
	if (revision != 0 || attributes != 0)
		return EXIT_BAD_RECORD;
	return ONLINE_OK;
}

static u64 para_steal_clock(struct pcpu *pc)
{
	if (!pc->steal_rec)
		return 0;
	return *pc->steal_rec; /* one 64-bit load: the host's store is single-copy atomic */
}

/* ------------------------------------------------------------------------------------------ */
/* kernel/sched/cputime.c                                                                       */

static u64 steal_account_process_time(struct pcpu *pc, u64 maxtime)
{
	u64 steal = para_steal_clock(pc);
	pc->last_steal_clock = steal;
	steal -= pc->prev_steal_time;
	if (steal > maxtime)
		steal = maxtime;
	pc->cpustat[CPUTIME_STEAL] += steal; /* account_steal_time() */
	pc->prev_steal_time += steal;
	return steal;
}

static void account_process_tick(struct pcpu *pc, enum activity act)
{
	u64 cputime = TICK_NSEC;
	u64 steal = steal_account_process_time(pc, U64_MAX);

	if (steal >= cputime)
		return;
	cputime -= steal;

	if (act == ACT_USER)
		pc->cpustat[CPUTIME_USER] += cputime; /* account_user_time(), nice 0 */
	else if (act != ACT_IDLE)
		pc->cpustat[CPUTIME_SYSTEM] += cputime; /* account_system_time(), not in irq/softirq */
	else
		pc->cpustat[CPUTIME_IDLE] += cputime; /* account_idle_time(), nr_iowait == 0 */
}

/* ------------------------------------------------------------------------------------------ */
/* Tick                                                                                         */

static void tick_irq(struct rt_frame *frame)
{
	(void)frame;
	struct pcpu *pc = &pcpus[rt_cpu_id()];
	u32 ctl = rt_cntv_ctl();
	if ((ctl & (RT_CNT_CTL_ENABLE | RT_CNT_CTL_IMASK | RT_CNT_CTL_ISTATUS)) !=
	    (RT_CNT_CTL_ENABLE | RT_CNT_CTL_ISTATUS)) {
		pc->spurious_irqs++;
		return;
	}
	clock_refresh(pc); /* after a migration: translate the event stream again */
	u64 now = clock_read(pc);
	if (now < pc->next_cval) {
		/* Fired before its PV deadline (never with the exact conversion): the hrtimer has not
		 * expired; retry a minimal delta later, as clockevents does (and the Python guest). */
		pc->timer_early++;
		rt_cntv_set_tval(1);
		return;
	}
	u64 late_ns = rt_ticks_to_ns(now - pc->next_cval, clock_freq);
	pc->timer_fires++;
	if (late_ns > pc->max_late_ns)
		pc->max_late_ns = late_ns;
	/* hrtimer_forward(): the next expiry strictly after now; missed periods are skipped. */
	u64 next = pc->next_cval + tick_period;
	if (next <= now)
		next += ((now - next) / tick_period + 1) * tick_period;
	pc->next_cval = next;
	clock_set_cval(pc, next); /* acknowledges the level-triggered interrupt */

	pc->ticks++;
	account_process_tick(pc, (enum activity)pc->activity);
}

/* ------------------------------------------------------------------------------------------ */
/* Workload                                                                                     */

static void busy_until(struct pcpu *pc, u64 end)
{
	u64 x = pc->sink | 1;
	pc->activity = ACT_USER;
	while (clock_read(pc) < end) {
		for (unsigned i = 0; i < 256; i++) /* some work between counter reads */
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		__asm__ volatile("" : "+r"(x));
	}
	pc->sink = x;
	pc->activity = ACT_SYSTEM;
}

static void idle_until(struct pcpu *pc, u64 end)
{
	/* The arm64 idle loop: check with IRQs masked, WFI, take the IRQ with them unmasked. */
	rt_irq_disable();
	pc->activity = ACT_IDLE;
	while (clock_read(pc) < end) {
		rt_wfi();
		rt_irq_enable();
		rt_isb();
		rt_irq_disable();
	}
	pc->activity = ACT_SYSTEM;
	rt_irq_enable();
}

static void run(struct pcpu *pc)
{
	while (!rt_wait_nonzero_u64(&go, NSEC_PER_SEC)) /* sleeps in WFI between looks */
		;

	pc->next_cval = t0 + tick_period;
	clock_set_cval(pc, pc->next_cval);
	rt_cntv_set_ctl(RT_CNT_CTL_ENABLE);
	rt_irq_enable();

	u64 now = clock_read(pc);
	while (now < t_end) {
		u64 seg = now + busy_ticks;
		busy_until(pc, seg < t_end ? seg : t_end);
		now = clock_read(pc);
		if (now >= t_end)
			break;
		seg = now + idle_ticks;
		idle_until(pc, seg < t_end ? seg : t_end);
		now = clock_read(pc);
	}

	rt_irq_disable();
	rt_cntv_set_ctl(0);
	pc->activity = ACT_SYSTEM;
	pc->cntkctl = rt_cntkctl();
	rt_store_release_u64(&pc->done, 1);
}

void secondary_main(u64 ctx)
{
	(void)ctx;
	struct pcpu *pc = &pcpus[rt_cpu_id()];
	clock_cpu_init(pc);
	rt_store_release_u64(&pc->online, steal_clock ? (u64)stolen_time_cpu_online(pc) : ONLINE_OK);
	run(pc);
	/* returning powers this vCPU off */
}

/* ------------------------------------------------------------------------------------------ */
/* EL0 counter reads: trapped (CNTKCTL_EL1) and emulated through the clocksource               */

#define EL0_READS 8
#define EL0_SLICE_HZ 1000 /* the EL0 task is preempted every 1 ms of clocksource time */

struct el0_result {
	volatile u64 vct[EL0_READS];
	volatile u64 pct;
	volatile u64 frq;
	volatile u64 done;
};

static struct el0_result el0_res;
__attribute__((aligned(16))) static u8 el0_stack[4096];

/* User code: runs at EL0t. Every counter read is a plain MRS; under LPT each one traps. */
__attribute__((noreturn)) static void el0_task(u64 arg)
{
	struct el0_result *r = (struct el0_result *)(uptr)arg;
	for (unsigned i = 0; i < EL0_READS; i++) {
		rt_isb();
		r->vct[i] = rt_read_sysreg(cntvct_el0);
	}
	rt_isb();
	r->pct = rt_read_sysreg(cntpct_el0);
	r->frq = rt_read_sysreg(cntfrq_el0) & 0xffffffffu;
	rt_dmb();
	r->done = 1;
	rt_dmb();
	for (;;) /* until the tick preempts it and the kernel reaps it */
		rt_cpu_relax();
}

#define ISS_CNTVCT RT_SYSREG_ISS_ID(3, 3, 14, 0, 2)
#define ISS_CNTPCT RT_SYSREG_ISS_ID(3, 3, 14, 0, 1)
#define ISS_CNTFRQ RT_SYSREG_ISS_ID(3, 3, 14, 0, 0)

/* do_el0_sys: the cntvct/cntpct/cntfrq read handlers, through the clocksource. */
static int el0_sysreg_trap(u64 kind, u64 esr, struct rt_frame *f)
{
	if (kind != RT_VEC_SYNC + 8 || RT_ESR_EC(esr) != RT_ESR_EC_SYSREG ||
	    !RT_ESR_ISS_SYSREG_READ(esr))
		return 0;
	struct pcpu *pc = &pcpus[rt_cpu_id()];
	u64 id = RT_ESR_ISS_SYSREG_ID(esr), v;
	if (id == ISS_CNTVCT)
		v = clock_read_native(pc, 0, NULL);
	else if (id == ISS_CNTPCT)
		v = clock_read_native(pc, 1, NULL);
	else if (id == ISS_CNTFRQ)
		v = clock_freq;
	else
		return 0;
	unsigned rt = (unsigned)RT_ESR_ISS_SYSREG_RT(esr);
	if (rt != 31) /* xzr */
		f->x[rt] = v;
	f->elr += 4; /* arm64_skip_faulting_instruction */
	pc->el0_traps++;
	return 1;
}

/* The timer while the EL0 task runs: reap it once it is done, else give it another slice. */
static void el0_tick(struct rt_frame *f)
{
	struct pcpu *pc = &pcpus[rt_cpu_id()];
	rt_cntv_set_ctl(0);
	if ((f->spsr & 0xf) == 0 && rt_load_acquire_u64(&el0_res.done))
		rt_el0_exit(1);
	clock_set_cval(pc, clock_read(pc) + clock_freq / EL0_SLICE_HZ);
	rt_cntv_set_ctl(RT_CNT_CTL_ENABLE);
}

/* vCPU 0, after the workload: run the EL0 task and check what it read. */
static int el0_counter_test(struct pcpu *pc)
{
	rt_irq_disable();
	rt_set_sync_handler(el0_sysreg_trap);
	rt_set_irq_handler(el0_tick);
	u64 traps0 = pc->el0_traps;
	u64 before = clock_read(pc);
	clock_set_cval(pc, before + clock_freq / EL0_SLICE_HZ);
	rt_cntv_set_ctl(RT_CNT_CTL_ENABLE);
	u64 r = rt_el0_call(el0_task, (u64)(uptr)&el0_res, el0_stack + sizeof(el0_stack));
	rt_cntv_set_ctl(0);
	u64 after = clock_read(pc);
	rt_set_irq_handler(NULL);
	if (r != 1 || !el0_res.done) {
		rt_printf("minikernel: the EL0 task did not come back\n");
		return EXIT_EL0_FAILED;
	}
	int monotonic = before <= el0_res.vct[0] && el0_res.vct[EL0_READS - 1] <= after;
	for (unsigned i = 1; i < EL0_READS; i++)
		monotonic &= el0_res.vct[i - 1] <= el0_res.vct[i];
	rt_printf("el0 reads %u traps %lu cntfrq %lu monotonic %d before %lu first %lu last %lu "
		  "after %lu cntpct %lu\n",
		  EL0_READS, pc->el0_traps - traps0, el0_res.frq, monotonic, before, el0_res.vct[0],
		  el0_res.vct[EL0_READS - 1], after, el0_res.pct);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* vCPU 0                                                                                       */

/* PV time is absent: the kernel runs on without a steal clock, as Linux does. */
static int absent(const char *why, u64 value)
{
	rt_printf("minikernel: stolen time not available: %s (got 0x%lx); steal reads 0\n", why,
		  value);
	return 0;
}

/* has_pv_steal_clock: 1 when stolen time may be used. */
static int probe(void)
{
	u32 psci = rt_psci_version();
	if ((psci >> 16) < 1 || psci == 0xffffffffu)
		return absent("PSCI_VERSION < 1.0, SMCCC_VERSION not discoverable", psci);
	s32 feat = rt_psci_features(SMCCC_VERSION);
	if (feat == PSCI_RET_NOT_SUPPORTED)
		return absent("PSCI_FEATURES(SMCCC_VERSION) not supported", (u64)(s64)feat);
	s32 ver = (s32)rt_smccc(SMCCC_VERSION, 0, 0, 0).a0;
	if (ver < (s32)SMCCC_VERSION_1_1)
		return absent("SMCCC_VERSION < 1.1", (u64)(s64)ver);
	u64 r = rt_smccc(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0;
	if (r != SMCCC_RET_SUCCESS)
		return absent("ARCH_FEATURES(PV_TIME_FEATURES) != 0", r);
	r = rt_smccc(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0;
	if (r != SMCCC_RET_SUCCESS)
		return absent("PV_TIME_FEATURES(PV_TIME_ST) != 0", r);
	rt_printf("minikernel: stolen time supported (PSCI %u.%u, SMCCC 0x%x)\n", psci >> 16,
		  psci & 0xffff, (unsigned)ver);
	return 1;
}

static const char *online_error(u64 status)
{
	return status == EXIT_PV_TIME_ST_FAILED ? "PV_TIME_ST answered -1"
						: "record revision or attributes != 0";
}

static void print_stat_line(const char *name, const u64 *ns)
{
	static const enum cpu_usage_stat order[10] = {
		CPUTIME_USER,   CPUTIME_NICE,  CPUTIME_SYSTEM, CPUTIME_IDLE,  CPUTIME_IOWAIT,
		CPUTIME_IRQ,    CPUTIME_SOFTIRQ, CPUTIME_STEAL, CPUTIME_GUEST, CPUTIME_GUEST_NICE,
	};
	rt_printf_unlocked("%s", name);
	for (unsigned i = 0; i < 10; i++) /* nsec_to_clock_t() */
		rt_printf_unlocked(" %llu", ns[order[i]] / (NSEC_PER_SEC / USER_HZ));
	rt_printf_unlocked("\n");
}

int main(void)
{
	clock_init(); /* the boot CPU picks the clocksource first, as the Python guest does */
	steal_clock = probe();

	struct pcpu *pc0 = &pcpus[0];
	clock_cpu_init(pc0);
	u64 online = steal_clock ? (u64)stolen_time_cpu_online(pc0) : ONLINE_OK;
	if (online != ONLINE_OK) {
		rt_printf("minikernel: cpu0 online failed: %s\n", online_error(online));
		return (int)online;
	}

	u64 freq = clock_freq;
	unsigned ncpus = rt_probe_cpus();
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		s64 rc = rt_psci_cpu_on(rt_cpu_mpidr(cpu), rt_secondary_entry, cpu);
		if (rc != PSCI_RET_SUCCESS) {
			rt_printf("minikernel: CPU_ON(cpu%u) failed: %ld\n", cpu, rc);
			return EXIT_BRINGUP_FAILED;
		}
		online = rt_wait_nonzero_u64(&pcpus[cpu].online, NSEC_PER_SEC);
		if (online == ONLINE_PENDING) {
			rt_printf("minikernel: cpu%u did not come online\n", cpu);
			return EXIT_BRINGUP_FAILED;
		}
		if (online != ONLINE_OK) {
			rt_printf("minikernel: cpu%u online failed: %s\n", cpu, online_error(online));
			return (int)online;
		}
	}

	u64 duration_ms = minikernel_config.duration_ms;
	tick_period = freq / HZ;
	busy_ticks = rt_ns_to_ticks(minikernel_config.busy_ms * 1000000ULL, freq);
	idle_ticks = rt_ns_to_ticks(minikernel_config.idle_ms * 1000000ULL, freq);
	rt_printf("minikernel: %u vCPUs, CNTFRQ_EL0 = %lu Hz, HZ = %u, USER_HZ = %u, "
		  "duration %lu ms, busy %lu ms / idle %lu ms\n",
		  ncpus, freq, HZ, USER_HZ, duration_ms, minikernel_config.busy_ms,
		  minikernel_config.idle_ms);

	rt_set_irq_handler(tick_irq);
	t0 = clock_read(pc0) + tick_period;
	t_end = t0 + rt_ns_to_ticks(duration_ms * 1000000ULL, freq);
	rt_store_release_u64(&go, 1);
	run(pc0);

	u64 deadline = rt_cntvct() + 10 * rt_cntfrq(); /* 10 s of (hardware) counter time */
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		if (!rt_wait_nonzero_u64_until(&pcpus[cpu].done, deadline)) {
			rt_printf("minikernel: cpu%u did not finish\n", cpu);
			return EXIT_NOT_FINISHED;
		}
	}

	u64 sum[NR_STATS] = {0};
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		for (unsigned i = 0; i < NR_STATS; i++)
			sum[i] += pcpus[cpu].cpustat[i];
	print_stat_line("cpu ", sum);
	for (unsigned cpu = 0; cpu < ncpus; cpu++) {
		char name[8] = "cpu";
		unsigned n = 3;
		if (cpu >= 10)
			name[n++] = (char)('0' + cpu / 10);
		name[n++] = (char)('0' + cpu % 10);
		name[n] = 0;
		print_stat_line(name, pcpus[cpu].cpustat);
	}
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		rt_printf("steal_ns cpu%u %lu\n", cpu, pcpus[cpu].cpustat[CPUTIME_STEAL]);
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		rt_printf("minikernel: cpu%u ticks %lu spurious_irqs %lu steal_clock_ns %lu\n",
			  cpu, pcpus[cpu].ticks, pcpus[cpu].spurious_irqs,
			  pcpus[cpu].last_steal_clock);

	int status = el0_counter_test(pc0);
	if (status)
		return status;
	rt_printf("clocksource %s freq %lu\n", lpt ? "pv_lpt_counter" : "arch_sys_counter", clock_freq);
	u64 retries = 0, refreshes = 0, bad = 0, fires = 0, early = 0, max_late = 0;
	for (unsigned cpu = 0; cpu < ncpus; cpu++) {
		struct pcpu *pc = &pcpus[cpu];
		retries += pc->retries;
		refreshes += pc->refreshes;
		bad += pc->bad_records;
		fires += pc->timer_fires;
		early += pc->timer_early;
		if (pc->max_late_ns > max_late)
			max_late = pc->max_late_ns;
	}
	if (lpt) {
		const struct lpt_factors *sf = &pc0->sf;
		rt_printf("lpt pv_freq %u native_freq %u seq %lu scale_mult %lu fracbits %u "
			  "rscale_mult %lu rfracbits %u\n",
			  sf->pv_hz, sf->native_hz, lpt_rec->sequence_number, sf->scale_mult,
			  sf->fracbits, sf->rscale_mult, sf->rfracbits);
		rt_printf("lpt retries %lu refreshes %lu bad_records %lu\n", retries, refreshes, bad);
	}
	u64 native;
	u64 value = clock_read_native(pc0, 0, &native);
	rt_printf("clock native %lu value %lu\n", native, value);
	rt_printf("timer fires %lu early %lu max_late_ns %lu\n", fires, early, max_late);
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		rt_printf("evnti cpu%u guest %lu programmed %lu cntkctl 0x%x\n", cpu, pcpus[cpu].evnti,
			  pcpus[cpu].evnt_native, (unsigned)pcpus[cpu].cntkctl);
	rt_printf("minikernel: done\n");
	return 0;
}
