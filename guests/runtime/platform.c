/*
 * The platform from the device tree, as kvm-unit-tests finds it: the blob at x0 when booted as
 * an arm64 Image (kvmtool, Firecracker, crosvm and QEMU pass it there), else at the start of
 * QEMU virt's RAM (where QEMU, and pvtime's VMM, put it for a bare-metal ELF), else QEMU virt's
 * defaults. What is read (Linux's bindings under Documentation/devicetree/bindings):
 *   - memory nodes (device_type "memory"), /reserved-memory children, /memreserve/ entries;
 *   - /cpus/cpu@* (device_type "cpu"): reg is the MPIDR affinity;
 *   - the PSCI node (compatible arm,psci*): method "hvc" or "smc";
 *   - the GIC (interrupt-controller): arm,cortex-a15-gic and kin (v2: distributor, CPU
 *     interface) or arm,gic-v3 (distributor, #redistributor-regions regions);
 *   - the timer (arm,armv8-timer): interrupts, the third being the virtual timer's PPI;
 *   - the console: /chosen/stdout-path (a path or an /aliases name, options after ':'), else
 *     the first arm,pl011 or ns16550(a) node; /chosen/bootargs.
 * `reg` is read with the parent's #address-cells/#size-cells (1 or 2; no bus translation).
 */
#include "fdt.h"

struct rt_platform rt_plat;

#define QEMU_VIRT_RAM 0x40000000UL        /* QEMU virt's RAM base (VIRT_MEM) */
#define QEMU_VIRT_RAM_END 0x4000000000UL  /* the top of its RAM window (255 GiB) */
#define QEMU_VIRT_GICD 0x08000000UL
#define QEMU_VIRT_GICC 0x08010000UL
#define QEMU_VIRT_UART 0x09000000UL
#define VTIMER_PPI 27                     /* KVM's default, and QEMU virt's */
#define PPI_BASE 16
#define GIC_PPI 1                         /* the first cell of a 3-cell GIC interrupt */

#define MAX_DEPTH 8
#define MAX_UARTS 4
#define MAX_ALIASES 8
#define FNV_BASIS 0x811c9dc5u
#define FNV_PRIME 0x01000193u

enum role { R_OTHER, R_ROOT, R_CHOSEN, R_CPUS, R_RESERVED, R_ALIASES };

/* What a node said about itself, judged when it ends. */
struct node {
	u32 role;
	u32 addr_cells, size_cells; /* for its children */
	u32 hash;                   /* of its full path */
	const u8 *compat, *dtype, *reg, *ints, *method;
	u32 compat_len, dtype_len, reg_len, ints_len, method_len;
	u32 intc, reg_shift, reg_width, nredist;
};

struct uart {
	u32 hash, kind, shift, width;
	u64 base;
};

struct walk {
	struct node n[MAX_DEPTH + 1];
	struct uart uarts[MAX_UARTS];
	unsigned nuarts;
	const char *stdout_path;
	const char *alias_name[MAX_ALIASES], *alias_value[MAX_ALIASES];
	unsigned naliases;
};

static u32 fnv(u32 h, char c) { return (h ^ (u8)c) * FNV_PRIME; }

static u32 hash_name(u32 h, const char *name)
{
	h = fnv(h, '/');
	while (*name)
		h = fnv(h, *name++);
	return h;
}

/* The hash of the full path `p` (up to ':' or its end), as hash_name builds it node by node. */
static u32 hash_path(const char *p)
{
	u32 h = FNV_BASIS;
	for (; *p && *p != ':'; p++)
		h = fnv(h, *p);
	return h;
}

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static int compat_has(const struct node *n, const char *s)
{
	return n->compat && rt_fdt_strlist_has(n->compat, n->compat_len, s);
}

