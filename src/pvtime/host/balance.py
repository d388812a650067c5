"""Where tasks run: wake-up CPU selection and load balancing, after kernel/sched/fair.c at v6.18.

A host is modelled as one scheduling domain of identical CPUs sharing a last-level cache (the
MC level of a single-socket machine without SMT), each CPU its own group. Followed:

- `select_task_rq_fair` for a wake-up: `wake_affine` (`wake_affine_idle`, then
  `wake_affine_weight` with WA_BIAS) between the waking CPU and the task's previous CPU, then
  `select_idle_sibling`: the target if idle, else the previous CPU if idle, else the task's
  `recent_used_cpu` if idle, else `select_idle_cpu` -- an idle allowed CPU scanning from
  target + 1, but (SIS_UTIL) at most `nr_idle_scan` CPUs, a number that falls to 0 as the
  domain's utilisation nears 85 % (`update_idle_cpu_scan`, refreshed by periodic balancing) --
  else the target. For a fork, the idlest allowed CPU (`sched_balance_find_dst_cpu`: an idle
  CPU, the most recently idled first, else the least loaded);
- `sched_balance_newidle`: a CPU about to go idle pulls one task from the busiest CPU, and brings
  its next periodic balance forward to the idle interval;
- periodic balancing (`sched_balance_domains` from the tick, and the NO_HZ idle balance that a
  busy CPU's tick kicks for idle CPUs) at the domain's interval: `balance_interval` starts at the
  domain's weight in ms, doubles while balanced up to twice that, is multiplied by `busy_factor`
  (16, minus a jiffy) on a busy CPU, and resets when an imbalance is found;
- `sched_balance_rq` reduced to one level: groups are classified (`update_sg_lb_stats`:
  overloaded, fully busy, has spare), the busiest is the highest class (then the highest load,
  or for spare groups the most tasks); a local group with spare capacity takes half the
  difference in tasks, and only when idle (`migrate_task`); a busy one takes load from an
  overloaded group (`migrate_load`: min of busiest - average and average - local), skipping a task
  whose weight shifted right by `nr_balance_failed` exceeds the imbalance; `can_migrate_task`
  refuses the running task, tasks not allowed on the destination, before any failure a task not
  eligible on its queue, and cache-hot tasks (ran within sysctl_sched_migration_cost, 0.5 ms)
  unless balancing has failed more than `cache_nice_tries` (1) times; `detach_tasks` walks the
  source's tasks least recently enqueued or picked first. When every task of the busiest CPU
  is pinned away from the balancing CPU (LBF_ALL_PINNED), that CPU is dropped from the
  candidates and the search runs again (`goto redo`), its load no longer counted.

Simplified: load is the sum of the runnable tasks' weights and utilisation a PELT-like average
of the CPU's busy time (32 ms half-life), where Linux uses PELT sums per task; runnable_avg is
taken equal to the utilisation; no active balancing; delayed (DELAY_DEQUEUE) tasks are never
migrated (Linux lets migrate_load move them); no SMT or NUMA levels; the newly idle balance
always runs (the `max_newidle_lb_cost` shortcut skips it only for idle periods of microseconds,
as on 6.18.y, where v6.18.0's cost bump was reverted).

The searches do not visit every CPU, so a host of thousands of CPUs costs per event what a small
one does: idle and runnable CPUs are cpumasks kept by `pvtime.host.cpu_index` as run queues
change, and each CPU's group class is kept between balances and renewed only when its task count
or load moves or a new PELT period begins (utilisation changes only then). Each search returns
the CPU the full scan would, in the same tie-break order; tests/host/test_cpu_index.py checks
that against the scans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtime.abi.linux import NSEC_PER_MSEC, NSEC_PER_SEC
from pvtime.host.cpumask import Key, KeyedMasks, cpus_of, next_wrap
from pvtime.host.entity import SchedEntity
from pvtime.host.runqueue import Enqueue, FairRunQueue

if TYPE_CHECKING:
    from pvtime.host.scheduler import Pcpu, Scheduler

MIGRATION_COST_NS = 500_000  # sysctl_sched_migration_cost
PELT_HALF_LIFE_NS = 32 * 1_000_000
PELT_PERIOD_NS = 1024 * 1000
HAS_SPARE, FULLY_BUSY, OVERLOADED = 0, 1, 2  # enum group_type, in its order
BUSY_FACTOR = 16
CACHE_NICE_TRIES = 1
IMBALANCE_PCT = 117
MAX_PINNED_INTERVAL_MS = 512  # MAX_PINNED_INTERVAL: how far an all-pinned domain's interval may grow
CAPACITY = 1024  # SCHED_CAPACITY_SCALE: every CPU has the full capacity


class Balancer:
    """The load balancer of one host's scheduler."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.min_interval_ms = max(1, len(sched.cpus))  # sd_weight
        self.max_interval_ms = 2 * self.min_interval_ms
        for cpu in sched.cpus:
            cpu.balance_interval_ms = self.min_interval_ms
        self.nr_idle_scan = 0  # sd_share->nr_idle_scan (zeroed until the first periodic balance)
        self.nohz_next_balance = 0  # nohz.next_balance: at most one idle-balance kick per tick
        self.pulls = 0  # tasks moved by balancing (newidle and periodic)
        self.index = sched.index
        self._scan_period = -1  # the PELT period nr_idle_scan was last computed in
        # Each CPU's group class as update_sg_lb_stats would find it, (group type, the figure that
        # breaks a tie within the type), grouped by class; valid for the CPUs classified in
        # `_classified_period` whose task count and load have not changed since.
        self._groups = KeyedMasks()
        self._group_key: list[Key | None] = [None] * len(sched.cpus)
        self._classified = 0
        self._classified_period = -1

    # --- wake-up placement -------------------------------------------------------------------

    def select_cpu(self, se: SchedEntity, *, waker: int | None, fork: bool) -> int:
        """select_task_rq_fair."""
        if fork or se.cpu is None:
            return self._idlest(se)
        prev = se.cpu
        target = prev
        if waker is not None and waker != prev and waker in se.allowed_set:
            target = self._wake_affine(se, waker, prev)
        return self._select_idle_sibling(se, prev, target)

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

    def _select_idle_sibling(self, se: SchedEntity, prev: int, target: int) -> int:
        cpus = self.sched.cpus
        if cpus[target].is_idle():
            return target
        if prev != target and cpus[prev].is_idle():
            return prev
        recent, se.recent_used_cpu = se.recent_used_cpu, prev
        if recent is not None and recent not in (prev, target) and cpus[recent].is_idle() \
                and recent in se.allowed_set:
            return recent
        return self._select_idle_cpu(se, target)

    def _select_idle_cpu(self, se: SchedEntity, target: int) -> int:
        """select_idle_cpu with SIS_UTIL: an idle allowed CPU among the first nr_idle_scan
        allowed ones from target + 1, else the target."""
        idle = self.index.select_idle_cpu(target, se.allowed_mask, self.nr_idle_scan)
        return target if idle is None else idle

    def _idlest(self, se: SchedEntity) -> int:
        """The most recently idled allowed CPU (find_idlest_group_cpu), lowest id on a tie; else
        the least loaded."""
        return self.index.idlest(se.allowed_mask)

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
        # update_next_balance: an idle CPU balances at the idle (not busy) interval
        cpu.next_balance = min(cpu.next_balance, cpu.last_balance + self._interval_ns(cpu, busy=False))
        if self._balance(cpu, now, idle=True, newly=True):
            return cpu.rq.pick(now)
        return None

    # --- periodic balancing --------------------------------------------------------------------

    def tick(self, cpu: Pcpu, now: int) -> None:
        """From sched_tick: this CPU's periodic balance when due; kick the idle balance."""
        if now >= cpu.next_balance:
            self._periodic(cpu, now, idle=False)
        if cpu.rq.nr_runnable >= 2 and now >= self.nohz_next_balance:
            # nohz_balancer_kick: one idle CPU balances, on behalf of every idle CPU that is due
            self.nohz_next_balance = now + self.sched.tick_ns
            # The idle CPUs in id order (for_each_cpu of nohz.idle_cpus_mask). Balancing one
            # can only make that one busy (a source keeps a task), so the set taken now serves.
            for other in self._idle_cpus():
                if other.is_idle() and now >= other.next_balance:
                    if self._periodic(other, now, idle=True):
                        self.sched.post_service(other, now)

    def _idle_cpus(self) -> list[Pcpu]:
        """The idle CPUs in id order (for_each_cpu of nohz.idle_cpus_mask)."""
        cpus = self.sched.cpus
        return [cpus[c] for c in cpus_of(self.index.idle)]

    def _interval_ns(self, cpu: Pcpu, *, busy: bool) -> int:
        """get_sd_balance_interval, in ns on the tick grid."""
        tick = self.sched.tick_ns
        jiffies = -(-cpu.balance_interval_ms * (BUSY_FACTOR if busy else 1) * NSEC_PER_MSEC // tick)
        if busy:
            jiffies -= 1
        max_jiffies = max(1, (NSEC_PER_SEC // tick) * len(self.sched.cpus) // 10)
        return min(max(jiffies, 1), max_jiffies) * tick

    def _periodic(self, cpu: Pcpu, now: int, *, idle: bool) -> bool:
        """sched_balance_domains: balance, then the next time from get_sd_balance_interval."""
        self._update_idle_cpu_scan(now)
        moved = self._balance(cpu, now, idle=idle, newly=False)
        cpu.last_balance = now
        cpu.next_balance = now + self._interval_ns(cpu, busy=not cpu.is_idle())
        return moved

    def _update_idle_cpu_scan(self, now: int) -> None:
        """update_idle_cpu_scan: how many CPUs select_idle_cpu may look at.

        Within one PELT period it computes the same: every CPU's utilisation was brought to the
        period by the first call and stays until the next period."""
        period = now - now % PELT_PERIOD_NS
        if period == self._scan_period:
            return
        self._scan_period = period
        cpus = self.sched.cpus
        x = int(sum(self.cpu_util(c, now) for c in cpus)) // len(cpus)
        t = min(x * x * IMBALANCE_PCT * IMBALANCE_PCT // (10000 * CAPACITY), CAPACITY)
        self.nr_idle_scan = (CAPACITY - t) * len(cpus) // CAPACITY

    # --- sched_balance_rq ----------------------------------------------------------------------

    def cpu_util(self, cpu: Pcpu, now: int) -> float:
        """The CPU's utilisation in 0..1024, a PELT-like average (32 ms half-life) of busy time,
        updated once per PELT period (1024 us), as PELT's sums are."""
        now -= now % PELT_PERIOD_NS
        if cpu.util_time >= now:
            return cpu.util
        busy = cpu.busy_ns
        if cpu.in_flight and cpu.seg_end > now:
            busy -= cpu.seg_end - max(now, cpu.seg_start)  # executed ahead of `now`
        dt = now - cpu.util_time
        if dt > 0:
            frac = min(1.0, max(0.0, (busy - cpu.util_busy) / dt))
            decay = 0.5 ** (dt / PELT_HALF_LIFE_NS)
            cpu.util = cpu.util * decay + CAPACITY * frac * (1.0 - decay)
            cpu.util_time, cpu.util_busy = now, busy
        return cpu.util

    def _group_type(self, cpu: Pcpu, now: int) -> int:
        """update_sg_lb_stats' classification of a one-CPU group."""
        nr = cpu.rq.nr_queued
        util = self.cpu_util(cpu, now)
        if nr > 1 and CAPACITY * 100 < util * IMBALANCE_PCT:
            return OVERLOADED
        if nr < 1 or CAPACITY * 100 > util * IMBALANCE_PCT:
            return HAS_SPARE
        return FULLY_BUSY

    def _classify_groups(self, now: int) -> None:
        """update_sg_lb_stats for every CPU with a runnable task whose class may have changed:
        its task count or load moved, or its utilisation is not yet of this PELT period (it
        changes once per period). The others keep their class, and are not visited.

        Classifying brings the CPU's utilisation to the period, exactly as visiting every
        runnable CPU at each balance does: a second call within the period changes nothing."""
        period = now - now % PELT_PERIOD_NS
        if period != self._classified_period:
            self._classified_period, self._classified = period, 0
        index = self.index
        todo = index.runnable & (index.changed | ~self._classified)
        if not todo:
            return
        index.changed &= ~todo
        self._classified |= todo
        cpus, keys, groups = self.sched.cpus, self._group_key, self._groups
        for c in cpus_of(todo):
            cpu = cpus[c]
            t = self._group_type(cpu, now)
            # the busiest is the highest type, then the most load (overloaded) or the most tasks
            # (spare capacity); among fully busy groups the first in order
            groups.move(keys, c, (t, cpu.rq.load if t == OVERLOADED else cpu.rq.nr_queued if t == HAS_SPARE else 0))

    def _find_busiest(self, cpu: Pcpu, now: int, pinned: int = 0) -> tuple[Pcpu | None, int]:
        """update_sd_lb_stats' choice of the busiest group other than `cpu`'s and the CPUs of
        mask `pinned` (cleared from env->cpus), and its type (None, -1: no such CPU has a
        runnable task)."""
        self._classify_groups(now)
        found = self._groups.greatest(self.index.runnable & ~(1 << cpu.id) & ~pinned)
        if found is None:
            return None, -1
        # the first in the order build_sched_groups links the groups: cpu+1, ..., cpu-1
        return self.sched.cpus[next_wrap(found[1], cpu.id + 1)], found[0][0]

    def _balance(self, cpu: Pcpu, now: int, *, idle: bool, newly: bool) -> bool:
        """sched_balance_rq on the one domain; True when a task was moved here.

        When every task of the busiest CPU is pinned away from `cpu` (LBF_ALL_PINNED), that CPU
        leaves the candidates and the search starts again (`goto redo`) while other CPUs remain.
        """
        local_type = self._group_type(cpu, now)
        pinned = 0  # CPUs cleared from env->cpus: all their tasks were pinned elsewhere
        everyone = (1 << len(self.sched.cpus)) - 1
        while True:
            busiest, busiest_type = self._find_busiest(cpu, now, pinned)
            imbalance, by_tasks = self._imbalance(cpu, local_type, busiest, busiest_type, idle, pinned)
            if busiest is None or imbalance <= 0:
                cpu.nr_balance_failed = 0  # out_balanced
                if not newly:
                    cpu.balance_interval_ms = min(self.max_interval_ms, cpu.balance_interval_ms * 2)
                return False
            moved, all_pinned = self._detach_attach(cpu, busiest, imbalance, by_tasks, now, newly=newly)
            if moved or not all_pinned:
                break
            pinned |= 1 << busiest.id
            if everyone & ~pinned & ~(1 << cpu.id):
                continue  # redo
            cpu.nr_balance_failed = 0  # out_all_pinned
            if not newly and (cpu.balance_interval_ms < MAX_PINNED_INTERVAL_MS
                              or cpu.balance_interval_ms < self.max_interval_ms):
                cpu.balance_interval_ms *= 2
            return False
        if moved:
            cpu.nr_balance_failed = 0
        elif not newly:
            cpu.nr_balance_failed += 1
        cpu.balance_interval_ms = self.min_interval_ms  # unbalanced: reset the interval
        return moved

    def _imbalance(self, cpu: Pcpu, local_type: int, busiest: Pcpu | None, busiest_type: int,
                   idle: bool, pinned: int = 0) -> tuple[int, bool]:
        """sched_balance_find_src_group + calculate_imbalance: (imbalance, in tasks?). The CPUs of
        `pinned` count no load (update_sg_lb_stats visits only env->cpus), but their capacity."""
        if busiest is None or local_type > busiest_type:
            return 0, True
        local_load, busiest_load = cpu.rq.load, busiest.rq.load
        if busiest_type != OVERLOADED and (not idle or busiest.rq.nr_runnable == 1):
            return 0, True
        if local_type == HAS_SPARE:  # even out the number of tasks, only into an idle CPU
            diff = busiest.rq.nr_queued - cpu.rq.nr_queued if idle else 0
            return max(0, diff) >> 1, True
        cleared = sum(self.sched.cpus[c].rq.load for c in cpus_of(pinned))
        total = (self.index.total_load - cleared) // len(self.sched.cpus)  # sds->avg_load
        if busiest_type == OVERLOADED and local_type == OVERLOADED:
            if local_load >= busiest_load or local_load >= total or 100 * busiest_load <= IMBALANCE_PCT * local_load:
                return 0, True
        if local_load >= busiest_load or local_load >= total:
            return 0, True
        return min(busiest_load - total, total - local_load), False  # migrate_load

    def _detach_attach(self, cpu: Pcpu, busiest: Pcpu, imbalance: int, by_tasks: bool, now: int, *,
                       newly: bool) -> tuple[bool, bool]:
        """detach_tasks / attach_tasks: (a task was moved, LBF_ALL_PINNED -- every task looked at
        was turned away by the checks can_migrate_task makes up to and including affinity)."""
        last: SchedEntity | None = None
        src = busiest.rq
        if src.nr_runnable <= 1:
            return False, False  # sched_balance_rq looks at no task: LBF_ALL_PINNED stays clear
        all_pinned = not self._any_allowed(cpu, src, by_tasks)
        for se in src.migratable():
            if src.nr_runnable <= 1 or imbalance <= 0:
                break
            if not self._can_migrate(se, cpu, src, now):
                continue
            if not by_tasks and (se.weight >> cpu.nr_balance_failed) > imbalance:
                continue
            src.detach(se, now)
            se.cpu = cpu.id
            se.last_ran_ns = -(1 << 62)  # ENQUEUE_MIGRATED clears exec_start: no longer cache-hot
            cpu.rq.enqueue(se, now, Enqueue.MIGRATE)
            self.pulls += 1
            last = se
            imbalance -= 1 if by_tasks else se.weight
            if newly:
                break  # CONFIG_PREEMPTION: a newly idle CPU takes one task
        if last is None:
            return False, all_pinned
        self.sched.resched_if_wanted(busiest, now, local=False)  # the source's update_curr may ask
        if cpu.curr is not None:
            cpu.rq.wakeup_preempt(last, now, fork=False)  # attach_task -> wakeup_preempt
            self.sched.resched_if_wanted(cpu, now, local=True)
        return True, False

    def _any_allowed(self, cpu: Pcpu, src: FairRunQueue, by_tasks: bool) -> bool:
        """Whether some task on `src` -- its running one included, as rq->cfs_tasks holds it --
        passes can_migrate_task's checks up to affinity for `cpu` and so clears LBF_ALL_PINNED:
        a delayed task is refused first unless load is migrated, and before any failure an
        ineligible one when `cpu` has tasks queued."""
        tasks = [*src.queue, *([src.curr] if src.curr is not None and src.curr.on_rq else [])]
        for se in tasks:
            if se.sched_delayed and by_tasks:
                continue
            if cpu.nr_balance_failed == 0 and cpu.rq.nr_queued and not src.entity_eligible(se):
                continue
            if cpu.id in se.allowed_set:
                return True
        return False

    def _can_migrate(self, se: SchedEntity, cpu: Pcpu, src: FairRunQueue, now: int) -> bool:
        """can_migrate_task, in Linux's order (`migratable` leaves out the running and delayed)."""
        if cpu.nr_balance_failed == 0 and cpu.rq.nr_queued and not src.entity_eligible(se):
            return False  # PLACE_LAG: do not move a task that has run ahead of its share
        if cpu.id not in se.allowed_set:
            return False
        hot = now - se.last_ran_ns < MIGRATION_COST_NS
        return not hot or cpu.nr_balance_failed > CACHE_NICE_TRIES
