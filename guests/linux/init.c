/*
 * /init of pvtime's Linux guest initramfs: measure the steal Linux accounts while every CPU is busy.
 *
 * Mounts /proc, reads `pvtime.busy_ms=N` from /proc/cmdline (default 2000; the kernel keeps
 * dotted parameters from init's argv, so /proc/cmdline is the only place to find it), prints the
 * cpu lines of /proc/stat, runs one CPU-bound process pinned to each online CPU until N ms of
 * CLOCK_MONOTONIC have passed, prints the cpu lines again and each CPU's growth, then powers off
 * (reboot(RB_POWER_OFF): PSCI SYSTEM_OFF).
 *
 * Every line goes out in one write(2), so kernel messages cannot split it. The cpu lines are
 * /proc/stat's own (USER_HZ units), so a console parser reads them as it reads /proc/stat.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BUSY_MS 2000L
#define MAX_BUSY_MS 86400000L /* a day */
#define BUSY_PARAM "pvtime.busy_ms="
/* user nice system idle iowait irq softirq steal guest guest_nice */
#define NFIELDS 10
#define F_USER 0
#define F_SYSTEM 2
#define F_IDLE 3
#define F_STEAL 7

struct cpu_times {
	int cpu; /* -1 for the aggregate `cpu` line */
	unsigned long long v[NFIELDS];
	char line[256];
};

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t done = 0;
	while (done < n) {
		ssize_t w = write(STDOUT_FILENO, buf + done, (size_t)(n - done));
		if (w <= 0)
			return;
		done += w;
	}
}

static void power_off(void)
{
	say("pvtime-init: power off");
	sync();
	reboot(RB_POWER_OFF);
	say("pvtime-init: reboot(RB_POWER_OFF) failed: %s", strerror(errno));
	for (;;)
		pause(); /* init must not exit: that panics the kernel */
}

static void fail(const char *what)
{
	say("pvtime-init: error: %s: %s", what, strerror(errno));
	power_off();
}

/* Read a whole small /proc file into buf (NUL-terminated); returns its length. */
static size_t read_file(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	if (!f)
		fail(path);
	size_t n = fread(buf, 1, size - 1, f);
	fclose(f);
	buf[n] = '\0';
	return n;
}

static long busy_ms_from_cmdline(const char *cmdline)
{
	long ms = DEFAULT_BUSY_MS;
	for (const char *p = cmdline; (p = strstr(p, BUSY_PARAM)) != NULL; p++) {
		if (p != cmdline && p[-1] != ' ')
			continue;
		char *end;
		long v = strtol(p + strlen(BUSY_PARAM), &end, 10);
		if (end == p + strlen(BUSY_PARAM) || (*end != ' ' && *end != '\n' && *end != '\0') || v < 0 ||
		    v > MAX_BUSY_MS) {
			say("pvtime-init: ignoring bad %.*s (want a number of ms)", (int)strcspn(p, " \n"), p);
			continue;
		}
		ms = v; /* the last one wins, as for kernel parameters */
	}
	return ms;
}

/* The cpu lines of /proc/stat; returns how many (at most max). */
static int read_cpu_times(struct cpu_times *out, int max)
{
	static char buf[16384];
	read_file("/proc/stat", buf, sizeof(buf));
	int n = 0;
	for (char *line = strtok(buf, "\n"); line && n < max; line = strtok(NULL, "\n")) {
		if (strncmp(line, "cpu", 3) != 0)
			continue;
		struct cpu_times *t = &out[n++];
		memset(t, 0, sizeof(*t));
		snprintf(t->line, sizeof(t->line), "%s", line);
		char *p = line + 3;
		t->cpu = (*p == ' ') ? -1 : (int)strtol(p, &p, 10);
		for (int i = 0; i < NFIELDS; i++)
			t->v[i] = strtoull(p, &p, 10);
	}
	return n;
}

static void print_cpu_times(const char *when, const struct cpu_times *t, int n)
{
	say("pvtime-init: /proc/stat %s (cpu lines; user nice system idle iowait irq softirq steal guest guest_nice)",
	    when);
	for (int i = 0; i < n; i++)
		say("%s", t[i].line);
}

static long long monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void busy_until(long long end_ns)
{
	volatile unsigned long sink = 0;
	while (monotonic_ns() < end_ns)
		for (unsigned long i = 0; i < 1024; i++)
			sink += i; /* a few thousand instructions between clock reads */
}

