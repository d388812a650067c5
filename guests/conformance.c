/*
 * conformance: the guest-visible behaviour of Arm PV time (DEN0057A stolen time, SMCCC 1.1
 * discovery), checked on every vCPU, on any arm64 hypervisor that boots a bare-metal ELF or an
 * arm64 Image with a device tree (QEMU, QEMU+KVM, kvmtool, crosvm, Firecracker, pvtime).
 *
 * vCPU 0 reads the platform from the device tree (the runtime: vCPUs, PSCI conduit, memory),
 * probes as Linux does (PSCI >= 1.0, PSCI_FEATURES(SMCCC_VERSION), SMCCC_VERSION >= 1.1, then
 * ARCH_FEATURES(PV_TIME_FEATURES) == 0 and PV_TIME_FEATURES(PV_TIME_ST) == 0), starts every other
 * vCPU with CPU_ON, and every vCPU runs the same list of checks on itself:
 *   - psci:  the CPU_ON context id arrives in x0; MPIDR_EL1 is a cpu node's reg;
 *   - per conduit (hvc #0, smc #0, hvc #1; one that UNDEFs -- caught by the runtime's vector --
 *     or that answers SMCCC_VERSION otherwise than the device tree's conduit has its checks
 *     skipped with the reason): unknown function ids answer -1 and leak nothing in
 *     x1..x3 (zero or preserved, SMCCC 1.1 section 5.2); with SMCCC 1.1: SMCCC_VERSION, the
 *     function id taken from w0, ARCH_FEATURES of unknown ids; with PV time: the FEATURES calls
 *     (u32 arguments, 32-bit aliases unsupported), PV_TIME_ST's record: a 64-byte aligned
 *     address, stable across calls and conduits, outside the memory the device tree gives the
 *     guest (or inside /reserved-memory), revision, attributes and padding 0;
 *   - smc #1 (an SMC with a non-zero immediate): x0 = ~0, as KVM answers;
 *   - steal: stolen_time never decreases across busy loops, WFI and SMCCC calls; over a 20 ms
 *     busy window run by every vCPU at once it grows no faster than time passes, and time the
 *     vCPU was kept from running (counter gaps over 100 us) shows up in it -- a check skipped
 *     with "(no contention)" when the vCPU lost less than a tenth of the window.
 * and vCPU 0 checks that the records are distinct per vCPU. Checks that need PV time are
 * skipped, with the reason, when the hypervisor does not offer it -- unless `expect-pvtime` is in
 * /chosen/bootargs, which turns those skips into failures.
 *
 * Output, as kvm-unit-tests prints it: `PASS: <name>`, `FAIL: <name> (<details>)` or
 * `SKIP: <name> (<why>)` per check (a per-vCPU check is one line: it passes when it passed on
 * every vCPU; a failure names the vCPUs), `INFO:` lines, then
 *     SUMMARY: <n> tests, <f> unexpected failures, <s> skipped
 * and the exit status (semihosting, else `EXIT: <status>` and PSCI SYSTEM_OFF):
 *     0  no check failed
 *     1  a check failed
 *     2  a vCPU did not report within 10 s of counter time after vCPU 0 finished its checks
 *     70 a vCPU took an unexpected exception (runtime)
 */
#include "rt.h"

#define RECORD_SIZE 64
#define MAX_ITEMS 128
#define MAX_DETAILS 3                                  /* vCPUs named in a FAIL line */
#define REPORT_TIMEOUT_NS (10ULL * 1000000000ULL)
#define WINDOW_NS 20000000ULL                          /* the contention window */
#define GAP_NS 100000ULL                               /* a counter jump this long: kept away */
#define SLACK_NS 10000ULL

/* Function ids nobody implements (STANDARD_HYP 0x30; a SIP-owned one). */
#define UNKNOWN_FID 0xC5000030u
#define UNKNOWN_SIP_FID 0x8200ABCDu
/* SMC32/HVC32 aliases of the PV time calls (bit 30 clear). */
#define PV_TIME_FEATURES_32 (SMCCC_PV_TIME_FEATURES & ~(1u << 30))
#define PV_TIME_ST_32 (SMCCC_PV_TIME_ST & ~(1u << 30))
#define PV_TIME_LPT_32 (SMCCC_PV_TIME_LPT & ~(1u << 30))
#define HIGH_BITS 0xFFFFFFFF00000000ULL
/* Values that a call must not turn into anything else in x1..x3. */
#define GARBAGE1 0x1111111111111111ULL
#define GARBAGE2 0x2222222222222222ULL
#define GARBAGE3 0x3333333333333333ULL

