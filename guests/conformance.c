/*
 * conformance: every guest-visible check of REFERENCE sections 1 (SMCCC calls) and 2 (the
 * stolen-time record), run by every vCPU on itself.
 *
 * vCPU 0 counts the vCPUs with PSCI AFFINITY_INFO, starts each other one with CPU_ON (every
 * vCPU checks that its MPIDR_EL1 packs its index as KVM's reset_mpidr does), runs the
 * checks itself, waits for every vCPU to publish its results, prints one line per failed check
 *     FAIL cpu<N> <conduit> <check>: expected <value> got <value>
 * then a summary line
 *     conformance: <n> vCPUs, <checks> checks, <failed> failed
 * and `conformance: PASS` or `conformance: FAIL`, and exits through semihosting with
 *     0  every check passed on every vCPU
 *     1  at least one check failed
 *     2  a vCPU did not report within 10 s of counter time after vCPU 0 finished its own
 *        checks (waiting vCPU 0 sleeps in WFI between looks)
 *     70 a vCPU took an unexpected exception (runtime)
 */
#include "rt.h"

#define PVTIME_BASE 0x090a0000UL /* machine contract: record of vCPU i at +64*i */
#define RECORD_SIZE 64
#define MAX_FAILS 32
#define REPORT_TIMEOUT_NS (10ULL * 1000000000ULL)

/* Function ids nobody implements (STANDARD_HYP 0x30; a SIP-owned one). */
#define UNKNOWN_FID 0xC5000030u
#define UNKNOWN_SIP_FID 0x8200ABCDu
/* SMC32/HVC32 aliases of the PV time calls (bit 30 clear). */
#define PV_TIME_FEATURES_32 (SMCCC_PV_TIME_FEATURES & ~(1u << 30))
#define PV_TIME_ST_32 (SMCCC_PV_TIME_ST & ~(1u << 30))
#define PV_TIME_LPT_32 (SMCCC_PV_TIME_LPT & ~(1u << 30))
#define HIGH_BITS 0xFFFFFFFF00000000ULL
/* Values that a call must not echo back in x1..x3. */
#define GARBAGE1 0x1111111111111111ULL
#define GARBAGE2 0x2222222222222222ULL
#define GARBAGE3 0x3333333333333333ULL

#define NOT_SUPPORTED SMCCC_RET_NOT_SUPPORTED

enum cmp { EQ, GE };

struct failure {
	const char *conduit;
	const char *check;
	enum cmp cmp;
	u64 expected;
	u64 got;
};

struct cpu_result {
	u64 checks;
	u64 failed;
	struct failure fails[MAX_FAILS];
	volatile u64 done; /* published last */
} __attribute__((aligned(64)));

static struct cpu_result results[RT_MAX_CPUS];
static volatile u64 started[RT_MAX_CPUS]; /* vCPU 0: CPU_ON succeeded for this index */

static void check(struct cpu_result *r, const char *conduit, const char *name, enum cmp cmp,
		  u64 expected, u64 got)
{
	r->checks++;
	if (cmp == EQ ? got == expected : got >= expected)
		return;
	if (r->failed < MAX_FAILS)
		r->fails[r->failed] = (struct failure){conduit, name, cmp, expected, got};
	r->failed++;
}

#define EXPECT(conduit, name, expected, got) check(r, conduit, name, EQ, (expected), (got))
#define EXPECT_GE(conduit, name, min, got) check(r, conduit, name, GE, (min), (got))

struct conduit {
	const char *name;
	rt_conduit_fn call;
};

static const struct conduit conduits[] = {
	{"hvc#0", rt_hvc},
	{"smc#0", rt_smc},
	{"hvc#1", rt_hvc_imm1},
};

static u32 record_u32(u64 ipa, unsigned off) { return *(const volatile u32 *)(uptr)(ipa + off); }
static u64 record_u64(u64 ipa, unsigned off) { return *(const volatile u64 *)(uptr)(ipa + off); }

