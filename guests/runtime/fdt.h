/*
 * A flattened device tree reader (Devicetree Specification v0.4, chapter 5): the header's
 * checks, the structure block as a stream of tokens, the memory reservation block.
 *
 * The blob is read in place. Nothing is trusted: every offset and length is checked against
 * the header, and a blob that fails a check ends the walk (rt_fdt_next returns -1).
 */
#ifndef RT_FDT_H
#define RT_FDT_H

#include "rt.h"

struct rt_fdt {
	const u8 *blob;
	u32 size;                     /* totalsize */
	u32 off_struct, size_struct;  /* structure block */
	u32 off_strings, size_strings;
	u32 off_rsvmap;
};

/* 1 when `addr` holds a blob this reader accepts (8-byte aligned, magic, version 16/17,
 * blocks inside totalsize); `f` then describes it. */
int rt_fdt_open(struct rt_fdt *f, u64 addr);

enum rt_fdt_kind { RT_FDT_BEGIN_NODE = 1, RT_FDT_END_NODE = 2, RT_FDT_PROP = 3 };

struct rt_fdt_token {
	u32 kind;          /* enum rt_fdt_kind */
	unsigned depth;    /* of the node begun or ended, or holding the property (root: 1) */
	const char *name;  /* node name (unit address included) or property name, NUL-terminated */
	const u8 *value;   /* property value (4-byte aligned), `len` bytes */
	u32 len;
};

struct rt_fdt_iter {
	const struct rt_fdt *f;
	u32 off;       /* next token, from the structure block's start */
	unsigned depth;
};

void rt_fdt_iter_init(struct rt_fdt_iter *it, const struct rt_fdt *f);
/* The next token: 1 and *t, 0 at FDT_END (with every node closed), -1 for a malformed blob. */
int rt_fdt_next(struct rt_fdt_iter *it, struct rt_fdt_token *t);

/* The memory reservation block's entries (at most `max`); returns how many were stored. */
unsigned rt_fdt_memreserve(const struct rt_fdt *f, struct rt_range *out, unsigned max);

/* A big-endian 32-bit cell at a 4-byte aligned address. */
static inline u32 rt_be32(const u8 *p) { return __builtin_bswap32(*(const u32 *)p); }
/* A value of `ncells` (1 or 2) big-endian cells. */
static inline u64 rt_fdt_cells(const u8 *p, u32 ncells)
{
	return ncells == 2 ? (u64)rt_be32(p) << 32 | rt_be32(p + 4) : rt_be32(p);
}
/* Does the string-list value (`len` bytes of NUL-terminated strings) contain `s`? */
int rt_fdt_strlist_has(const u8 *value, u32 len, const char *s);
/* Is the value exactly the string `s` (with its NUL)? */
int rt_fdt_str_is(const u8 *value, u32 len, const char *s);
/* Do NUL-terminated `a` and `b` match? */
int rt_streq(const char *a, const char *b);

#endif
