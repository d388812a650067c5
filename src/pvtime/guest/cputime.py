"""Tick-based CPU time accounting (kernel/sched/cputime.c) and /proc/stat cpu lines (fs/proc/stat.c)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from pvtime.abi.linux import NSEC_PER_SEC, ULONG_MAX, USER_HZ
from pvtime.abi.widths import U64


@dataclass
class CpuStat:
    """kernel_cpustat for one CPU, in ns, each a u64 that wraps as in the kernel."""

    user: int = 0
    nice: int = 0
    system: int = 0
    idle: int = 0
    iowait: int = 0
    irq: int = 0
    softirq: int = 0
    steal: int = 0
    guest: int = 0
    guest_nice: int = 0

    def values(self) -> list[int]:
        """The ten fields in /proc/stat order."""
        return [getattr(self, f.name) for f in fields(self)]


def nsec_to_clock_t(ns: int) -> int:
    """USER_HZ units, truncating, as the kernel prints /proc/stat."""
    return ns // (NSEC_PER_SEC // USER_HZ)


class TickAccounting:
    """account_process_tick and account_idle_ticks with steal_account_process_time, per CPU."""

    def __init__(self, hz: int = 250) -> None:
        self.tick_nsec = (NSEC_PER_SEC + hz // 2) // hz  # TICK_NSEC
        self.cpustat: dict[int, CpuStat] = {}
        self.prev_steal_time: dict[int, int] = {}  # rq->prev_steal_time

    def stat(self, index: int) -> CpuStat:
        """This CPU's counters (created on first use)."""
        st = self.cpustat.get(index)
        if st is None:
            st = self.cpustat[index] = CpuStat()
        return st

    def steal_account_process_time(self, index: int, clock: int, maxtime: int = ULONG_MAX) -> int:
        """Account the steal seen since the last call, at most `maxtime`; return it."""
        prev = self.prev_steal_time.get(index, 0)
        steal = (clock - prev) & U64
        if steal > maxtime:
            steal = maxtime
        st = self.stat(index)
        st.steal = (st.steal + steal) & U64
        self.prev_steal_time[index] = (prev + steal) & U64
        return steal

    def account_process_tick(self, index: int, clock: int, *, user: bool, idle: bool) -> None:
        """One tick: steal first; a tick fully covered by steal is consumed; the rest by context."""
        cputime = self.tick_nsec
        steal = self.steal_account_process_time(index, clock)
        if steal >= cputime:
            return
        cputime -= steal
        st = self.stat(index)
        if user:
            st.user = (st.user + cputime) & U64
        elif idle:
            st.idle = (st.idle + cputime) & U64
        else:
            st.system = (st.system + cputime) & U64

    def account_idle_ticks(self, index: int, clock: int, ticks: int) -> None:
        """`ticks` jiffies spent idle with the tick stopped, accounted at once when the CPU leaves
        idle (tick_nohz_account_idle_time): all the steal seen since the last accounting first,
        the rest of the ticks' time to idle."""
        cputime = ticks * self.tick_nsec
        steal = self.steal_account_process_time(index, clock)
        if steal >= cputime:
            return
        st = self.stat(index)
        st.idle = (st.idle + cputime - steal) & U64

    def reset_prev_steal(self, index: int) -> None:
        """Forget the steal baseline (pvtime's fix for PV_TIME_ST zeroing on re-online)."""
        self.prev_steal_time[index] = 0

    def proc_stat(self, online: set[int] | None = None) -> str:
        """The cpu lines of /proc/stat: the sum over all CPUs, then one line per online CPU."""
        cpus = sorted(self.cpustat)
        total = [sum(col) & U64 for col in zip(*(self.cpustat[c].values() for c in cpus))] or [0] * 10
        lines = ["cpu  " + " ".join(str(nsec_to_clock_t(v)) for v in total)]
        for c in cpus:
            if online is not None and c not in online:
                continue
            lines.append(f"cpu{c} " + " ".join(str(nsec_to_clock_t(v)) for v in self.cpustat[c].values()))
        return "\n".join(lines) + "\n"