int main(void)
{
	if (mount("proc", "/proc", "proc", 0, NULL) != 0 && errno != EBUSY)
		fail("mount /proc");

	struct utsname u;
	if (uname(&u) == 0)
		say("pvtime-init: %s %s %s %s", u.sysname, u.release, u.version, u.machine);

	static char cmdline[4096];
	read_file("/proc/cmdline", cmdline, sizeof(cmdline));
	long busy_ms = busy_ms_from_cmdline(cmdline);

	cpu_set_t online;
	if (sched_getaffinity(0, sizeof(online), &online) != 0)
		fail("sched_getaffinity");
	int ncpus = CPU_COUNT(&online);
	say("pvtime-init: %d CPUs online, each busy for %ld ms (" BUSY_PARAM "%ld), USER_HZ %ld", ncpus, busy_ms,
	    busy_ms, sysconf(_SC_CLK_TCK));

	static struct cpu_times before[CPU_SETSIZE + 1], after[CPU_SETSIZE + 1];
	long long window_start = monotonic_ns();
	int nbefore = read_cpu_times(before, CPU_SETSIZE + 1);
	print_cpu_times("before", before, nbefore);

	long long start = monotonic_ns();
	long long end = start + busy_ms * 1000000LL;
	int started = 0;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &online))
			continue;
		pid_t pid = fork();
		if (pid < 0)
			fail("fork");
		if (pid == 0) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(cpu, &one);
			if (sched_setaffinity(0, sizeof(one), &one) != 0) {
				say("pvtime-init: error: cpu%d: sched_setaffinity: %s", cpu, strerror(errno));
				_exit(1);
			}
			busy_until(end);
			_exit(0);
		}
		started++;
	}
	int failed = 0;
	for (int i = 0; i < started; i++) {
		int status;
		if (wait(&status) < 0)
			fail("wait");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	long long elapsed = monotonic_ns() - start;
	say("pvtime-init: %d busy processes done in %lld.%03lld ms (%d failed)", started, elapsed / 1000000,
	    (elapsed / 1000) % 1000, failed);

	int nafter = read_cpu_times(after, CPU_SETSIZE + 1);
	long long window_ns = monotonic_ns() - window_start;
	print_cpu_times("after", after, nafter);
	/* USER_HZ ticks of time that passed between the two reads, per CPU */
	long long passed = window_ns / 1000000LL * sysconf(_SC_CLK_TCK) / 1000;

	/* kernel/sched/cputime.c: account_process_tick accounts a tick as steal alone when the steal
	 * since the last tick reaches a tick, so under heavy steal the fields add up to less than the
	 * time that passed: both shares are printed. */
	say("pvtime-init: growth per CPU over the busy phase, in USER_HZ ticks (steal as a share of the ticks "
	    "accounted, and of the ticks that passed):");
	for (int i = 0; i < nafter; i++) {
		const struct cpu_times *a = &after[i], *b = NULL;
		for (int j = 0; j < nbefore; j++)
			if (before[j].cpu == a->cpu)
				b = &before[j];
		if (!b)
			continue;
		/* signed: a NO_HZ CPU's idle and iowait may step back a little (fs/proc/stat.c: get_idle_time) */
		long long total = 0, d[NFIELDS];
		for (int k = 0; k < NFIELDS; k++) {
			d[k] = (long long)(a->v[k] - b->v[k]);
			if (k != 8 && k != 9) /* guest time is already inside user */
				total += d[k];
		}
		char name[16];
		if (a->cpu < 0)
			snprintf(name, sizeof(name), "all ");
		else
			snprintf(name, sizeof(name), "cpu%d", a->cpu);
		long long pct10 = total > 0 ? (d[F_STEAL] * 1000 + total / 2) / total : 0;
		long long ticks = a->cpu < 0 ? passed * ncpus : passed;
		long long passed10 = ticks > 0 ? (d[F_STEAL] * 1000 + ticks / 2) / ticks : 0;
		say("pvtime-init: %s steal %+lld user %+lld system %+lld idle %+lld of %+lld (steal %lld.%lld%%); "
		    "%lld passed (steal %lld.%lld%%)", name, d[F_STEAL], d[F_USER], d[F_SYSTEM], d[F_IDLE], total,
		    pct10 / 10, pct10 % 10, ticks, passed10 / 10, passed10 % 10);
	}
	power_off();
	return 0;
}
