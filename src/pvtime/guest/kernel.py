"""A model Linux guest kernel: PV-time probe, CPU hotplug, the tick with steal accounting, the
run-queue clock, and a deterministic workload of busy and idle periods.

The tick is a high-resolution periodic timer on CNTV (as arm64 Linux with HIGH_RES_TIMERS): each
interrupt accounts one tick and moves the deadline to the next period boundary after now, so
ticks missed while the vCPU was not running are not replayed -- their time shows up as steal.

Idle periods run as arm64 Linux runs them (`KernelOptions.nohz_idle`, NO_HZ_IDLE): the idle CPU
stops its tick, its timer is programmed for the workload's wake-up, and the vCPU halts in WFI
until then; on leaving idle the tick restarts and the skipped jiffies are accounted as idle, the
steal seen meanwhile first (`pvtime.guest.tick_sched`). With `nohz_idle=False` (CONFIG_HZ_PERIODIC)
the tick keeps firing through idle, each one accounted as an idle tick, and an idle period ends
at the first tick after its end.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pvtime.abi.sysregs import CNTV_TVAL_EL0, SysReg
from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.guest.cputime import TickAccounting
from pvtime.guest.lpt import ArchCounter, Clocksource, LptClock, el0_mrs, linux_evnti
from pvtime.guest.machine import Compute, CpuProgram, GuestCpu, WaitForInterrupt
from pvtime.guest.paravirt import PvSteal
from pvtime.guest.rq_clock import RqClock
from pvtime.guest.tick_sched import TickSched, hrtimer_forward, program_event

HOLDING_PEN_SPIN_NS = 10_000  # how long a waiting secondary spins between checks


@dataclass(frozen=True)
class Workload:
    """Busy/idle pattern per CPU: busy for U(busy_ns), then idle for U(idle_ns), repeated."""

    busy_ns: tuple[int, int] = (2_000_000, 12_000_000)
    idle_ns: tuple[int, int] = (0, 0)
    seed: int = 0


@dataclass
class KernelOptions:
    """Boot options and named Linux behaviours of the model kernel."""

    hz: int = 250
    # NO_HZ_IDLE (arm64's default): no tick while a CPU is idle. False: CONFIG_HZ_PERIODIC.
    nohz_idle: bool = True
    steal_acc: bool = True  # False: booted with no-steal-acc
    rq_carry_excess: bool = False  # True: update_rq_clock_task before Linux 6.13
    # Linux keeps rq->prev_steal_time when a CPU comes back online, although PV_TIME_ST has just
    # zeroed the record: the next delta wraps. pvtime resets it unless this quirk is set.
    quirk_hotplug_prev_steal: bool = False
    workload: Workload = field(default_factory=Workload)
    # Live Physical Time (guest/lpt.py): use the PV counter when the host offers it. False is an
    # LPT-unaware kernel (the architected counter at the CNTFRQ read at boot).
    lpt: bool = True
    # The RFC's truncating PV -> native timer conversion (fires up to a native tick early or more).
    quirk_lpt_truncating_timer: bool = False
    event_stream: bool = True  # Linux's 10 kHz event stream (CNTKCTL_EL1.EVNTEN/EVNTI)
    # Called at every tick as (cpu index, guest clock ns, lateness ns): how a simulation samples
    # the guest's clock against its own virtual time (a tracepoint, not guest behaviour).
    tick_observer: Callable[[int, int, int], None] | None = None


@dataclass
class TimerStats:
    """The tick timer as the guest saw it: how late each interrupt came after its deadline."""

    fires: int = 0
    early: int = 0  # interrupts taken before the PV deadline (never, unless the RFC quirk is set)
    max_late_ns: int = 0
    total_late_ns: int = 0


class ModelKernel:
    """A `ModelProgram`: one kernel shared by all its vCPUs."""

    def __init__(self, options: KernelOptions | None = None) -> None:
        self.options = options or KernelOptions()
        self.pv = PvSteal()
        self.ticks = TickAccounting(self.options.hz)
        self.rq: dict[int, RqClock] = {}
        self.online: set[int] = set()
        self.pv_probed = False
        self.steal_rq_enabled = False
        self.online_errors: dict[int, int] = {}
        self.tick_count: dict[int, int] = {}
        self._idle: dict[int, bool] = {}
        self.tick_sched: dict[int, TickSched] = {}  # per online CPU, from its first tick
        self._freq = 0
        self.clock: Clocksource | None = None  # chosen by the boot CPU
        self.timer = TimerStats()
        self.messages: list[str] = []
        self.boot_cpu_ready = False  # the boot CPU has run pv_time_init

    # --- clocks ---------------------------------------------------------------------------

    def sched_clock(self, cpu: GuestCpu) -> int:
        """Guest nanoseconds from the virtual counter (through the clocksource: PV with LPT)."""
        assert self.clock is not None
        return self.clock.read(cpu) * NSEC_PER_SEC // self._freq

    def user_read(self, cpu: GuestCpu, reg: SysReg) -> int:
        """A user-space ``mrs`` of CNTVCT/CNTPCT/CNTFRQ (trapped and emulated under LPT)."""
        assert self.clock is not None
        return el0_mrs(cpu, self.clock, reg)

    def _init_clock(self, cpu: GuestCpu) -> None:
        """The boot CPU picks the clocksource: LPT when enabled and offered, else the counter."""
        clock: Clocksource | None = None
        if self.options.lpt:
            clock = LptClock.probe(cpu, self.messages, truncating_timer=self.options.quirk_lpt_truncating_timer)
        self.clock = clock if clock is not None else ArchCounter(cpu)
        self._freq = self.clock.freq

    def steal_clock(self, cpu: GuestCpu, index: int) -> int:
        """paravirt_steal_clock(index)."""
        return self.pv.steal_clock(cpu, index)

    # --- boot and hotplug -------------------------------------------------------------------

    def main(self, cpu: GuestCpu, index: int) -> CpuProgram:
        """Each vCPU: boot (CPU 0 probes PV time), come online, start the tick, run the workload."""
        if index == 0:
            self._init_clock(cpu)
        # Secondaries wait in a holding pen (spin-table style) until the boot CPU has probed PV
        # time, as Linux brings them up only after pv_time_init: otherwise a secondary that runs
        # first would come online without its stolen-time region.
        while index != 0 and not self.boot_cpu_ready:
            yield Compute(HOLDING_PEN_SPIN_NS)
        if index == 0:
            self.pv_probed = self.pv.init(cpu, index)  # brings the boot CPU's region online
            if self.pv.boot_error:
                self.online_errors[index] = self.pv.boot_error
            self.steal_rq_enabled = self.pv_probed and self.options.steal_acc
            self.boot_cpu_ready = True
        assert self.clock is not None
        self.clock.cpu_init(cpu)
        if self.options.event_stream:
            self.clock.set_event_stream(cpu, index, linux_evnti(self._freq))
        self.rq[index] = RqClock(steal_acc=self.steal_rq_enabled, carry_excess=self.options.rq_carry_excess)
        self.rq[index].clock = self.sched_clock(cpu)
        self.rq[index].clock_task = self.rq[index].clock
        if not self.cpu_up(cpu, index, boot=True):
            return  # the bring-up failed: this CPU stays offline (powered off)
        ts = self.tick_sched[index] = TickSched(next_tick=self.clock.read(cpu) + self._period)
        program_event(cpu, self.clock, ts)
        rng = random.Random(self.options.workload.seed * 1_000_003 + index)
        w = self.options.workload
        while True:
            self._idle[index] = False
            yield Compute(rng.randint(*w.busy_ns))
            idle = rng.randint(*w.idle_ns)
            if idle > 0:
                self._idle[index] = True
                if self.options.nohz_idle:
                    yield from self._do_idle(cpu, index, idle)
                    continue
                until = self.sched_clock(cpu) + idle
                while self.sched_clock(cpu) < until:
                    yield WaitForInterrupt()

    @property
    def _period(self) -> int:
        """TICK_NSEC in clocksource counts."""
        return self._freq // self.options.hz

    def _do_idle(self, cpu: GuestCpu, index: int, idle_ns: int) -> CpuProgram:
        """The idle task until the workload's wake-up timer fires, with the tick stopped (do_idle:
        tick_nohz_idle_enter, tick_nohz_idle_stop_tick, WFI until need_resched, tick_nohz_idle_exit)."""
        assert self.clock is not None
        ts = self.tick_sched[index]
        ts.wakeup = self.clock.read(cpu) + -(-idle_ns * self._freq // NSEC_PER_SEC)
        ts.stopped = True  # tick_nohz_stop_tick: the tick's expiry is kept to restart from
        program_event(cpu, self.clock, ts)
        while ts.wakeup is not None:  # the wake-up interrupt disarms it (the task is woken)
            yield WaitForInterrupt()
        self._tick_nohz_idle_exit(cpu, index)

    def _tick_nohz_idle_exit(self, cpu: GuestCpu, index: int) -> None:
        """Restart the tick on its grid (tick_nohz_restart_sched_tick) and account the jiffies
        that passed while it was stopped as idle (tick_nohz_account_idle_time)."""
        assert self.clock is not None
        ts = self.tick_sched[index]
        ts.next_tick, ticks = hrtimer_forward(ts.next_tick, self.clock.read(cpu), self._period)
        ts.stopped = False
        program_event(cpu, self.clock, ts)
        if ticks and index in self.online:
            self.ticks.account_idle_ticks(index, self.steal_clock(cpu, index) if self.pv_probed else 0, ticks)

    def cpu_up(self, cpu: GuestCpu, index: int, *, boot: bool = False) -> bool:
        """The CPU comes online: the PV-time cpuhp callback runs on it. False if that fails.

        A failing callback fails the CPU's bring-up, as in Linux; the boot CPU's callback already
        ran in pv_time_init.
        """
        if self.pv_probed and not (boot and index == 0):
            err = self.pv.cpu_online(cpu, index)
            if err:
                self.online_errors[index] = err
                self.pv.cpu_offline(index)
                return False
            if not self.options.quirk_hotplug_prev_steal:
                self.ticks.reset_prev_steal(index)
                self.rq[index].reset_steal_baseline()
        self.online.add(index)
        return True

    def cpu_down(self, index: int) -> None:
        """The CPU goes offline: its region is unmapped, its steal clock reads 0."""
        self.online.discard(index)
        self.pv.cpu_offline(index)

    # --- the tick -------------------------------------------------------------------------

    def irq(self, cpu: GuestCpu, index: int) -> None:
        """Timer interrupt (hrtimer_interrupt): run the expired timers and program the next one.

        The tick accounts one tick and updates the rq clock; the idle period's wake-up (with
        NO_HZ_IDLE) wakes its task, which updates the rq clock as the enqueue does.
        """
        clock = self.clock
        assert clock is not None
        clock.refresh(cpu, index)  # after a migration: re-translate the event stream
        now_count = clock.read(cpu)
        ts = self.tick_sched[index]
        tick_due, wake_due = ts.expired(now_count)
        timer = self.timer
        if not (tick_due or wake_due):
            # Fired before its deadline (only the RFC's truncating conversion does this): the
            # hrtimer has not expired; retry a minimal delta later, as clockevents does.
            timer.early += 1
            cpu.msr(CNTV_TVAL_EL0, 1)
            return
        deadline = ts.next_tick if tick_due else ts.wakeup
        assert deadline is not None
        freq = self._freq
        late_ns = (now_count - deadline) * NSEC_PER_SEC // freq
        timer.fires += 1
        timer.total_late_ns += late_ns
        if late_ns > timer.max_late_ns:
            timer.max_late_ns = late_ns
        if wake_due:
            ts.wakeup = None
        if tick_due:
            ts.next_tick, _ = hrtimer_forward(ts.next_tick, now_count, freq // self.options.hz)
        program_event(cpu, clock, ts)
        now_ns = now_count * NSEC_PER_SEC // freq
        if tick_due and self.options.tick_observer is not None:
            self.options.tick_observer(index, now_ns, late_ns)
        if index not in self.online:
            return  # an offline CPU takes no ticks: nothing to account
        steal = self.pv.steal_clock(cpu, index)  # paravirt_steal_clock
        if tick_due:
            self.tick_count[index] = self.tick_count.get(index, 0) + 1
            idle = self._idle.get(index, False)
            self.ticks.account_process_tick(index, steal if self.pv_probed else 0, user=not idle, idle=idle)
        self.rq[index].update(now_ns, steal)

    def proc_stat(self) -> str:
        """/proc/stat's cpu lines (per-CPU lines for online CPUs, as fs/proc/stat.c)."""
        return self.ticks.proc_stat(online=self.online)
