/*
 * The fast traps: the counter reads and the simple SMCCC calls a vCPU makes most, served in C
 * from parameters the Python side publishes (src/pvtime/cpu/unicorn/fast_traps.py explains the
 * arithmetic and the invariants, and holds the Python twin). Anything else -- another register, a
 * call without a published answer, a value out of 64-bit range, a call that would end the slice --
 * goes to the Python hook in `next_sys` / `next_intr`, which is always right.
 *
 * pvtime_fast_mrs is a UC_HOOK_INSN (MRS) callback, chained after the system-register filter;
 * pvtime_fast_intr a UC_HOOK_INTR callback. Neither needs libc: the state carries the unicorn
 * entry points it calls.
 */
#include <stdint.h>

#define NSEC_PER_SEC 1000000000ULL
#define U32 0xffffffffULL

struct cp_reg {				/* uc_arm64_cp_reg */
	uint32_t crn, crm, op0, op1, op2;
	uint64_t val;
};

typedef uint32_t (*sys_hook)(void *uc, uint32_t reg, const struct cp_reg *cp, void *user);
typedef void (*intr_hook)(void *uc, uint32_t intno, void *user);
typedef int (*reg_access)(void *uc, int regid, void *value);

struct answer {				/* x0..x3 for an SMCCC call (fid, x1 & U32 unless any_x1) */
	uint64_t fid, x1, any_x1;
	uint64_t result[4];
};

#define MAX_ANSWERS 8

struct fast_traps {
	/* set once */
	sys_hook next_sys;		/* the Python MRS hook */
	void *next_sys_user;
	intr_hook next_intr;		/* the Python interrupt hook */
	void *next_intr_user;
	reg_access reg_read;		/* uc_reg_read */
	reg_access reg_write;		/* uc_reg_write */
	uint64_t *used;			/* the block counter's bytes of code executed */
	uint32_t x0_id, x28_id, x29_id, x30_id, pstate_id, hvc_intno;
	/* published: the time cursor as the budget last accounted it */
	uint64_t accounted, time_rem, now_ns, deadline_ns, insns_per_sec;
	/* published: the counters as the hypervisor computes them; counter_on 0 sends reads to Python */
	uint64_t counter_on, counter_hz, voffset, poffset, cntkctl, charge;
	/* published: the calls answered here */
	uint64_t n_answers;
	struct answer answers[MAX_ANSWERS];
	/* counted */
	uint64_t reads, calls;
};

/* The slice's time cursor once the code executed since the last accounting is accounted, as the
 * budget would compute it: 0 when a value leaves 64 bits (Python then does it). */
static int time_now(const struct fast_traps *f, uint64_t *now)
{
	uint64_t used = *f->used, insns, total, t;

	if (used < f->accounted || f->now_ns > f->deadline_ns || !f->insns_per_sec)
		return 0;
	insns = (used - f->accounted) / 4;
	if (!insns) {
		*now = f->now_ns;
		return 1;
	}
	if (__builtin_mul_overflow(insns, NSEC_PER_SEC, &total) || __builtin_add_overflow(total, f->time_rem, &total)
	    || __builtin_add_overflow(f->now_ns, total / f->insns_per_sec, &t))
		return 0;
	*now = t < f->deadline_ns ? t : f->deadline_ns;
	return 1;
}

/* floor(ns * hz / 1e9) without a 128-bit division: 0 when it leaves 64 bits. */
static int host_count(uint64_t ns, uint64_t hz, uint64_t *count)
{
	uint64_t whole, part;

	if (__builtin_mul_overflow(ns / NSEC_PER_SEC, hz, &whole)
	    || __builtin_mul_overflow(ns % NSEC_PER_SEC, hz, &part)
	    || __builtin_add_overflow(whole, part / NSEC_PER_SEC, count))
		return 0;
	return 1;
}

static int is_x(const struct fast_traps *f, uint32_t reg)
{
	return (reg >= f->x0_id && reg <= f->x28_id) || reg == f->x29_id || reg == f->x30_id;
}

__attribute__((visibility("default")))
uint32_t pvtime_fast_mrs(void *uc, uint32_t reg, const struct cp_reg *cp, struct fast_traps *f)
{
	uint64_t offset, enable, now, count, value;
	uint32_t pstate = 0;

	if (!f->counter_on || cp->op0 != 3 || cp->op1 != 3 || cp->crn != 14 || cp->crm != 0)
		goto slow;
	if (cp->op2 == 2) {		/* CNTVCT_EL0; CNTKCTL_EL1.EL0VCTEN */
		offset = f->voffset;
		enable = 2;
	} else if (cp->op2 == 1) {	/* CNTPCT_EL0; CNTKCTL_EL1.EL0PCTEN */
		offset = f->poffset;
		enable = 1;
	} else {
		goto slow;
	}
	if (!(f->cntkctl & enable)) {
		if (f->reg_read(uc, (int)f->pstate_id, &pstate))
			goto slow;
		if (!(pstate & 0xc))
			return 0;	/* EL0 without access: the engine traps it to EL1 */
	}
	*f->used += f->charge;
	if (!time_now(f, &now) || !host_count(now, f->counter_hz, &count)) {
		*f->used -= f->charge;	/* Python charges it itself */
		goto slow;
	}
	value = count - offset;
	if (is_x(f, reg))
		f->reg_write(uc, (int)reg, &value);
	f->reads++;
	return 1;
slow:
	return f->next_sys(uc, reg, cp, f->next_sys_user);
}

__attribute__((visibility("default")))
void pvtime_fast_intr(void *uc, uint32_t intno, struct fast_traps *f)
{
	uint64_t x0, x1, now;
	uint32_t i;

	if (intno != f->hvc_intno || !f->n_answers || f->n_answers > MAX_ANSWERS)
		goto slow;
	if (f->reg_read(uc, (int)f->x0_id, &x0) || f->reg_read(uc, (int)f->x0_id + 1, &x1))
		goto slow;
	for (i = 0; i < f->n_answers; i++) {
		const struct answer *a = &f->answers[i];

		if (a->fid != (x0 & U32) || (!a->any_x1 && a->x1 != (x1 & U32)))
			continue;
		if (!time_now(f, &now) || now >= f->deadline_ns)
			break;		/* the slice ends with this call: Python stops the engine */
		for (int r = 0; r < 4; r++)
			f->reg_write(uc, (int)f->x0_id + r, (void *)&a->result[r]);
		f->calls++;
		return;
	}
slow:
	f->next_intr(uc, intno, f->next_intr_user);
}
