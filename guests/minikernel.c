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
 * Exit status: 0 success; 10 SMCCC 1.1 not available (PSCI < 1.0, PSCI_FEATURES(SMCCC_VERSION)
 * not supported, or SMCCC_VERSION < 1.1); 11 ARCH_FEATURES(PV_TIME_FEATURES) != 0;
 * 12 PV_TIME_FEATURES(PV_TIME_ST) != 0; 13 PV_TIME_ST answered -1 on a vCPU; 14 a record has
 * revision or attributes != 0; 15 a vCPU could not be brought up; 16 a vCPU did not finish;
 * 70 unexpected exception (runtime).
 */
#include "rt.h"

#define EXIT_NO_SMCCC_1_1 10
#define EXIT_NO_PV_TIME_FEATURES 11
#define EXIT_NO_PV_TIME_ST_FEATURE 12
#define EXIT_PV_TIME_ST_FAILED 13
#define EXIT_BAD_RECORD 14
#define EXIT_BRINGUP_FAILED 15
#define EXIT_NOT_FINISHED 16

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
} __attribute__((aligned(64)));

static struct pcpu pcpus[RT_MAX_CPUS];

/* Shared start signal and schedule (written by vCPU 0 before `go`). */
static volatile u64 go;
static u64 t0, t_end, tick_period, busy_ticks, idle_ticks;

/* ------------------------------------------------------------------------------------------ */
/* Stolen time: arch/arm64/kernel/paravirt.c                                                    */

static int stolen_time_cpu_online(struct pcpu *pc)
{
	struct rt_smccc_res res = rt_hvc(SMCCC_PV_TIME_ST, 0, 0, 0);
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
	/* hrtimer_forward(): the next expiry strictly after now; missed periods are skipped. */
	u64 now = rt_cntvct();
	u64 next = pc->next_cval + tick_period;
	if (next <= now)
		next += ((now - next) / tick_period + 1) * tick_period;
	pc->next_cval = next;
	rt_cntv_set_cval(next); /* acknowledges the level-triggered interrupt */

	pc->ticks++;
	account_process_tick(pc, (enum activity)pc->activity);
}

/* ------------------------------------------------------------------------------------------ */
/* Workload                                                                                     */

static void busy_until(struct pcpu *pc, u64 end)
{
	u64 x = pc->sink | 1;
	pc->activity = ACT_USER;
	while (rt_cntvct() < end) {
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
	while (rt_cntvct() < end) {
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
	rt_cntv_set_cval(pc->next_cval);
	rt_cntv_set_ctl(RT_CNT_CTL_ENABLE);
	rt_irq_enable();

	u64 now = rt_cntvct();
	while (now < t_end) {
		u64 seg = now + busy_ticks;
		busy_until(pc, seg < t_end ? seg : t_end);
		now = rt_cntvct();
		if (now >= t_end)
			break;
		seg = now + idle_ticks;
		idle_until(pc, seg < t_end ? seg : t_end);
		now = rt_cntvct();
	}

	rt_irq_disable();
	rt_cntv_set_ctl(0);
	pc->activity = ACT_SYSTEM;
	rt_store_release_u64(&pc->done, 1);
}

void secondary_main(u64 ctx)
{
	(void)ctx;
	struct pcpu *pc = &pcpus[rt_cpu_id()];
	rt_store_release_u64(&pc->online, (u64)stolen_time_cpu_online(pc));
	run(pc);
	/* returning powers this vCPU off */
}

/* ------------------------------------------------------------------------------------------ */
/* vCPU 0                                                                                       */

static int fail(int status, const char *why, u64 value)
{
	rt_printf("minikernel: probe failed: %s (got 0x%lx)\n", why, value);
	return status;
}

static int probe(void)
{
	u32 psci = rt_psci_version();
	if ((psci >> 16) < 1 || psci == 0xffffffffu)
		return fail(EXIT_NO_SMCCC_1_1, "PSCI_VERSION < 1.0, SMCCC_VERSION not discoverable",
			    psci);
	s32 feat = rt_psci_features(SMCCC_VERSION);
	if (feat == PSCI_RET_NOT_SUPPORTED)
		return fail(EXIT_NO_SMCCC_1_1, "PSCI_FEATURES(SMCCC_VERSION) not supported",
			    (u64)(s64)feat);
	s32 ver = (s32)rt_hvc(SMCCC_VERSION, 0, 0, 0).a0;
	if (ver < (s32)SMCCC_VERSION_1_1)
		return fail(EXIT_NO_SMCCC_1_1, "SMCCC_VERSION < 1.1", (u64)(s64)ver);
	u64 r = rt_hvc(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0;
	if (r != SMCCC_RET_SUCCESS)
		return fail(EXIT_NO_PV_TIME_FEATURES, "ARCH_FEATURES(PV_TIME_FEATURES) != 0", r);
	r = rt_hvc(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0;
	if (r != SMCCC_RET_SUCCESS)
		return fail(EXIT_NO_PV_TIME_ST_FEATURE, "PV_TIME_FEATURES(PV_TIME_ST) != 0", r);
	rt_printf("minikernel: stolen time supported (PSCI %u.%u, SMCCC 0x%x)\n", psci >> 16,
		  psci & 0xffff, (unsigned)ver);
	return 0;
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
	int status = probe();
	if (status)
		return status;

	struct pcpu *pc0 = &pcpus[0];
	u64 online = (u64)stolen_time_cpu_online(pc0);
	if (online != ONLINE_OK) {
		rt_printf("minikernel: cpu0 online failed: %s\n", online_error(online));
		return (int)online;
	}

	u64 freq = rt_cntfrq();
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
	t0 = rt_cntvct() + tick_period;
	t_end = t0 + rt_ns_to_ticks(duration_ms * 1000000ULL, freq);
	rt_store_release_u64(&go, 1);
	run(pc0);

	u64 deadline = rt_cntvct() + 10 * freq; /* 10 s of counter time for all */
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
	rt_printf("minikernel: done\n");
	return 0;
}
