/* pvtime guest runtime: console, semihosting, PSCI, timer, exceptions, locks (see rt.h). */
#include "gic.h"
#include "rt.h"

/* Per-vCPU stacks; not cleared (link.ld puts .stacks outside .bss). */
__attribute__((section(".stacks"), aligned(16))) u8 rt_stacks[RT_MAX_CPUS][RT_STACK_SIZE];

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                       */

void *memset(void *d, int c, usize n)
{
	volatile u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, usize n)
{
	volatile u8 *p = d;
	const volatile u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

int memcmp(const void *a, const void *b, usize n)
{
	const u8 *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p < *q ? -1 : 1;
	return 0;
}

usize strlen(const char *s)
{
	usize n = 0;
	while (s[n])
		n++;
	return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Semihosting and power                                                                        */

/* Per vCPU: 1 while an instruction that may UNDEF runs, 2 once the vector caught one. */
static volatile u64 undef_state[RT_MAX_CPUS];
#define UNDEF_ARMED 1
#define UNDEF_CAUGHT 2

void rt_undef_arm(void) { undef_state[rt_cpu_id()] = UNDEF_ARMED; }

int rt_undef_disarm(void)
{
	unsigned cpu = rt_cpu_id();
	u64 state = undef_state[cpu];
	undef_state[cpu] = 0;
	return state == UNDEF_CAUGHT;
}

void rt_exit(int status)
{
	/* AArch64 semihosting: x1 points to {reason, subcode}. */
	volatile u64 block[2];
	block[0] = SEMIHOST_ADP_STOPPED_APPLICATION_EXIT;
	block[1] = (u64)(s64)status;
	rt_undef_arm(); /* HLT UNDEFs where no debugger or hypervisor serves semihosting */
	rt_semihost(SEMIHOST_SYS_EXIT_EXTENDED, (u64)(uptr)block);
	rt_undef_disarm();
	/* No semihosting: say the status, and power off. */
	rt_printf_unlocked("EXIT: %d\n", status);
	rt_psci_system_off();
}

void rt_psci_cpu_off(void)
{
	rt_smccc(PSCI_CPU_OFF, 0, 0, 0);
	for (;;)
		__asm__ volatile("msr daifset, #0xf\n\twfi" ::: "memory");
}

void rt_psci_system_off(void)
{
	rt_smccc(PSCI_SYSTEM_OFF, 0, 0, 0);
	for (;;)
		__asm__ volatile("msr daifset, #0xf\n\twfi" ::: "memory");
}

void rt_psci_system_reset(void)
{
	rt_smccc(PSCI_SYSTEM_RESET, 0, 0, 0);
	for (;;)
		__asm__ volatile("msr daifset, #0xf\n\twfi" ::: "memory");
}

unsigned rt_probe_cpus(void)
{
	unsigned n = 1;
	while (n < RT_MAX_CPUS) {
		s64 r = rt_psci_affinity_info(rt_cpu_mpidr(n), 0);
		if (r < 0) /* INVALID_PARAMETERS or NOT_PRESENT: no such vCPU */
			break;
		n++;
	}
	return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Console                                                                                      */

static struct rt_lock console_lock;

/* PL011 (Arm DDI 0183): UARTDR, and UARTFR.TXFF while the transmit FIFO is full. */
#define PL011_DR 0x00
#define PL011_FR 0x18
#define PL011_FR_TXFF (1u << 5)
/* 16550: THR (register 0) and LSR.THRE (register 5), registers 1 << reg-shift bytes apart. */
#define NS16550_THR 0
#define NS16550_LSR 5
#define NS16550_LSR_THRE (1u << 5)

static u32 ns16550_read(unsigned reg)
{
	uptr addr = (uptr)rt_plat.uart_base + (reg << rt_plat.uart_shift);
	return rt_plat.uart_width == 4 ? *(volatile u32 *)addr : *(volatile u8 *)addr;
}

static void ns16550_write(unsigned reg, u8 v)
{
	uptr addr = (uptr)rt_plat.uart_base + (reg << rt_plat.uart_shift);
	if (rt_plat.uart_width == 4)
		*(volatile u32 *)addr = v;
	else
		*(volatile u8 *)addr = v;
}

void rt_putc(char c)
{
	if (rt_plat.uart == RT_UART_NS16550) {
		while (!(ns16550_read(NS16550_LSR) & NS16550_LSR_THRE))
			;
		ns16550_write(NS16550_THR, (u8)c);
		return;
	}
	volatile u32 *uart = (volatile u32 *)(uptr)rt_plat.uart_base;
	while (uart[PL011_FR / 4] & PL011_FR_TXFF)
		;
	uart[PL011_DR / 4] = (u8)c;
}

void rt_puts(const char *s)
{
	while (*s)
		rt_putc(*s++);
}

static int put_num(u64 v, unsigned base, int upper, int neg, int width, int zero, int left)
{
	char buf[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0, len, out = 0;
	do {
		buf[n++] = digits[v % base];
		v /= base;
	} while (v);
	len = n + (neg ? 1 : 0);
	if (!left && !zero)
		for (; width > len; width--, out++)
			rt_putc(' ');
	if (neg) {
		rt_putc('-');
		out++;
	}
	if (!left && zero)
		for (; width > len; width--, out++)
			rt_putc('0');
	while (n) {
		rt_putc(buf[--n]);
		out++;
	}
	if (left)
		for (; width > len; width--, out++)
			rt_putc(' ');
	return out;
}

static int rt_vprintf(const char *fmt, __builtin_va_list ap)
{
	int out = 0;
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			rt_putc(*fmt);
			out++;
			continue;
		}
		fmt++;
		int zero = 0, left = 0, width = 0, lng = 0;
		for (;; fmt++) {
			if (*fmt == '0')
				zero = 1;
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			s64 v = lng ? __builtin_va_arg(ap, s64) : __builtin_va_arg(ap, int);
			u64 mag = v < 0 ? (u64)0 - (u64)v : (u64)v;
			out += put_num(mag, 10, 0, v < 0, width, zero, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			u64 v = lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, unsigned);
			out += put_num(v, *fmt == 'u' ? 10 : 16, *fmt == 'X', 0, width, zero, left);
			break;
		}
		case 'p':
			rt_puts("0x");
			out += 2 + put_num((u64)(uptr)__builtin_va_arg(ap, void *), 16, 0, 0, width, zero,
					   left);
			break;
		case 's': {
			const char *s = __builtin_va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int len = (int)strlen(s);
			if (!left)
				for (; width > len; width--, out++)
					rt_putc(' ');
			rt_puts(s);
			out += len;
			if (left)
				for (; width > len; width--, out++)
					rt_putc(' ');
			break;
		}
		case 'c':
			rt_putc((char)__builtin_va_arg(ap, int));
			out++;
			break;
		case '%':
			rt_putc('%');
			out++;
			break;
		case '\0':
			return out;
		default: /* unknown conversion: print it verbatim */
			rt_putc('%');
			rt_putc(*fmt);
			out += 2;
			break;
		}
	}
	return out;
}

int rt_printf(const char *fmt, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	rt_lock_acquire(&console_lock);
	int n = rt_vprintf(fmt, ap);
	rt_lock_release(&console_lock);
	__builtin_va_end(ap);
	return n;
}

int rt_printf_unlocked(const char *fmt, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	int n = rt_vprintf(fmt, ap);
	__builtin_va_end(ap);
	return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Timer                                                                                        */

#define NSEC_PER_SEC 1000000000ULL

u128 rt_udiv128_64(u128 n, u64 d, u64 *rem)
{
	u64 hi = (u64)(n >> 64), lo = (u64)n;
	u64 q_hi = hi / d, q = 0;
	hi %= d; /* hi < d from here on, so the low quotient fits 64 bits */
	for (int i = 0; i < 64; i++) {
		u64 carry = hi >> 63; /* 2*hi + bit may not fit: then it certainly exceeds d */
		hi = (hi << 1) | (lo >> 63);
		lo <<= 1;
		q <<= 1;
		if (carry || hi >= d) {
			hi -= d; /* modulo 2^64: the true difference is < d */
			q |= 1;
		}
	}
	if (rem)
		*rem = hi;
	return ((u128)q_hi << 64) | q;
}

u64 rt_ticks_to_ns(u64 ticks, u64 freq)
{
	/* freq < 2^32, so (ticks % freq) * 1e9 < 2^62. */
	return ticks / freq * NSEC_PER_SEC + ticks % freq * NSEC_PER_SEC / freq;
}

u64 rt_ns_to_ticks(u64 ns, u64 freq)
{
	return ns / NSEC_PER_SEC * freq + ns % NSEC_PER_SEC * freq / NSEC_PER_SEC;
}

void rt_delay_ns(u64 ns)
{
	u64 end = rt_cntvct() + rt_ns_to_ticks(ns, rt_cntfrq());
	while (rt_cntvct() < end)
		rt_cpu_relax();
}

void rt_wfi_sleep_ns(u64 ns)
{
	u64 daif = rt_read_sysreg(daif);
	rt_irq_disable();
	rt_cntv_set_cval(rt_cntvct() + rt_ns_to_ticks(ns, rt_cntfrq()));
	rt_cntv_set_ctl(RT_CNT_CTL_ENABLE);
	while (!(rt_cntv_ctl() & RT_CNT_CTL_ISTATUS))
		rt_wfi();
	rt_cntv_set_ctl(0);
	rt_write_sysreg(daif, daif);
}

u64 rt_wait_nonzero_u64_until(const volatile u64 *p, u64 deadline)
{
	u64 v;
	while (!(v = rt_load_acquire_u64(p)) && rt_cntvct() < deadline)
		rt_wfi_sleep_ns(50000);
	return v;
}

u64 rt_wait_nonzero_u64(const volatile u64 *p, u64 timeout_ns)
{
	return rt_wait_nonzero_u64_until(p, rt_cntvct() + rt_ns_to_ticks(timeout_ns, rt_cntfrq()));
}

/* ------------------------------------------------------------------------------------------ */
/* Exceptions                                                                                   */

static volatile rt_irq_handler_fn irq_handler;
static volatile rt_sync_handler_fn sync_handler;

void rt_set_irq_handler(rt_irq_handler_fn fn)
{
	irq_handler = fn;
	rt_dmb();
}

void rt_set_sync_handler(rt_sync_handler_fn fn)
{
	sync_handler = fn;
	rt_dmb();
}

/* Saved SP_EL1 of each vCPU's rt_el0_call (start.S). */
u64 rt_el0_saved_sp[RT_MAX_CPUS];
/* Per vCPU: the IAR value + 1 of the GIC interrupt being handled (0: none). */
static volatile u64 irq_active[RT_MAX_CPUS];

/* Names by character arrays, not pointer tables: the image runs wherever it is loaded. */
static const char vec_kind[4][12] = {"synchronous", "IRQ", "FIQ", "SError"};
static const char vec_from[4][20] = {"EL1h", "EL1t", "lower EL (AArch64)", "lower EL (AArch32)"};

/* An interrupt through the GIC: acknowledge, the handler for the virtual timer, end it. */
static int gic_irq(struct rt_frame *f)
{
	unsigned cpu = rt_cpu_id();
	u32 iar = rt_gic_ack();
	u32 intid = rt_gic_intid(iar);
	if (intid >= RT_GIC_SPECIAL_FIRST)
		return 1; /* nothing pending any more */
	if (intid != rt_plat.vtimer_intid || !irq_handler) {
		rt_gic_eoi(iar);
		return 0;
	}
	irq_active[cpu] = (u64)iar + 1;
	irq_handler(f);
	irq_active[cpu] = 0;
	rt_gic_eoi(iar);
	return 1;
}

__attribute__((noreturn)) void rt_el0_resume(u64 value); /* start.S */

void rt_el0_exit(u64 value)
{
	unsigned cpu = rt_cpu_id();
	u64 active = irq_active[cpu];
	if (active) { /* the handler of this interrupt never returns: end it here */
		irq_active[cpu] = 0;
		rt_gic_eoi((u32)(active - 1));
	}
	rt_el0_resume(value);
}

void rt_exception(u64 kind, struct rt_frame *f);
void rt_exception(u64 kind, struct rt_frame *f)
{
	if (kind == RT_VEC_IRQ || kind == RT_VEC_IRQ + 8) {
		if (rt_plat.gic != RT_GIC_NONE) {
			if (gic_irq(f))
				return;
		} else if (irq_handler) {
			irq_handler(f);
			return;
		}
	}
	u64 esr = rt_read_sysreg(esr_el1);
	if (kind == RT_VEC_SYNC && RT_ESR_EC(esr) == 0 && undef_state[rt_cpu_id()] == UNDEF_ARMED) {
		undef_state[rt_cpu_id()] = UNDEF_CAUGHT; /* an UNDEF the caller expected */
		f->elr += 4;
		return;
	}
	if ((kind & 3) == RT_VEC_SYNC && kind < 12 && sync_handler && sync_handler(kind, esr, f))
		return;
	u64 far = rt_read_sysreg(far_el1);
	rt_printf_unlocked("\nFATAL: cpu%u: unexpected %s exception from %s: ESR_EL1=0x%lx "
			   "(EC=0x%x) ELR_EL1=0x%lx FAR_EL1=0x%lx SPSR_EL1=0x%lx\n",
			   rt_cpu_id(), vec_kind[kind & 3], vec_from[(kind >> 2) & 3], esr,
			   (unsigned)(esr >> 26) & 0x3f, f->elr, far, f->spsr);
	rt_printf_unlocked("FATAL: x0=0x%lx x1=0x%lx x2=0x%lx x3=0x%lx sp=0x%lx lr=0x%lx\n", f->x[0],
			   f->x[1], f->x[2], f->x[3], f->sp, f->x[30]);
	rt_exit(RT_EXIT_FATAL);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry from start.S                                                                           */

void rt_platform_init(u64 x0, u64 image_start); /* platform.c */

/* vCPU 0: x0 as the loader left it (the device tree of an Image boot), where the image runs. */
void rt_primary_start(u64 x0, u64 image_start);
void rt_primary_start(u64 x0, u64 image_start)
{
	rt_platform_init(x0, image_start);
	rt_gic_init();
	rt_exit(main());
}

void rt_secondary_start(u64 ctx);
void rt_secondary_start(u64 ctx)
{
	rt_gic_cpu_init();
	secondary_main(ctx);
	rt_psci_cpu_off();
}

__attribute__((weak)) void secondary_main(u64 ctx)
{
	(void)ctx;
	rt_psci_cpu_off();
}

/* ------------------------------------------------------------------------------------------ */
/* Bakery lock: correct with plain loads/stores as long as each is single-copy atomic and they
 * are ordered (DMB SY between them; memory is Device-nGnRnE anyway with the MMU off).         */

void rt_lock_acquire(struct rt_lock *l)
{
	unsigned me = rt_cpu_id();
	u64 max = 0;
	l->choosing[me] = 1;
	rt_dmb();
	for (unsigned j = 0; j < RT_MAX_CPUS; j++) {
		u64 n = l->number[j];
		if (n > max)
			max = n;
	}
	l->number[me] = max + 1;
	rt_dmb();
	l->choosing[me] = 0;
	rt_dmb();
	for (unsigned j = 0; j < RT_MAX_CPUS; j++) {
		if (j == me)
			continue;
		while (l->choosing[j])
			rt_cpu_relax();
		rt_dmb();
		for (;;) {
			u64 nj = l->number[j], ni = l->number[me];
			if (nj == 0 || nj > ni || (nj == ni && j > me))
				break;
			rt_cpu_relax();
		}
	}
	rt_dmb();
}

void rt_lock_release(struct rt_lock *l)
{
	rt_dmb();
	l->number[rt_cpu_id()] = 0;
	rt_dmb();
}
