/*
 * The system-register filter: a unicorn UC_HOOK_INSN callback (MRS, MSR or SYS) that passes on
 * only the accesses to a set of registers, so that the guest's many other MRS/MSR cost no Python
 * call (src/pvtime/cpu/unicorn/native.py explains why it is native, and holds its Python twin).
 *
 * Each register (op0, op1, CRn, CRm, op2) has a class: 0 outside the set, 1 to 3 in it. An access
 * of class 0 returns 0 at once: the engine executes it itself. Any other is counted in its class's
 * `hits`, then handed to `next` (the hypervisor's hook, whose answer is the hook's: 1 when it
 * emulated the access) or, with no `next`, left to the engine (0). Classes exist because unicorn
 * calls only one hook per kind of instruction: one filter on SYS tells TLBI from IC.
 */
#include <stdint.h>

struct cp_reg {				/* uc_arm64_cp_reg */
	uint32_t crn, crm, op0, op1, op2;
	uint64_t val;
};

typedef uint32_t (*sys_hook)(void *uc, uint32_t reg, const struct cp_reg *cp, void *user);

struct sysreg_filter {
	sys_hook next;			/* called for an access in the set; NULL: only count it */
	void *next_user;		/* its user_data */
	uint64_t hits[4];		/* accesses so far, by class (hits[0] stays 0) */
	uint8_t class[1 << 16];		/* by op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2 */
};

__attribute__((visibility("default")))
uint32_t pvtime_sysreg_filter(void *uc, uint32_t reg, const struct cp_reg *cp, struct sysreg_filter *f)
{
	uint32_t key = (cp->op0 & 3) << 14 | (cp->op1 & 7) << 11 | (cp->crn & 15) << 7 | (cp->crm & 15) << 3
		| (cp->op2 & 7);
	uint8_t class = f->class[key] & 3;

	if (!class)
		return 0;
	f->hits[class]++;
	return f->next ? f->next(uc, reg, cp, f->next_user) : 0;
}