#define NOT_SUPPORTED SMCCC_RET_NOT_SUPPORTED

enum status { ST_PASS = 1, ST_FAIL, ST_SKIP, ST_NA };
enum cmp { EQ, NE, GE, LE, GE_S32 };

struct item {
	const char *group, *name;
	const char *why; /* SKIP: the reason; FAIL: what went wrong instead of the values */
	u32 status, cmp;
	u32 expected_pv; /* a FAIL because PV time was expected (expect-pvtime) and not offered */
	u64 expected, got;
};

struct cpu_result {
	u64 n, overflow;
	struct item items[MAX_ITEMS];
	int undef;     /* the last call UNDEFed (for the next check) */
	u64 ipa;       /* PV_TIME_ST through the platform's conduit (U64_MAX: none) */
	u64 window_ns, away_ns, steal_ns;
	volatile u64 ready; /* at the contention window */
	volatile u64 done;  /* published last */
} __attribute__((aligned(64)));

static struct cpu_result results[RT_MAX_CPUS];
static struct cpu_result global; /* vCPU 0's checks of the whole machine */

/* What vCPU 0 found before starting the others (read-only afterwards). */
static unsigned ncpus;
static u64 cpu_mpidr[RT_MAX_CPUS];
static volatile u64 started[RT_MAX_CPUS];
static volatile u64 go; /* the contention window may start */
static u32 psci_version;
static u64 smccc_version;
static int smccc_1_1, pvtime, expect_pvtime;
static const char *smccc_why, *pvtime_why;

/* ------------------------------------------------------------------------------------------ */
/* Recording                                                                                    */

static struct item *add(struct cpu_result *r, const char *group, const char *name)
{
	static struct item scratch[RT_MAX_CPUS];
	if (r->n >= MAX_ITEMS) {
		r->overflow++;
		return &scratch[rt_cpu_id()];
	}
	struct item *it = &r->items[r->n++];
	it->group = group;
	it->name = name;
	it->why = NULL;
	it->expected_pv = 0;
	it->expected = it->got = 0;
	it->cmp = EQ;
	return it;
}

static int holds(enum cmp cmp, u64 expected, u64 got)
{
	switch (cmp) {
	case EQ:
		return got == expected;
	case NE:
		return got != expected;
	case GE:
		return got >= expected;
	case LE:
		return got <= expected;
	case GE_S32:
		return (s32)got >= (s32)expected;
	}
	return 0;
}

static void check(struct cpu_result *r, const char *group, const char *name, enum cmp cmp,
		  u64 expected, u64 got)
{
	struct item *it = add(r, group, name);
	it->cmp = cmp;
	it->expected = expected;
	it->got = got;
	it->status = holds(cmp, expected, got) ? ST_PASS : ST_FAIL;
	if (r->undef) { /* the call behind `got` never reached a hypervisor */
		it->status = ST_FAIL;
		it->why = "the call UNDEFs";
		r->undef = 0;
	}
}

static void not_applicable(struct cpu_result *r, const char *group, const char *name)
{
	add(r, group, name)->status = ST_NA;
}

/* What a group of checks needs: closed, its checks are skipped with `why`, or fail when the
 * command line expects PV time (`fail`). */
struct gate {
	int open, fail;
	const char *why;
};

static void closed(struct cpu_result *r, const struct gate *g, const char *group, const char *name)
{
	struct item *it = add(r, group, name);
	it->status = g->fail ? ST_FAIL : ST_SKIP;
	it->expected_pv = (u32)g->fail;
	it->why = g->why;
}

/* A check that needs gate `g`: `got` is evaluated only when the gate is open. */
#define GATED(g, group, name, cmp, expected, got)                                                \
	do {                                                                                     \
		if ((g)->open)                                                                   \
			check(r, group, name, cmp, (expected), (got));                           \
		else                                                                             \
			closed(r, g, group, name);                                               \
	} while (0)

/* ------------------------------------------------------------------------------------------ */
/* Conduits                                                                                     */

enum { HVC0, SMC0, HVC1, NCONDUITS };
static const char conduit_names[NCONDUITS][8] = {"hvc#0", "smc#0", "hvc#1"};
/* Why a conduit's checks are skipped: it UNDEFs, or it is not an SMCCC conduit (another
 * SMCCC_VERSION than the platform conduit's, e.g. an SMC that older KVM answers with ~0). */
