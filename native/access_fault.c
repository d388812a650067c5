/*
 * The access-fault hook: a unicorn UC_HOOK_MEM_*_UNMAPPED / UC_HOOK_MEM_WRITE_PROT callback that
 * records the access the engine refused -- its kind, address, size and stored value, the PC and
 * the instruction word the vCPU fetches there -- and lets the engine stop with the fault
 * (src/pvtime/cpu/unicorn/memory.py reads the record once emu_start has returned, and holds the
 * hook's Python twin).
 *
 * The shared object needs nothing, not even libc: the state carries the addresses of unicorn's
 * uc_reg_read and uc_vmem_read.
 */
#include <stddef.h>
#include <stdint.h>

struct access_fault {
	int (*reg_read)(void *uc, int regid, void *value);			/* uc_reg_read */
	int (*vmem_read)(void *uc, uint64_t address, int prot, void *bytes, size_t size);	/* uc_vmem_read */
	uint64_t pc_id;			/* UC_ARM64_REG_PC */
	uint64_t exec_prot;		/* UC_PROT_EXEC: the word is read as the vCPU would fetch it */
	uint64_t count;			/* accesses recorded so far */
	uint64_t type;			/* uc_mem_type of the last one */
	uint64_t address;
	uint64_t size;
	uint64_t value;			/* what a store would have written */
	uint64_t pc;
	uint64_t word;			/* the instruction at pc, when word_ok */
	uint64_t word_ok;		/* 0: nothing can be fetched at pc */
};

__attribute__((visibility("default")))
_Bool pvtime_access_fault(void *uc, int type, uint64_t address, int size, int64_t value,
			  struct access_fault *f)
{
	uint32_t word = 0;

	f->type = (uint64_t)(uint32_t)type;
	f->address = address;
	f->size = (uint64_t)(uint32_t)size;
	f->value = (uint64_t)value;
	f->pc = 0;
	f->reg_read(uc, (int)f->pc_id, &f->pc);
	f->word_ok = f->vmem_read(uc, f->pc, (int)f->exec_prot, &word, 4) == 0;
	f->word = word;
	f->count++;
	return 0;
}
