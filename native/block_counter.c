/*
 * The block counter: a unicorn UC_HOOK_BLOCK callback that counts the bytes of the guest code
 * blocks an engine executes and stops the engine at a budget (src/pvtime/cpu/unicorn/native.py
 * explains why it is native, and holds its Python twin).
 *
 * A block that would start at or past the limit is stopped before it executes and is not
 * counted, so `used` counts exactly the blocks that ran. The shared object needs nothing, not
 * even libc: the state carries the addresses of unicorn's uc_emu_stop and uc_reg_read.
 *
 * Steps: while an interrupt waits masked, the run loop runs the engine one block at a time and,
 * between two blocks, would only check that the interrupt is still masked and the deadline not
 * reached before allowing the next. Up to `steps_left` times, the hook makes those checks itself
 * at the limit and allows the next block (limit = used + 1, as the run loop's arm would), so the
 * engine stops exactly where the run loop's own checks would have stopped it.
 */
#include <stdint.h>

struct block_counter {
	uint64_t used;			/* bytes of code in the blocks executed so far */
	uint64_t limit;			/* no block starts once used reaches this */
	int (*emu_stop)(void *uc);	/* uc_emu_stop */
	uint64_t stopped;		/* set when the limit stopped the engine */
	uint64_t steps_left;		/* one-block steps still allowed at the limit */
	uint64_t steps;			/* one-block steps allowed so far */
	uint64_t deadline;		/* no step once used reaches this */
	int (*reg_read)(void *uc, int regid, void *value);	/* uc_reg_read */
	uint64_t mask_reg;		/* the register whose mask_bit must stay set for a step */
	uint64_t mask_bit;
};

/* May one more block start at the limit: a step left, the deadline not reached, still masked? */
static int step(void *uc, struct block_counter *c)
{
	uint32_t value = 0;	/* unicorn keeps PSTATE in 32 bits */

	if (!c->steps_left || c->used >= c->deadline)
		return 0;
	if (c->reg_read(uc, (int)c->mask_reg, &value) != 0 || !(value & c->mask_bit))
		return 0;
	c->steps_left--;
	c->steps++;
	c->limit = c->used + 1;
	return 1;
}

__attribute__((visibility("default")))
void pvtime_block_counter(void *uc, uint64_t address, uint32_t size, struct block_counter *c)
{
	(void)address;
	if (c->used >= c->limit && !step(uc, c)) {
		c->stopped = 1;
		c->emu_stop(uc);
		return;
	}
	c->used += size;
}