static const char conduit_undef[NCONDUITS][40] = {
	"hvc #0 UNDEFs: not a conduit here", "smc #0 UNDEFs: not a conduit here",
	"hvc #1 UNDEFs: not a conduit here"};
static const char conduit_other[NCONDUITS][72] = {
	"hvc #0 is not an SMCCC conduit here: another SMCCC_VERSION",
	"smc #0 is not an SMCCC conduit here: another SMCCC_VERSION",
	"hvc #1 is not an SMCCC conduit here: another SMCCC_VERSION"};

/* One call through conduit `c`; an UNDEF is caught and noted in r->undef. */
static struct rt_smccc_res call(struct cpu_result *r, unsigned c, u64 fid, u64 a1, u64 a2, u64 a3)
{
	struct rt_smccc_res res;
	rt_undef_arm();
	if (c == HVC0)
		res = rt_hvc(fid, a1, a2, a3);
	else if (c == SMC0)
		res = rt_smc(fid, a1, a2, a3);
	else
		res = rt_hvc_imm1(fid, a1, a2, a3);
	if (rt_undef_disarm())
		r->undef = 1;
	return res;
}

/* Conduit `c` on this vCPU: NULL when it can be checked, else why not. Where the platform has
 * SMCCC 1.1, another conduit must answer SMCCC_VERSION as the platform's does. */
static const char *conduit_unusable(struct cpu_result *r, unsigned c)
{
	u64 version = (u32)call(r, c, SMCCC_VERSION, 0, 0, 0).a0;
	int undef = r->undef;
	r->undef = 0;
	if (undef)
		return conduit_undef[c];
	if (smccc_1_1 && version != smccc_version)
		return conduit_other[c];
	return NULL;
}

