/* A flattened device tree reader (see fdt.h). */
#include "fdt.h"

#define FDT_MAGIC 0xd00dfeedu
#define FDT_HEADER_SIZE 40
#define FDT_MAX_SIZE (4u << 20) /* QEMU's virt blob is 1 MiB; the boot protocol allows 2 MiB */
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9

int rt_fdt_open(struct rt_fdt *f, u64 addr)
{
	if (!addr || addr & 7)
		return 0;
	const u8 *b = (const u8 *)(uptr)addr;
	if (rt_be32(b) != FDT_MAGIC)
		return 0;
	u32 total = rt_be32(b + 4), off_struct = rt_be32(b + 8), off_strings = rt_be32(b + 12);
	u32 off_rsvmap = rt_be32(b + 16), version = rt_be32(b + 20), last_comp = rt_be32(b + 24);
	u32 size_strings = rt_be32(b + 32), size_struct = rt_be32(b + 36);
	if (total < FDT_HEADER_SIZE || total > FDT_MAX_SIZE || version < 16 || last_comp > 17)
		return 0;
	if (off_struct & 3 || off_struct < FDT_HEADER_SIZE || off_struct > total ||
	    size_struct > total - off_struct)
		return 0;
	if (off_strings > total || size_strings > total - off_strings)
		return 0;
	if (off_rsvmap & 7 || off_rsvmap < FDT_HEADER_SIZE || off_rsvmap > total - 16)
		return 0;
	f->blob = b;
	f->size = total;
	f->off_struct = off_struct;
	f->size_struct = size_struct;
	f->off_strings = off_strings;
	f->size_strings = size_strings;
	f->off_rsvmap = off_rsvmap;
	return 1;
}

void rt_fdt_iter_init(struct rt_fdt_iter *it, const struct rt_fdt *f)
{
	it->f = f;
	it->off = 0;
	it->depth = 0;
}

/* The length of the NUL-terminated string at s, or -1 if no NUL comes within `max` bytes. */
static s64 bounded_strlen(const char *s, u32 max)
{
	for (u32 n = 0; n < max; n++)
		if (!s[n])
			return n;
	return -1;
}

int rt_fdt_next(struct rt_fdt_iter *it, struct rt_fdt_token *t)
{
	const struct rt_fdt *f = it->f;
	const u8 *base = f->blob + f->off_struct;
	u32 end = f->size_struct;
	for (;;) {
		if (it->off > end - 4 || end < 4)
			return -1;
		u32 token = rt_be32(base + it->off);
		it->off += 4;
		switch (token) {
		case FDT_NOP:
			continue;
		case FDT_BEGIN_NODE: {
			const char *name = (const char *)(base + it->off);
			s64 len = bounded_strlen(name, end - it->off);
			if (len < 0)
				return -1;
			it->off += ((u32)len + 4) & ~3u;
			t->kind = RT_FDT_BEGIN_NODE;
			t->depth = ++it->depth;
			t->name = name;
			t->value = NULL;
			t->len = 0;
			return 1;
		}
		case FDT_END_NODE:
			if (!it->depth)
				return -1;
			t->kind = RT_FDT_END_NODE;
			t->depth = it->depth--;
			t->name = NULL;
			t->value = NULL;
			t->len = 0;
			return 1;
		case FDT_PROP: {
			if (!it->depth || it->off > end - 8)
				return -1;
			u32 len = rt_be32(base + it->off), nameoff = rt_be32(base + it->off + 4);
			it->off += 8;
			if (len > end - it->off || nameoff >= f->size_strings)
				return -1;
			const char *name = (const char *)(f->blob + f->off_strings + nameoff);
			if (bounded_strlen(name, f->size_strings - nameoff) < 0)
				return -1;
			t->kind = RT_FDT_PROP;
			t->depth = it->depth;
			t->name = name;
			t->value = base + it->off;
			t->len = len;
			it->off += (len + 3) & ~3u;
			return 1;
		}
		case FDT_END:
			return it->depth ? -1 : 0;
		default:
			return -1;
		}
	}
}

unsigned rt_fdt_memreserve(const struct rt_fdt *f, struct rt_range *out, unsigned max)
{
	unsigned n = 0;
	for (u32 off = f->off_rsvmap; off <= f->size - 16 && n < max; off += 16) {
		const u8 *e = f->blob + off;
		u64 base = rt_fdt_cells(e, 2), size = rt_fdt_cells(e + 8, 2);
		if (!base && !size)
			break;
		out[n++] = (struct rt_range){base, size};
	}
	return n;
}

int rt_streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

int rt_fdt_str_is(const u8 *value, u32 len, const char *s)
{
	u32 n = (u32)strlen(s);
	return len == n + 1 && !memcmp(value, s, n + 1);
}

int rt_fdt_strlist_has(const u8 *value, u32 len, const char *s)
{
	u32 n = (u32)strlen(s), i = 0;
	while (i < len) {
		u32 j = i;
		while (j < len && value[j])
			j++;
		if (j == len) /* unterminated: not a string list */
			return 0;
		if (j - i == n && !memcmp(value + i, s, n))
			return 1;
		i = j + 1;
	}
	return 0;
}
