"""Where tasks run: wake-up CPU selection and load balancing, after kernel/sched/fair.c at v6.18.

A host is modelled as one scheduling domain of identical CPUs sharing a last-level cache (the
MC level of a single-socket machine without SMT), each CPU its own group. Followed:

- `select_task_rq_fair` for a wake-up: `wake_affine` (`wake_affine_idle`, then
  `wake_affine_weight` with WA_BIAS) between the waking CPU and the task's previous CPU, then
  `select_idle_sibling` (the target if idle, else the previous CPU if idle, else the first idle
  allowed CPU scanning from target + 1, else the target); for a fork, the idlest allowed CPU
  (`sched_balance_find_dst_cpu`: an idle CPU, the most recently idled first, else the least loaded);
- `sched_balance_newidle`: a CPU about to go idle pulls from the busiest CPU;
- periodic balancing (`sched_balance_domains` from the tick, and the NO_HZ idle balance that a busy
  CPU's tick kicks for idle CPUs) at the domain's interval: `balance_interval` starts at the
  domain's weight in ms, doubles while balanced up to twice that, is multiplied by `busy_factor`
  (16) on a busy CPU, and resets when an imbalance is found;
- `sched_balance_rq` (load_balance) reduced to one level: the busiest CPU is the one with the
  most runnable tasks (then the highest load); an idle CPU takes half the difference in tasks
  (`migrate_task`); a busy CPU takes load (`migrate_load`: min of busiest - average and
  average - local), where a task whose weight shifted right by `nr_balance_failed` exceeds the
  imbalance is skipped; `can_migrate_task` refuses the running task, tasks not allowed on the
  destination, and cache-hot tasks (ran within sysctl_sched_migration_cost, 0.5 ms) unless
  balancing has failed more than `cache_nice_tries` (1) times.

Simplified: load is the sum of the runnable tasks' weights (Linux uses PELT averages, which also
count recently blocked tasks), so `wake_affine_weight` and `migrate_load` see instantaneous
load; no active balancing (the running task of the busiest CPU is never pushed away); no SMT or
NUMA levels; the `rd->overload` and `max_newidle_lb_cost` shortcuts of newidle balancing are
taken as always passing (newidle balancing costs microseconds, far below any idle period here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.host.entity import SchedEntity
from pvtime.host.runqueue import Enqueue

if TYPE_CHECKING:
    from pvtime.host.scheduler import Pcpu, Scheduler

MIGRATION_COST_NS = 500_000  # sysctl_sched_migration_cost
BUSY_FACTOR = 16
CACHE_NICE_TRIES = 1
IMBALANCE_PCT = 117
MSEC = 1_000_000


class Balancer:
    """The load balancer of one host's scheduler."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.min_interval_ms = max(1, len(sched.cpus))  # sd_weight
        self.max_interval_ms = 2 * self.min_interval_ms
        for cpu in sched.cpus:
            cpu.balance_interval_ms = self.min_interval_ms
        self.pulls = 0  # tasks moved by balancing (newidle and periodic)

    # --- wake-up placement -------------------------------------------------------------------

    def select_cpu(self, se: SchedEntity, *, waker: int | None, fork: bool) -> int:
        """select_task_rq_fair."""
        cpus = self.sched.cpus
        if fork or se.cpu is None:
            return self._idlest(se)
        prev = se.cpu
        target = prev
        if waker is not None and waker != prev and waker in se.allowed:
            target = self._wake_affine(se, waker, prev)
        return self._select_idle_sibling(se, prev, target, cpus)

    def _wake_affine(self, se: SchedEntity, this: int, prev: int) -> int:
        cpus = self.sched.cpus
        if cpus[this].is_idle():  # wake_affine_idle
            return prev if cpus[prev].is_idle() else this
        if cpus[prev].is_idle():
            return prev
        # wake_affine_weight (WA_BIAS), with the sleeping task's load counted on prev
        this_eff = (cpus[this].rq.load + se.weight) * 100
        prev_eff = cpus[prev].rq.load * (100 + (IMBALANCE_PCT - 100) // 2)
        return this if this_eff < prev_eff else prev

    @staticmethod
    def _select_idle_sibling(se: SchedEntity, prev: int, target: int, cpus: list[Pcpu]) -> int:
        if cpus[target].is_idle():
            return target
        if prev != target and cpus[prev].is_idle():
            return prev
        n = len(cpus)
        for k in range(1, n):
            c = (target + k) % n
            if c in se.allowed and cpus[c].is_idle():
                return c
        return target

    def _idlest(self, se: SchedEntity) -> int:
        cpus = self.sched.cpus
        idle = [c for c in se.allowed if cpus[c].is_idle()]
        if idle:
            # the most recently idled CPU (find_idlest_group_cpu), lowest id on a tie
            return max(idle, key=lambda c: (cpus[c].idle_stamp or 0, -c))
        return min(se.allowed, key=lambda c: (cpus[c].rq.load, cpus[c].rq.nr_runnable, c))

    # --- newidle -----------------------------------------------------------------------------

    def update_avg_idle(self, cpu: Pcpu, idle_ns: int) -> None:
        """update_avg on wake-up of an idle CPU: avg += (sample - avg) / 8, capped at twice the
        migration cost (the cap applies to the running average, as in ttwu_do_activate)."""
        cap = 2 * MIGRATION_COST_NS
        if cpu.avg_idle > cap:
            cpu.avg_idle = cap
        else:
            cpu.avg_idle += (idle_ns - cpu.avg_idle) // 8

    def newidle(self, cpu: Pcpu, now: int) -> SchedEntity | None:
        """sched_balance_newidle: pull from the busiest CPU before going idle; pick again."""
        if self._balance(cpu, now, idle=True, newly=True):
            return cpu.rq.pick(now)
        return None

    # --- periodic balancing --------------------------------------------------------------------

    def tick(self, cpu: Pcpu, now: int) -> None:
        """From sched_tick: this CPU's periodic balance when due; kick the idle balance."""
        if now >= cpu.next_balance:
            self._periodic(cpu, now, idle=False)
        if cpu.rq.nr_runnable >= 2:  # nohz_balancer_kick: idle CPUs balance, on behalf of all
            for other in self.sched.cpus:
                if other.is_idle() and now >= other.next_balance:
                    if self._periodic(other, now, idle=True):
                        self.sched._post_service(other, now)

    def _periodic(self, cpu: Pcpu, now: int, *, idle: bool) -> bool:
        moved = self._balance(cpu, now, idle=idle, newly=False)
        interval = cpu.balance_interval_ms * (1 if idle else BUSY_FACTOR)
        tick = self.sched.tick_ns
        jiffies = max(1, -(-interval * MSEC // tick))  # msecs_to_jiffies rounds up
        cpu.next_balance = (now // tick + jiffies) * tick
        return moved

    def _balance(self, cpu: Pcpu, now: int, *, idle: bool, newly: bool) -> bool:
        """sched_balance_rq on the one domain; True when a task was moved here."""
        cpus = self.sched.cpus
        local_nr = cpu.rq.nr_runnable
        busiest: Pcpu | None = None
        for other in cpus:
            if other is cpu or other.rq.nr_runnable < 2:
                continue
            if not any(cpu.id in se.allowed for se in other.rq.migratable()):
                continue
            if busiest is None or (other.rq.nr_runnable, other.rq.load) > (busiest.rq.nr_runnable, busiest.rq.load):
                busiest = other
        if busiest is None or busiest.rq.nr_runnable <= local_nr:
            if not newly:
                cpu.nr_balance_failed = 0  # out_balanced
                cpu.balance_interval_ms = min(self.max_interval_ms, cpu.balance_interval_ms * 2)
            return False
        if local_nr == 0:  # group_has_spare: even out the number of tasks
            by_tasks = True
            imbalance = max(1, (busiest.rq.nr_runnable - local_nr) // 2)
        else:  # migrate_load
            by_tasks = False
            avg = (busiest.rq.load + cpu.rq.load) // 2
            imbalance = min(busiest.rq.load - avg, avg - cpu.rq.load)
            if imbalance <= 0:
                if not newly:
                    cpu.nr_balance_failed = 0
                    cpu.balance_interval_ms = min(self.max_interval_ms, cpu.balance_interval_ms * 2)
                return False
        moved = 0
        last: SchedEntity | None = None
        # detach_tasks walks the source's tasks from the least recently run
        for se in sorted(busiest.rq.migratable(), key=lambda e: (e.last_ran_ns, e.task.tid)):
            if busiest.rq.nr_runnable <= 1 or imbalance <= 0:
                break
            if cpu.id not in se.allowed:
                continue
            hot = now - se.last_ran_ns < MIGRATION_COST_NS
            if hot and cpu.nr_balance_failed <= CACHE_NICE_TRIES:
                continue
            if not by_tasks and (se.weight >> cpu.nr_balance_failed) > imbalance:
                continue
            busiest.rq.detach(se, now)
            se.cpu = cpu.id
            cpu.rq.enqueue(se, now, Enqueue.MIGRATE)
            moved += 1
            last = se
            imbalance -= 1 if by_tasks else se.weight
        if last is not None:
            cpu.nr_balance_failed = 0
            self.pulls += moved
            if cpu.curr is not None:
                cpu.rq.wakeup_preempt(last, now, fork=False)  # attach_task -> wakeup_preempt
                self.sched._resched_if_wanted(cpu, now, local=True)
        elif not newly:
            cpu.nr_balance_failed += 1
        cpu.balance_interval_ms = self.min_interval_ms
        return moved > 0