/* x1..x3 after an unknown call: 0 if each is zero or what was passed, else the first other. */
static u64 leaked(struct rt_smccc_res res)
{
	if (res.a1 && res.a1 != GARBAGE1)
		return res.a1;
	if (res.a2 && res.a2 != GARBAGE2)
		return res.a2;
	if (res.a3 && res.a3 != GARBAGE3)
		return res.a3;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The stolen-time record                                                                       */

static u32 record_u32(u64 ipa, unsigned off) { return *(const volatile u32 *)(uptr)(ipa + off); }
static u64 record_u64(u64 ipa, unsigned off) { return *(const volatile u64 *)(uptr)(ipa + off); }

/* 1 when the record lies outside every memory range the tree gives the guest, or wholly inside
 * a reserved one: the guest's own RAM must not hold it. */
static u64 record_placed_apart(u64 ipa)
{
	u64 end = ipa + RECORD_SIZE;
	for (unsigned i = 0; i < rt_plat.nrsv; i++)
		if (ipa >= rt_plat.rsv[i].base && end <= rt_plat.rsv[i].base + rt_plat.rsv[i].size)
			return 1;
	for (unsigned i = 0; i < rt_plat.nmem; i++)
		if (ipa < rt_plat.mem[i].base + rt_plat.mem[i].size && end > rt_plat.mem[i].base)
			return 0;
	return 1;
}

static int usable_ipa(u64 ipa)
{
	return ipa != U64_MAX && !(ipa & (RECORD_SIZE - 1)) && record_placed_apart(ipa);
}

static void check_record(struct cpu_result *r, const struct gate *g, const char *c, u64 ipa)
{
	struct gate rec = *g;
	if (rec.open && !usable_ipa(ipa)) {
		rec.open = rec.fail = 0;
		rec.why = "PV_TIME_ST gave no usable address";
	}
	GATED(&rec, c, "record.revision == 0", EQ, 0, record_u32(ipa, 0));
	GATED(&rec, c, "record.attributes == 0", EQ, 0, record_u32(ipa, 4));
	u64 pad = 0;
	if (rec.open)
		for (unsigned off = 16; off < RECORD_SIZE && !pad; off += 8)
			pad = record_u64(ipa, off);
	GATED(&rec, c, "record.padding[16..63] == 0", EQ, 0, pad);
}

/* ------------------------------------------------------------------------------------------ */
/* The checks                                                                                   */

/* The gates of a conduit on this vCPU: the conduit itself, SMCCC 1.1, PV time. */
static void conduit_gates(const char *unusable, struct gate *call_g, struct gate *smccc_g,
			  struct gate *pv_g)
{
	*call_g = (struct gate){!unusable, 0, unusable};
	*smccc_g = *call_g;
	*pv_g = *call_g;
	if (unusable)
		return;
	if (!smccc_1_1)
		*smccc_g = (struct gate){0, 0, smccc_why};
	if (!pvtime)
		*pv_g = (struct gate){0, expect_pvtime, pvtime_why};
}

static void check_conduit(struct cpu_result *r, unsigned c)
{
	const char *cn = conduit_names[c];
	struct gate g_call, g_smccc, g_pv;
	conduit_gates(conduit_unusable(r, c), &g_call, &g_smccc, &g_pv);
	struct rt_smccc_res res = {0, 0, 0, 0};

	if (g_call.open)
		res = call(r, c, UNKNOWN_FID, GARBAGE1, GARBAGE2, GARBAGE3);
	GATED(&g_call, cn, "unknown 0xc5000030: x0 == -1", EQ, NOT_SUPPORTED, res.a0);
	GATED(&g_call, cn, "unknown 0xc5000030: x1..x3 zero or preserved", EQ, 0, leaked(res));
	if (g_call.open)
		res = call(r, c, UNKNOWN_SIP_FID, GARBAGE1, GARBAGE2, GARBAGE3);
	GATED(&g_call, cn, "unknown 0x8200abcd: x0 == -1", EQ, NOT_SUPPORTED, res.a0);
	GATED(&g_call, cn, "unknown 0x8200abcd: x1..x3 zero or preserved", EQ, 0, leaked(res));

	GATED(&g_smccc, cn, "SMCCC_VERSION >= 1.1", GE_S32, SMCCC_VERSION_1_1,
	      call(r, c, SMCCC_VERSION, 0, 0, 0).a0);
	GATED(&g_smccc, cn, "SMCCC_VERSION with x0[63:32] set (fid is w0)", EQ, smccc_version,
	      call(r, c, HIGH_BITS | SMCCC_VERSION, 0, 0, 0).a0);
	GATED(&g_smccc, cn, "ARCH_FEATURES(unknown 0xc5000030) == -1", EQ, NOT_SUPPORTED,
	      call(r, c, SMCCC_ARCH_FEATURES, UNKNOWN_FID, 0, 0).a0);
	GATED(&g_smccc, cn, "ARCH_FEATURES(PV_TIME_FEATURES 32-bit alias 0x85000020) == -1",
	      EQ, NOT_SUPPORTED, call(r, c, SMCCC_ARCH_FEATURES, PV_TIME_FEATURES_32, 0, 0).a0);

	GATED(&g_pv, cn, "ARCH_FEATURES(PV_TIME_FEATURES) == 0", EQ, SMCCC_RET_SUCCESS,
	      call(r, c, SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	GATED(&g_pv, cn, "ARCH_FEATURES(PV_TIME_FEATURES | 0xffffffff<<32) == 0 (x1 is u32)", EQ,
	      SMCCC_RET_SUCCESS,
	      call(r, c, SMCCC_ARCH_FEATURES, HIGH_BITS | SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(PV_TIME_FEATURES) == 0", EQ, SMCCC_RET_SUCCESS,
	      call(r, c, SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(PV_TIME_ST) == 0", EQ, SMCCC_RET_SUCCESS,
	      call(r, c, SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(PV_TIME_ST | 0xffffffff<<32) == 0 (x1 is u32)", EQ,
	      SMCCC_RET_SUCCESS,
	      call(r, c, SMCCC_PV_TIME_FEATURES, HIGH_BITS | SMCCC_PV_TIME_ST, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(unknown 0xc5000030) == -1", EQ, NOT_SUPPORTED,
	      call(r, c, SMCCC_PV_TIME_FEATURES, UNKNOWN_FID, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(SMCCC_VERSION) == -1", EQ, NOT_SUPPORTED,
	      call(r, c, SMCCC_PV_TIME_FEATURES, SMCCC_VERSION, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES(PV_TIME_ST 32-bit alias 0x85000021) == -1", EQ,
	      NOT_SUPPORTED, call(r, c, SMCCC_PV_TIME_FEATURES, PV_TIME_ST_32, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_FEATURES 32-bit alias 0x85000020 == -1", EQ, NOT_SUPPORTED,
	      call(r, c, PV_TIME_FEATURES_32, SMCCC_PV_TIME_ST, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_ST 32-bit alias 0x85000021 == -1", EQ, NOT_SUPPORTED,
	      call(r, c, PV_TIME_ST_32, 0, 0, 0).a0);
	GATED(&g_pv, cn, "PV_TIME_LPT 32-bit alias 0x85000022 == -1", EQ, NOT_SUPPORTED,
	      call(r, c, PV_TIME_LPT_32, 0, 0, 0).a0);

	u64 ipa = U64_MAX, again = U64_MAX;
	if (g_pv.open)
		ipa = call(r, c, SMCCC_PV_TIME_ST, 0, 0, 0).a0;
	GATED(&g_pv, cn, "PV_TIME_ST answers an address (not -1)", NE, NOT_SUPPORTED, ipa);
	GATED(&g_pv, cn, "PV_TIME_ST address is 64-byte aligned", EQ, 0, ipa & (RECORD_SIZE - 1));
	GATED(&g_pv, cn, "PV_TIME_ST record lies outside the DT's memory or in /reserved-memory", EQ,
	      1, record_placed_apart(ipa));
	if (g_pv.open)
		again = call(r, c, SMCCC_PV_TIME_ST, 0, 0, 0).a0;
	GATED(&g_pv, cn, "a second PV_TIME_ST answers the same address", EQ, ipa, again);
	GATED(&g_pv, cn, "PV_TIME_ST answers the same address through every conduit", EQ, r->ipa,
	      ipa);
	check_record(r, &g_pv, cn, again);
}

/* SMC with a non-zero immediate: reserved by SMCCC; KVM answers x0 = ~0 (handle_smc). */
static void check_smc_imm(struct cpu_result *r, const char *smc_unusable)
{
	struct gate g = {!smc_unusable, 0, smc_unusable};
	GATED(&g, "smc#1", "SMCCC_VERSION: x0 == ~0 (SMC immediate != 0)", EQ, U64_MAX,
	      rt_smc_imm1(SMCCC_VERSION, 0, 0, 0).a0);
	GATED(&g, "smc#1", "ARCH_FEATURES(PV_TIME_FEATURES): x0 == ~0 (SMC immediate != 0)", EQ,
	      U64_MAX, rt_smc_imm1(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	GATED(&g, "smc#1", "PV_TIME_ST: x0 == ~0 (SMC immediate != 0)", EQ, U64_MAX,
	      rt_smc_imm1(SMCCC_PV_TIME_ST, 0, 0, 0).a0);
}

/* stolen_time never goes backwards across busy loops, WFI and SMCCC calls (8 rounds each). */
static void check_stolen_monotonic(struct cpu_result *r, const struct gate *g, u64 ipa)
{
	u64 bad[3][2] = {{0, 0}, {0, 0}, {0, 0}}; /* the first (before, after) that went back */
	if (g->open) {
		u64 prev = record_u64(ipa, 8), now;
		for (unsigned i = 0; i < 8; i++) {
			for (unsigned k = 0; k < 3; k++) {
				if (k == 0)
					rt_delay_ns(200000);
				else if (k == 1)
					rt_wfi_sleep_ns(200000);
				else
					rt_smccc(SMCCC_VERSION, 0, 0, 0);
				now = record_u64(ipa, 8);
				if (now < prev && !bad[k][0] && !bad[k][1]) {
					bad[k][0] = prev;
					bad[k][1] = now;
				}
				prev = now;
			}
		}
	}
	GATED(g, "steal", "stolen_time never decreases across busy loops", GE, bad[0][0], bad[0][1]);
	GATED(g, "steal", "stolen_time never decreases across WFI", GE, bad[1][0], bad[1][1]);
	GATED(g, "steal", "stolen_time never decreases across SMCCC calls", GE, bad[2][0], bad[2][1]);
}

/* Every vCPU busy for WINDOW_NS of counter time at once: where the counter jumps by more than
 * GAP_NS between two close reads, the vCPU was kept from running. */
static void contention_window(struct cpu_result *r, const struct gate *g, u64 ipa)
{
	if (g->open) {
		u64 freq = rt_cntfrq(), gap = rt_ns_to_ticks(GAP_NS, freq);
		u64 len = rt_ns_to_ticks(WINDOW_NS, freq), away = 0, x = r->n | 1;
		u64 t0 = rt_cntvct(), s0 = record_u64(ipa, 8), prev = t0, now;
		while (prev - t0 < len) {
			for (unsigned i = 0; i < 256; i++) /* ~1 us of work between reads */
				x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			__asm__ volatile("" : "+r"(x));
			now = rt_cntvct();
			if (now - prev > gap)
				away += now - prev;
			prev = now;
		}
		u64 s1 = record_u64(ipa, 8);
		now = rt_cntvct();
		if (now - prev > gap)
			away += now - prev;
		r->window_ns = rt_ticks_to_ns(now - t0, freq);
		r->away_ns = rt_ticks_to_ns(away, freq);
		r->steal_ns = s1 - s0;
	}
	GATED(g, "steal", "stolen_time grows no faster than time passes", LE,
	      r->window_ns + r->window_ns / 100 + SLACK_NS, r->steal_ns);
	struct gate busy = *g;
	if (busy.open && r->away_ns < r->window_ns / 10)
		busy = (struct gate){0, 0, "no contention"};
	GATED(&busy, "steal", "time kept from running shows up in stolen_time", GE, r->away_ns / 2,
	      r->steal_ns);
}

/* The logical index of the CPU with MPIDR affinity `mpidr` (ncpus: not a cpu node's). */
static unsigned logical_cpu(u64 mpidr)
{
	for (unsigned i = 0; i < ncpus; i++)
		if ((cpu_mpidr[i] & RT_MPIDR_HWID_MASK) == (mpidr & RT_MPIDR_HWID_MASK))
			return i;
	return ncpus;
}

static void run_checks(unsigned cpu, u64 ctx, unsigned found)
{
	struct cpu_result *r = &results[cpu];
	if (cpu == 0)
		not_applicable(r, "psci", "CPU_ON passes the context id in x0");
	else
		check(r, "psci", "CPU_ON passes the context id in x0", EQ, found, ctx);
	check(r, "psci", "MPIDR_EL1 affinity is a cpu node's reg", NE, ncpus, found);

	/* The platform conduit's record, for the cross-conduit and steal checks. */
	r->ipa = pvtime ? rt_smccc(SMCCC_PV_TIME_ST, 0, 0, 0).a0 : U64_MAX;
	for (unsigned c = 0; c < NCONDUITS; c++)
		check_conduit(r, c);
	check_smc_imm(r, conduit_unusable(r, SMC0));

	struct gate g = {pvtime, expect_pvtime, pvtime_why};
	if (g.open && !usable_ipa(r->ipa))
		g = (struct gate){0, 0, "PV_TIME_ST gave no usable address"};
	check_stolen_monotonic(r, &g, r->ipa);

	rt_store_release_u64(&r->ready, 1);
	if (cpu == 0) {
		u64 deadline = rt_cntvct() + rt_ns_to_ticks(REPORT_TIMEOUT_NS, rt_cntfrq());
		for (unsigned i = 1; i < ncpus; i++)
			if (started[i])
				rt_wait_nonzero_u64_until(&results[i].ready, deadline);
		rt_store_release_u64(&go, 1);
	} else {
		rt_wait_nonzero_u64(&go, REPORT_TIMEOUT_NS);
	}
	contention_window(r, &g, r->ipa);
	rt_store_release_u64(&r->done, 1);
}

void secondary_main(u64 ctx)
{
	unsigned found = logical_cpu(rt_read_sysreg(mpidr_el1));
	unsigned cpu = found < ncpus ? found : ctx < ncpus ? (unsigned)ctx : 0;
	if (cpu == 0 || results[cpu].done)
		return; /* nowhere to report: vCPU 0 notices it missing */
	run_checks(cpu, ctx, found);
	/* returning powers this vCPU off (PSCI CPU_OFF) */
}

/* ------------------------------------------------------------------------------------------ */
/* Probe and report (vCPU 0)                                                                    */

/* SMCCC 1.1 and PV time, discovered as Linux does (psci_init_smccc, has_pv_steal_clock). */
static void probe(void)
{
	psci_version = rt_psci_version();
	smccc_why = pvtime_why = NULL;
	if (psci_version == 0xffffffffu || psci_version >> 16 < 1) {
		smccc_why = "SMCCC 1.1 not discoverable: PSCI_VERSION < 1.0";
	} else if (rt_psci_features(SMCCC_VERSION) == PSCI_RET_NOT_SUPPORTED) {
		smccc_why = "SMCCC 1.1 not offered: PSCI_FEATURES(SMCCC_VERSION) = -1";
	} else {
		smccc_version = (u32)rt_smccc(SMCCC_VERSION, 0, 0, 0).a0;
		if ((s32)smccc_version < (s32)SMCCC_VERSION_1_1)
			smccc_why = "SMCCC 1.1 not offered: SMCCC_VERSION < 1.1";
	}
	smccc_1_1 = smccc_why == NULL;
	if (!smccc_1_1)
		pvtime_why = "PV time not offered: no SMCCC 1.1";
	else if (rt_smccc(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0)
		pvtime_why = "PV time not offered: ARCH_FEATURES(PV_TIME_FEATURES) != 0";
	else if (rt_smccc(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0)
		pvtime_why = "PV time not offered: PV_TIME_FEATURES(PV_TIME_ST) != 0";
	pvtime = pvtime_why == NULL;
	expect_pvtime = rt_bootarg("expect-pvtime");
}

static void print_platform(void)
{
	const struct rt_platform *p = &rt_plat;
	if (p->dtb)
		rt_printf("conformance: device tree at 0x%lx (%s); ", p->dtb, rt_dtb_source_name());
	else
		rt_printf("conformance: no device tree (QEMU virt defaults); ");
	rt_printf("PSCI %u.%u over %s; ", psci_version >> 16, psci_version & 0xffff,
		  p->psci_smc ? "smc" : "hvc");
	if (p->gic == RT_GIC_V2)
		rt_printf("GICv2 at 0x%lx/0x%lx", p->gicd, p->gicc);
	else if (p->gic == RT_GIC_V3)
		rt_printf("GICv3 at 0x%lx/0x%lx", p->gicd, p->gicr[0].base);
	else
		rt_printf("no GIC (line-level timer interrupt)");
	rt_printf("; timer PPI %u; console %s at 0x%lx\n", p->vtimer_intid,
		  p->uart == RT_UART_PL011 ? "PL011" : "16550", p->uart_base);
	for (unsigned i = 0; i < p->nmem; i++)
		rt_printf("conformance: memory 0x%lx-0x%lx\n", p->mem[i].base,
			  p->mem[i].base + p->mem[i].size - 1);
	for (unsigned i = 0; i < p->nrsv; i++)
		rt_printf("conformance: reserved 0x%lx-0x%lx\n", p->rsv[i].base,
			  p->rsv[i].base + p->rsv[i].size - 1);
	if (smccc_1_1)
		rt_printf("conformance: SMCCC 0x%lx; %s%s\n", smccc_version,
			  pvtime ? "PV time offered" : pvtime_why,
			  expect_pvtime ? " (expect-pvtime)" : "");
	else
		rt_printf("conformance: %s%s\n", smccc_why, expect_pvtime ? " (expect-pvtime)" : "");
}

/* By cmp: a char table, not a switch on string pointers (which the compiler would turn into a
 * table of absolute addresses). */
static const char cmp_prefix[5][4] = {"", "!= ", ">= ", "<= ", ">= "};

static void print_value(enum cmp cmp, u64 v)
{
	rt_printf_unlocked("%s", cmp_prefix[cmp]);
	if (v == U64_MAX)
		rt_printf_unlocked("-1 (0x%lx)", v);
	else
		rt_printf_unlocked("0x%lx", v);
}

static u64 tests, failures, skipped;

/* One line for check `k` of `list` (per-vCPU lists: k of every reporting vCPU). */
static void report_item(const struct cpu_result *list, unsigned nlists, unsigned k)
{
	const struct item *first = &list[0].items[k];
	unsigned pass = 0, fail = 0;
	const char *why = NULL;
	for (unsigned c = 0; c < nlists; c++) {
		if (!list[c].done || k >= list[c].n)
			continue;
		const struct item *it = &list[c].items[k];
		pass += it->status == ST_PASS;
		fail += it->status == ST_FAIL;
		if (it->status == ST_SKIP && !why)
			why = it->why;
	}
	tests++;
	if (fail) {
		failures++;
		rt_printf_unlocked("FAIL: %s: %s (", first->group, first->name);
		unsigned shown = 0;
		for (unsigned c = 0; c < nlists; c++) {
			const struct item *it = &list[c].items[k];
			if (!list[c].done || k >= list[c].n || it->status != ST_FAIL)
				continue;
			if (shown++ == MAX_DETAILS) {
				rt_printf_unlocked("; ... %u vCPUs in all", fail);
				break;
			}
			rt_printf_unlocked("%scpu%u: ", shown > 1 ? "; " : "", c);
			if (it->why) {
				rt_printf_unlocked("%s%s", it->expected_pv ? "expect-pvtime, but " : "",
						   it->why);
				continue;
			}
			rt_printf_unlocked("expected ");
			print_value((enum cmp)it->cmp, it->expected);
			rt_printf_unlocked(" got ");
			print_value(EQ, it->got);
		}
		rt_printf_unlocked(")\n");
	} else if (pass) {
		rt_printf_unlocked("PASS: %s: %s\n", first->group, first->name);
	} else {
		skipped++;
		rt_printf_unlocked("SKIP: %s: %s (%s)\n", first->group, first->name,
				   why ? why : "not applicable: no other vCPU");
	}
}

int main(void)
{
	struct cpu_result *r = &global;
	u64 freq = rt_cntfrq();
	ncpus = rt_plat.ncpus;
	for (unsigned i = 0; i < ncpus; i++)
		cpu_mpidr[i] = rt_plat.cpu_mpidr[i];
	if (!ncpus) { /* no cpu nodes: count with AFFINITY_INFO, MPIDRs packed as KVM does */
		ncpus = rt_probe_cpus();
		for (unsigned i = 0; i < ncpus; i++)
			cpu_mpidr[i] = rt_cpu_mpidr(i);
	}
	rt_printf("conformance: %u vCPUs, CNTFRQ_EL0 = %lu Hz\n", ncpus, freq);
	probe();
	print_platform();

	check(r, "psci", "PSCI_VERSION >= 0.2", GE, 0x2, psci_version == 0xffffffffu ? 0 : psci_version);
	unsigned me = logical_cpu(rt_read_sysreg(mpidr_el1));
	started[0] = 1;
	u64 refused = 0;
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		rt_dmb(); /* everything above is visible to the vCPU started */
		s64 rc = rt_psci_cpu_on(cpu_mpidr[cpu], rt_secondary_entry, cpu);
		if (rc != PSCI_RET_SUCCESS) {
			rt_printf("INFO: psci: CPU_ON(cpu%u, MPIDR 0x%lx) = %ld\n", cpu, cpu_mpidr[cpu], rc);
			refused++;
		}
		started[cpu] = rc == PSCI_RET_SUCCESS;
	}
	if (ncpus > 1)
		check(r, "psci", "CPU_ON starts every other vCPU (refusals)", EQ, 0, refused);
	else
		not_applicable(r, "psci", "CPU_ON starts every other vCPU (refusals)");

	run_checks(0, 0, me);

	u64 deadline = rt_cntvct() + rt_ns_to_ticks(REPORT_TIMEOUT_NS, freq);
	u64 missing = 0;
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		if (started[cpu] && !rt_wait_nonzero_u64_until(&results[cpu].done, deadline)) {
			rt_printf("INFO: cpu%u did not report within 10 s\n", cpu);
			missing++;
		}
	}
	if (ncpus > 1)
		check(r, "psci", "every started vCPU reports within 10 s (missing)", EQ, 0, missing);
	else
		not_applicable(r, "psci", "every started vCPU reports within 10 s (missing)");

	u64 dup = 0;
	for (unsigned a = 0; a < ncpus; a++)
		for (unsigned b = a + 1; b < ncpus; b++)
			dup += results[a].done && results[b].done && results[a].ipa != U64_MAX &&
			       results[a].ipa == results[b].ipa;
	struct gate pv = {pvtime, expect_pvtime, pvtime_why};
	GATED(&pv, "pv-time", "every vCPU has its own record (shared addresses)", EQ, 0, dup);

	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		if (results[cpu].done && results[cpu].window_ns)
			rt_printf("INFO: steal: cpu%u: window %lu ns, kept away %lu ns, stolen_time "
				  "+%lu ns\n",
				  cpu, results[cpu].window_ns, results[cpu].away_ns,
				  results[cpu].steal_ns);

	global.done = 1;
	for (unsigned k = 0; k < global.n; k++)
		report_item(&global, 1, k);
	for (unsigned k = 0; k < results[0].n; k++)
		report_item(results, ncpus, k);
	u64 overflow = global.overflow;
	for (unsigned cpu = 0; cpu < ncpus; cpu++)
		overflow += results[cpu].overflow;
	if (overflow) {
		rt_printf_unlocked("FAIL: conformance: %lu checks past MAX_ITEMS were not recorded\n",
				   overflow);
		tests++;
		failures++;
	}
	rt_printf_unlocked("SUMMARY: %lu tests, %lu unexpected failures, %lu skipped\n", tests,
			   failures, skipped);
	return missing ? 2 : failures ? 1 : 0;
}
