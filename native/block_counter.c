/*
 * The block counter: a unicorn UC_HOOK_BLOCK callback that counts the bytes of the guest code
 * blocks an engine executes and stops the engine at a budget (src/pvtime/cpu/unicorn/native.py
 * explains why it is native, and holds its Python twin).
 *
 * A block that would start at or past the limit is stopped before it executes and is not
 * counted, so `used` counts exactly the blocks that ran. The shared object needs nothing, not
 * even libc: the state carries the address of unicorn's uc_emu_stop.
 */
#include <stdint.h>

struct block_counter {
	uint64_t used;			/* bytes of code in the blocks executed so far */
	uint64_t limit;			/* no block starts once used reaches this */
	int (*emu_stop)(void *uc);	/* uc_emu_stop */
	uint64_t stopped;		/* set when the limit stopped the engine */
};

__attribute__((visibility("default")))
void pvtime_block_counter(void *uc, uint64_t address, uint32_t size, struct block_counter *c)
{
	(void)address;
	if (c->used >= c->limit) {
		c->stopped = 1;
		c->emu_stop(uc);
		return;
	}
	c->used += size;
}