/* The (base, size) pairs of a reg value with the parent's cells; returns how many were stored. */
static unsigned read_reg(const struct node *n, const struct node *parent, struct rt_range *out,
			 unsigned max)
{
	u32 a = parent->addr_cells, s = parent->size_cells;
	if (!n->reg || a < 1 || a > 2 || s > 2)
		return 0;
	u32 entry = 4 * (a + s);
	unsigned k = 0;
	for (u32 off = 0; off + entry <= n->reg_len && k < max; off += entry, k++)
		out[k] = (struct rt_range){rt_fdt_cells(n->reg + off, a),
					   s ? rt_fdt_cells(n->reg + 4 * a + off, s) : 0};
	return k;
}

static void add_range(struct rt_range *list, u32 *count, unsigned max, struct rt_range r)
{
	if (*count < max)
		list[(*count)++] = r;
}

static void end_node(struct walk *w, unsigned depth)
{
	struct rt_platform *p = &rt_plat;
	const struct node *n = &w->n[depth], *parent = &w->n[depth - 1];
	struct rt_range r[1 + RT_MAX_GICR_REGIONS];

	if (n->dtype && rt_fdt_str_is(n->dtype, n->dtype_len, "memory")) {
		unsigned k = read_reg(n, parent, r, 1 + RT_MAX_GICR_REGIONS);
		for (unsigned i = 0; i < k; i++)
			if (r[i].size)
				add_range(p->mem, &p->nmem, RT_MAX_MEM_RANGES, r[i]);
	}
	if (depth == 3 && parent->role == R_CPUS && n->dtype &&
	    rt_fdt_str_is(n->dtype, n->dtype_len, "cpu") && p->ncpus < RT_MAX_CPUS &&
	    read_reg(n, parent, r, 1))
		p->cpu_mpidr[p->ncpus++] = r[0].base;
	if (depth == 3 && parent->role == R_RESERVED && read_reg(n, parent, r, 1))
		add_range(p->rsv, &p->nrsv, RT_MAX_RSV_RANGES, r[0]);
	if ((compat_has(n, "arm,psci-1.0") || compat_has(n, "arm,psci-0.2") ||
	     compat_has(n, "arm,psci")) && n->method)
		p->psci_smc = rt_fdt_str_is(n->method, n->method_len, "smc");
	if (n->intc && p->gic == RT_GIC_NONE) {
		if (compat_has(n, "arm,gic-v3")) {
			unsigned nr = n->nredist ? n->nredist : 1;
			if (nr > RT_MAX_GICR_REGIONS)
				nr = RT_MAX_GICR_REGIONS;
			unsigned k = read_reg(n, parent, r, 1 + nr);
			if (k >= 2) {
				p->gic = RT_GIC_V3;
				p->gicd = r[0].base;
				p->ngicr = k - 1;
				for (unsigned i = 1; i < k; i++)
					p->gicr[i - 1] = r[i];
			}
		} else if (compat_has(n, "arm,cortex-a15-gic") || compat_has(n, "arm,gic-400") ||
			   compat_has(n, "arm,cortex-a9-gic") || compat_has(n, "arm,cortex-a7-gic")) {
			if (read_reg(n, parent, r, 2) == 2) {
				p->gic = RT_GIC_V2;
				p->gicd = r[0].base;
				p->gicc = r[1].base;
			}
		}
	}
	if ((compat_has(n, "arm,armv8-timer") || compat_has(n, "arm,armv7-timer")) &&
	    n->ints_len >= 36 && rt_be32(n->ints + 24) == GIC_PPI)
		p->vtimer_intid = PPI_BASE + rt_be32(n->ints + 28);
	u32 kind = compat_has(n, "arm,pl011")                                     ? RT_UART_PL011
		   : compat_has(n, "ns16550a") || compat_has(n, "ns16550") ? RT_UART_NS16550
									    : ~0u;
	if (kind != ~0u && w->nuarts < MAX_UARTS && read_reg(n, parent, r, 1))
		w->uarts[w->nuarts++] = (struct uart){n->hash, kind, n->reg_shift, n->reg_width,
						      r[0].base};
}