/* The record after PV_TIME_ST: revision 0, attributes 0, 48 bytes of zero padding. */
static void check_record(struct cpu_result *r, const char *c, u64 ipa)
{
	static const char *const pad_names[6] = {
		"record.padding[16..23] == 0", "record.padding[24..31] == 0",
		"record.padding[32..39] == 0", "record.padding[40..47] == 0",
		"record.padding[48..55] == 0", "record.padding[56..63] == 0",
	};
	EXPECT(c, "record.revision == 0", 0, record_u32(ipa, 0));
	EXPECT(c, "record.attributes == 0", 0, record_u32(ipa, 4));
	for (unsigned i = 0; i < 6; i++)
		EXPECT(c, pad_names[i], 0, record_u64(ipa, 16 + 8 * i));
}

/* Section 1 through one conduit, then PV_TIME_ST through it (section 2 record layout). */
static void check_conduit(struct cpu_result *r, const struct conduit *cd, unsigned cpu)
{
	const char *c = cd->name;
	rt_conduit_fn call = cd->call;
	struct rt_smccc_res res;

	EXPECT(c, "SMCCC_VERSION == 0x10001", SMCCC_VERSION_1_1, call(SMCCC_VERSION, 0, 0, 0).a0);
	EXPECT(c, "SMCCC_VERSION with x0[63:32] set (fid is w0)", SMCCC_VERSION_1_1,
	       call(HIGH_BITS | SMCCC_VERSION, 0, 0, 0).a0);

	EXPECT(c, "ARCH_FEATURES(PV_TIME_FEATURES) == 0", SMCCC_RET_SUCCESS,
	       call(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(PV_TIME_FEATURES | 0xffffffff<<32) == 0 (x1 is u32)",
	       SMCCC_RET_SUCCESS, call(SMCCC_ARCH_FEATURES, HIGH_BITS | SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(PV_TIME_ST) == -1", NOT_SUPPORTED,
	       call(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(SMCCC_VERSION) == -1", NOT_SUPPORTED,
	       call(SMCCC_ARCH_FEATURES, SMCCC_VERSION, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(ARCH_FEATURES) == -1", NOT_SUPPORTED,
	       call(SMCCC_ARCH_FEATURES, SMCCC_ARCH_FEATURES, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(unknown 0xc5000030) == -1", NOT_SUPPORTED,
	       call(SMCCC_ARCH_FEATURES, UNKNOWN_FID, 0, 0).a0);
	EXPECT(c, "ARCH_FEATURES(PV_TIME_FEATURES 32-bit alias 0x85000020) == -1", NOT_SUPPORTED,
	       call(SMCCC_ARCH_FEATURES, PV_TIME_FEATURES_32, 0, 0).a0);

	EXPECT(c, "PV_TIME_FEATURES(PV_TIME_FEATURES) == 0", SMCCC_RET_SUCCESS,
	       call(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	EXPECT(c, "PV_TIME_FEATURES(PV_TIME_ST) == 0", SMCCC_RET_SUCCESS,
	       call(SMCCC_PV_TIME_FEATURES, SMCCC_PV_TIME_ST, 0, 0).a0);
	EXPECT(c, "PV_TIME_FEATURES(PV_TIME_ST | 0xffffffff<<32) == 0 (x1 is u32)",
	       SMCCC_RET_SUCCESS, call(SMCCC_PV_TIME_FEATURES, HIGH_BITS | SMCCC_PV_TIME_ST, 0, 0).a0);
	EXPECT(c, "PV_TIME_FEATURES(unknown 0xc5000030) == -1", NOT_SUPPORTED,
	       call(SMCCC_PV_TIME_FEATURES, UNKNOWN_FID, 0, 0).a0);
	EXPECT(c, "PV_TIME_FEATURES(SMCCC_VERSION) == -1", NOT_SUPPORTED,
	       call(SMCCC_PV_TIME_FEATURES, SMCCC_VERSION, 0, 0).a0);
	EXPECT(c, "PV_TIME_FEATURES(PV_TIME_ST 32-bit alias 0x85000021) == -1", NOT_SUPPORTED,
	       call(SMCCC_PV_TIME_FEATURES, PV_TIME_ST_32, 0, 0).a0);

	EXPECT(c, "PV_TIME_FEATURES 32-bit alias 0x85000020 == -1", NOT_SUPPORTED,
	       call(PV_TIME_FEATURES_32, SMCCC_PV_TIME_ST, 0, 0).a0);
	EXPECT(c, "PV_TIME_ST 32-bit alias 0x85000021 == -1", NOT_SUPPORTED,
	       call(PV_TIME_ST_32, 0, 0, 0).a0);
	EXPECT(c, "PV_TIME_LPT 32-bit alias 0x85000022 == -1", NOT_SUPPORTED,
	       call(PV_TIME_LPT_32, 0, 0, 0).a0);

	res = call(UNKNOWN_FID, GARBAGE1, GARBAGE2, GARBAGE3);
	EXPECT(c, "unknown 0xc5000030: x0 == -1", NOT_SUPPORTED, res.a0);
	EXPECT(c, "unknown 0xc5000030: x1 == 0", 0, res.a1);
	EXPECT(c, "unknown 0xc5000030: x2 == 0", 0, res.a2);
	EXPECT(c, "unknown 0xc5000030: x3 == 0", 0, res.a3);
	res = call(UNKNOWN_SIP_FID, GARBAGE1, GARBAGE2, GARBAGE3);
	EXPECT(c, "unknown 0x8200abcd: x0 == -1", NOT_SUPPORTED, res.a0);
	EXPECT(c, "unknown 0x8200abcd: x1 == 0", 0, res.a1);
	EXPECT(c, "unknown 0x8200abcd: x2 == 0", 0, res.a2);
	EXPECT(c, "unknown 0x8200abcd: x3 == 0", 0, res.a3);

	u64 want = PVTIME_BASE + RECORD_SIZE * (u64)cpu;
	u64 ipa = call(SMCCC_PV_TIME_ST, 0, 0, 0).a0;
	EXPECT(c, "PV_TIME_ST IPA is 64-byte aligned", 0, ipa & (RECORD_SIZE - 1));
	EXPECT(c, "PV_TIME_ST IPA == 0x090a0000 + 64*cpu", want, ipa);
	if (ipa == want)
		check_record(r, c, ipa);
	u64 again = call(SMCCC_PV_TIME_ST, 0, 0, 0).a0;
	EXPECT(c, "second PV_TIME_ST returns the same IPA", ipa, again);
	if (again == want)
		check_record(r, c, again);
}

/* stolen_time never goes backwards across busy loops, WFI and hypercalls. */
static void check_stolen_monotonic(struct cpu_result *r, u64 ipa)
{
	const char *c = "-";
	u64 prev = record_u64(ipa, 8), now;
	for (unsigned i = 0; i < 8; i++) {
		rt_delay_ns(200000);
		now = record_u64(ipa, 8);
		EXPECT_GE(c, "stolen_time non-decreasing across a busy loop", prev, now);
		prev = now;
		rt_wfi_sleep_ns(200000);
		now = record_u64(ipa, 8);
		EXPECT_GE(c, "stolen_time non-decreasing across WFI", prev, now);
		prev = now;
		rt_hvc(SMCCC_VERSION, 0, 0, 0);
		now = record_u64(ipa, 8);
		EXPECT_GE(c, "stolen_time non-decreasing across HVC", prev, now);
		prev = now;
	}
}

static void run_checks(unsigned cpu)
{
	struct cpu_result *r = &results[cpu];
	for (unsigned i = 0; i < ARRAY_SIZE(conduits); i++)
		check_conduit(r, &conduits[i], cpu);

	EXPECT("smc#1", "SMCCC_VERSION x0 == ~0 (SMC imm != 0)", U64_MAX,
	       rt_smc_imm1(SMCCC_VERSION, 0, 0, 0).a0);
	EXPECT("smc#1", "ARCH_FEATURES(PV_TIME_FEATURES) x0 == ~0 (SMC imm != 0)", U64_MAX,
	       rt_smc_imm1(SMCCC_ARCH_FEATURES, SMCCC_PV_TIME_FEATURES, 0, 0).a0);
	EXPECT("smc#1", "PV_TIME_ST x0 == ~0 (SMC imm != 0)", U64_MAX,
	       rt_smc_imm1(SMCCC_PV_TIME_ST, 0, 0, 0).a0);

	u64 ipa = rt_hvc(SMCCC_PV_TIME_ST, 0, 0, 0).a0;
	if (ipa == PVTIME_BASE + RECORD_SIZE * (u64)cpu)
		check_stolen_monotonic(r, ipa);

	rt_store_release_u64(&r->done, 1);
}

/* MPIDR_EL1's affinity fields pack vCPU `index` as KVM's reset_mpidr does (rt_cpu_mpidr). */
static void check_mpidr(struct cpu_result *r, u64 index)
{
	EXPECT("psci", "MPIDR_EL1 affinity == reset_mpidr(vCPU index)", rt_cpu_mpidr((unsigned)index),
	       rt_read_sysreg(mpidr_el1) & RT_MPIDR_HWID_MASK);
}

void secondary_main(u64 ctx)
{
	unsigned cpu = rt_cpu_id();
	check(&results[cpu], "psci", "CPU_ON context id arrives in x0", EQ, cpu, ctx);
	check_mpidr(&results[cpu], ctx);
	run_checks(cpu);
	/* returning powers this vCPU off (PSCI CPU_OFF) */
}

static void print_value(enum cmp cmp, u64 v)
{
	if (cmp == GE)
		rt_printf_unlocked(">= ");
	if (v == U64_MAX)
		rt_printf_unlocked("-1 (0x%lx)", v);
	else
		rt_printf_unlocked("0x%lx", v);
}

int main(void)
{
	struct cpu_result *r0 = &results[0];
	u64 freq = rt_cntfrq();
	unsigned ncpus = rt_probe_cpus();
	rt_printf("conformance: %u vCPUs, CNTFRQ_EL0 = %lu Hz\n", ncpus, freq);

	check_mpidr(r0, 0);
	started[0] = 1;
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		s64 rc = rt_psci_cpu_on(rt_cpu_mpidr(cpu), rt_secondary_entry, cpu);
		check(r0, "psci", "CPU_ON == SUCCESS", EQ, PSCI_RET_SUCCESS, (u64)rc);
		started[cpu] = rc == PSCI_RET_SUCCESS;
	}

	run_checks(0);

	u64 deadline = rt_cntvct() + rt_ns_to_ticks(REPORT_TIMEOUT_NS, freq);
	unsigned missing = 0;
	for (unsigned cpu = 1; cpu < ncpus; cpu++) {
		if (!started[cpu])
			continue;
		if (!rt_wait_nonzero_u64_until(&results[cpu].done, deadline)) {
			rt_printf("FAIL cpu%u did not report within 10 s\n", cpu);
			missing++;
		}
	}

	u64 checks = 0, failed = 0;
	for (unsigned cpu = 0; cpu < ncpus; cpu++) {
		struct cpu_result *r = &results[cpu];
		if (!r->done)
			continue;
		checks += r->checks;
		failed += r->failed;
		for (u64 i = 0; i < r->failed && i < MAX_FAILS; i++) {
			struct failure *f = &r->fails[i];
			rt_printf_unlocked("FAIL cpu%u %s %s: expected ", cpu, f->conduit, f->check);
			print_value(f->cmp, f->expected);
			rt_printf_unlocked(" got ");
			print_value(EQ, f->got);
			rt_printf_unlocked("\n");
		}
		if (r->failed > MAX_FAILS)
			rt_printf("FAIL cpu%u ... and %lu more failed checks\n", cpu,
				  r->failed - MAX_FAILS);
	}
	rt_printf("conformance: %u vCPUs, %lu checks, %lu failed%s\n", ncpus, checks, failed,
		  missing ? " (some vCPUs did not report)" : "");
	int status = missing ? 2 : failed ? 1 : 0;
	rt_printf("conformance: %s\n", status ? "FAIL" : "PASS");
	return status;
}