static void prop(struct walk *w, const struct rt_fdt_token *t)
{
	struct node *n = &w->n[t->depth];
	const char *name = t->name;
	u32 cell = t->len == 4 ? rt_be32(t->value) : 0;
	if (rt_streq(name, "compatible")) {
		n->compat = t->value;
		n->compat_len = t->len;
	} else if (rt_streq(name, "device_type")) {
		n->dtype = t->value;
		n->dtype_len = t->len;
	} else if (rt_streq(name, "reg")) {
		n->reg = t->value;
		n->reg_len = t->len;
	} else if (rt_streq(name, "interrupts")) {
		n->ints = t->value;
		n->ints_len = t->len;
	} else if (rt_streq(name, "method")) {
		n->method = t->value;
		n->method_len = t->len;
	} else if (rt_streq(name, "#address-cells") && t->len == 4) {
		n->addr_cells = cell;
	} else if (rt_streq(name, "#size-cells") && t->len == 4) {
		n->size_cells = cell;
	} else if (rt_streq(name, "interrupt-controller")) {
		n->intc = 1;
	} else if (rt_streq(name, "#redistributor-regions") && t->len == 4) {
		n->nredist = cell;
	} else if (rt_streq(name, "reg-shift") && t->len == 4) {
		n->reg_shift = cell;
	} else if (rt_streq(name, "reg-io-width") && t->len == 4) {
		n->reg_width = cell;
	}
	if (t->len && t->value[t->len - 1] == 0) { /* a string value */
		const char *s = (const char *)t->value;
		if (n->role == R_CHOSEN && rt_streq(name, "bootargs")) {
			usize len = t->len < RT_BOOTARGS_MAX ? t->len : RT_BOOTARGS_MAX;
			memcpy(rt_plat.bootargs, s, len);
			rt_plat.bootargs[len - 1] = 0;
		} else if (n->role == R_CHOSEN && rt_streq(name, "stdout-path")) {
			w->stdout_path = s;
		} else if (n->role == R_ALIASES && w->naliases < MAX_ALIASES) {
			w->alias_name[w->naliases] = name;
			w->alias_value[w->naliases++] = s;
		}
	}
}

static void begin_node(struct walk *w, const struct rt_fdt_token *t)
{
	struct node *n = &w->n[t->depth];
	const struct node *parent = &w->n[t->depth - 1];
	memset(n, 0, sizeof(*n));
	n->addr_cells = 2; /* the specification's defaults */
	n->size_cells = 1;
	n->hash = t->depth == 1 ? FNV_BASIS : hash_name(parent->hash, t->name);
	if (t->depth == 1)
		n->role = R_ROOT;
	else if (t->depth == 2 && rt_streq(t->name, "chosen"))
		n->role = R_CHOSEN;
	else if (t->depth == 2 && rt_streq(t->name, "cpus"))
		n->role = R_CPUS;
	else if (t->depth == 2 && (rt_streq(t->name, "reserved-memory") ||
				   starts_with(t->name, "reserved-memory@")))
		n->role = R_RESERVED;
	else if (t->depth == 2 && rt_streq(t->name, "aliases"))
		n->role = R_ALIASES;
}

/* The console: stdout-path (or the alias it names), else the first PL011, else the first 16550. */
static void choose_uart(struct walk *w)
{
	const struct uart *u = NULL;
	const char *path = w->stdout_path;
	if (path && *path != '/') {
		const char *target = NULL;
		for (unsigned i = 0; i < w->naliases; i++) {
			const char *a = w->alias_name[i], *p = path;
			while (*a && *a == *p) {
				a++;
				p++;
			}
			if (!*a && (!*p || *p == ':'))
				target = w->alias_value[i];
		}
		path = target;
	}
	if (path) {
		u32 h = hash_path(path);
		for (unsigned i = 0; i < w->nuarts && !u; i++)
			if (w->uarts[i].hash == h)
				u = &w->uarts[i];
	}
	for (unsigned i = 0; i < w->nuarts && !u; i++)
		if (w->uarts[i].kind == RT_UART_PL011)
			u = &w->uarts[i];
	if (!u && w->nuarts)
		u = &w->uarts[0];
	if (!u)
		return;
	rt_plat.uart = u->kind;
	rt_plat.uart_base = u->base;
	rt_plat.uart_shift = u->shift;
	rt_plat.uart_width = u->width == 4 ? 4 : 1;
}

/* Read the tree into rt_plat; 0 (and rt_plat untouched but for what was read) if malformed. */
static int read_tree(const struct rt_fdt *f)
{
	static struct walk w; /* .bss: too big for the boot stack's comfort */
	struct rt_fdt_iter it;
	struct rt_fdt_token t;
	int r;
	memset(&w, 0, sizeof(w));
	rt_fdt_iter_init(&it, f);
	while ((r = rt_fdt_next(&it, &t)) > 0) {
		if (t.depth > MAX_DEPTH)
			continue; /* nothing this reader wants lies that deep */
		if (t.kind == RT_FDT_BEGIN_NODE)
			begin_node(&w, &t);
		else if (t.kind == RT_FDT_PROP)
			prop(&w, &t);
		else if (t.depth >= 2)
			end_node(&w, t.depth);
	}
	choose_uart(&w);
	rt_plat.nrsv += rt_fdt_memreserve(f, rt_plat.rsv + rt_plat.nrsv,
					  RT_MAX_RSV_RANGES - rt_plat.nrsv);
	return r == 0;
}

/* The boot CPU first (logical CPU 0, as Linux numbers them), the others in tree order. */
static void boot_cpu_first(void)
{
	u64 me = rt_read_sysreg(mpidr_el1) & RT_MPIDR_HWID_MASK;
	for (unsigned i = 1; i < rt_plat.ncpus; i++) {
		if ((rt_plat.cpu_mpidr[i] & RT_MPIDR_HWID_MASK) != me)
			continue;
		for (; i > 0; i--)
			rt_plat.cpu_mpidr[i] = rt_plat.cpu_mpidr[i - 1];
		rt_plat.cpu_mpidr[0] = me;
		return;
	}
}

static void defaults(void)
{
	struct rt_platform *p = &rt_plat;
	memset(p, 0, sizeof(*p));
	p->vtimer_intid = VTIMER_PPI;
	p->uart = RT_UART_PL011;
	p->uart_base = QEMU_VIRT_UART;
	p->uart_width = 1;
}

void rt_platform_init(u64 x0, u64 image_start);
void rt_platform_init(u64 x0, u64 image_start)
{
	struct rt_fdt f;
	defaults();
	if (rt_fdt_open(&f, x0)) {
		rt_plat.dtb_source = RT_DTB_X0;
	} else if (image_start >= QEMU_VIRT_RAM && image_start < QEMU_VIRT_RAM_END &&
		   rt_fdt_open(&f, QEMU_VIRT_RAM)) {
		/* Only where QEMU virt's RAM is: elsewhere that address may be a device. */
		rt_plat.dtb_source = RT_DTB_RAM_START;
	}
	if (rt_plat.dtb_source != RT_DTB_NONE && read_tree(&f)) {
		rt_plat.dtb = (u64)(uptr)f.blob;
	} else {
		defaults(); /* no tree, or a malformed one: QEMU virt as it boots a bare-metal image */
		rt_plat.gic = RT_GIC_V2;
		rt_plat.gicd = QEMU_VIRT_GICD;
		rt_plat.gicc = QEMU_VIRT_GICC;
	}
	if (!rt_plat.nmem)
		rt_plat.mem[rt_plat.nmem++] = (struct rt_range){QEMU_VIRT_RAM,
								QEMU_VIRT_RAM_END - QEMU_VIRT_RAM};
	boot_cpu_first();
}

int rt_bootarg(const char *word)
{
	const char *s = rt_plat.bootargs;
	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (!*s)
			return 0;
		const char *w = word;
		while (*w && *s == *w) {
			s++;
			w++;
		}
		if (!*w && (!*s || *s == ' ' || *s == '\t' || *s == '\n'))
			return 1;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n')
			s++;
	}
}

const char *rt_dtb_source_name(void)
{
	if (rt_plat.dtb_source == RT_DTB_X0)
		return "x0";
	if (rt_plat.dtb_source == RT_DTB_RAM_START)
		return "start of RAM";
	return "none (QEMU virt defaults)";
}
