"""The CPU index (idle and runnable cpumasks, loads by value) and the balancer's searches over it
choose exactly what a scan over every CPU chooses, ties included.

Linux keeps such sets for the same searches (kernel/sched/fair.c: select_idle_cpu walks
`cpumask_and(cpus, sched_domain_span(sd), p->cpus_ptr)` from target + 1 with
`for_each_cpu_wrap`; sched_balance_find_dst_cpu / find_idlest_group_cpu; update_sd_lb_stats and
sched_balance_find_src_group). The scans below are the code pvtime had before the index.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pvtime.host import CpuHog, EventLoop, Host, PeriodicBurst, PeriodicTask, SchedConfig, Scheduler, Task, TaskBody
from pvtime.host.balance import HAS_SPARE, OVERLOADED, Balancer
from pvtime.host.cpu_index import CpuIndex
from pvtime.host.cpumask import KeyedMasks, count_between, cpus_of, lowest, mask_of, next_wrap
from pvtime.host.entity import SchedEntity
from pvtime.host.runqueue import FairRunQueue
from pvtime.host.scheduler import Pcpu

MS = 1_000_000

masks = st.integers(min_value=1, max_value=(1 << 70) - 1)


# --- cpumask helpers -------------------------------------------------------------------------

@given(masks, st.integers(0, 69))
def test_next_wrap_is_the_first_cpu_of_a_wrapping_walk(mask: int, start: int) -> None:
    walk = [(start + k) % 70 for k in range(70)]
    assert next_wrap(mask, start) == next(c for c in walk if mask >> c & 1)


@given(masks, st.integers(0, 69), st.integers(0, 69))
def test_count_between_and_cpus_of(mask: int, lo: int, hi: int) -> None:
    cpus = [c for c in range(70) if mask >> c & 1]
    assert list(cpus_of(mask)) == cpus and mask_of(cpus) == mask and lowest(mask) == cpus[0]
    assert count_between(mask, lo, hi) == sum(1 for c in cpus if lo <= c <= hi)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 15)), max_size=60), masks)
def test_keyed_masks_find_the_least_and_greatest_key_within_a_mask(ops: list[tuple[bool, int, int]],
                                                                   within: int) -> None:
    groups = KeyedMasks()
    key_of: dict[int, int] = {}
    for put, key, cpu in ops:
        if cpu in key_of:
            groups.remove((key_of.pop(cpu),), 1 << cpu)
        if put:
            groups.add((key,), 1 << cpu)
            key_of[cpu] = key
    inside = {c: k for c, k in key_of.items() if within >> c & 1}
    least, greatest = groups.least(within), groups.greatest(within)
    if not inside:
        assert least is None and greatest is None
        return
    for found, best in ((least, min(inside.values())), (greatest, max(inside.values()))):
        assert found == ((best,), mask_of(c for c, k in inside.items() if k == best))


# --- the index against scans, under random queue changes -----------------------------------

def _scan_select_idle_cpu(cpus: list[Pcpu], target: int, allowed: frozenset[int], nr_scan: int) -> int | None:
    nr = nr_scan + 1
    if nr == 1:
        return None
    for k in range(1, len(cpus) + 1):
        c = (target + k) % len(cpus)
        if c not in allowed:
            continue
        nr -= 1
        if nr <= 0:
            break
        if cpus[c].is_idle():
            return c
    return None


def _scan_idlest(cpus: list[Pcpu], allowed: tuple[int, ...]) -> int:
    idle = [c for c in allowed if cpus[c].is_idle()]
    if idle:
        return max(idle, key=lambda c: (cpus[c].idle_stamp or 0, -c))
    return min(allowed, key=lambda c: (cpus[c].rq.load, cpus[c].rq.nr_runnable, c))


def _entity(host: Host, allowed: tuple[int, ...]) -> SchedEntity:
    return SchedEntity(host.spawn("t"), CpuHog(), allowed=allowed)


change = st.tuples(st.sampled_from(["enqueue", "dequeue", "delay", "undelay", "run", "stop"]),
                   st.integers(0, 12), st.sampled_from([1024, 335, 3121]), st.integers(0, 5))
query = st.tuples(st.integers(0, 12), st.sets(st.integers(0, 12), min_size=1), st.integers(0, 13))


@settings(max_examples=150)
@given(st.integers(1, 13), st.lists(st.tuples(change, query), min_size=1, max_size=40))
def test_index_agrees_with_scans(ncpus: int, steps: list[tuple[tuple[str, int, int, int], tuple[int, set[int], int]]]) -> None:
    """Every change of a run queue's counts or of a CPU's task is followed by `refresh`, as the
    scheduler does; then idle and runnable sets, total load, select_idle_cpu and the fork
    placement match full scans."""
    host = Host(ncpus=ncpus)
    cpus = [Pcpu(i, FairRunQueue(i)) for i in range(ncpus)]
    index = CpuIndex(cpus)
    running = _entity(host, tuple(range(ncpus)))
    weights: list[list[int]] = [[] for _ in cpus]  # queued weights per CPU
    for (op, c, weight, stamp), (target, allowed_set, nr_scan) in steps:
        cpu = cpus[c % ncpus]
        rq = cpu.rq
        if op == "enqueue":
            rq.nr_queued += 1
            rq.load += weight
            weights[cpu.id].append(weight)
        elif op == "dequeue" and rq.nr_queued > rq.nr_delayed:
            rq.nr_queued -= 1
            rq.load -= weights[cpu.id].pop()
        elif op == "delay" and rq.nr_queued > rq.nr_delayed:
            rq.nr_delayed += 1  # DELAY_DEQUEUE: still queued, no longer runnable
        elif op == "undelay" and rq.nr_delayed:
            rq.nr_delayed -= 1
        elif op == "run":
            cpu.curr, cpu.idle_stamp = running, None
        elif op == "stop":
            cpu.curr = None
            cpu.idle_stamp = stamp if stamp else None
        index.refresh(cpu)
        assert index.idle == mask_of(p.id for p in cpus if p.is_idle())
        assert index.runnable == mask_of(p.id for p in cpus if p.rq.nr_runnable)
        assert index.total_load == sum(p.rq.load for p in cpus)
        allowed = tuple(sorted(a % ncpus for a in allowed_set))
        target %= ncpus
        assert index.select_idle_cpu(target, mask_of(allowed), nr_scan) == \
            _scan_select_idle_cpu(cpus, target, frozenset(allowed), nr_scan)
        assert index.idlest(mask_of(allowed)) == _scan_idlest(cpus, allowed)


# --- the whole scheduler: the indexed balancer against the scanning one ----------------------

class ScanBalancer(Balancer):
    """The balancer's four searches as scans over every CPU, as before the index."""

    def _select_idle_cpu(self, se: SchedEntity, target: int) -> int:
        idle = _scan_select_idle_cpu(self.sched.cpus, target, se.allowed_set, self.nr_idle_scan)
        return target if idle is None else idle

    def _idlest(self, se: SchedEntity) -> int:
        return _scan_idlest(self.sched.cpus, se.allowed)

    def _idle_cpus(self) -> list[Pcpu]:
        return list(self.sched.cpus)  # the caller checks each as it comes to it

    def _update_idle_cpu_scan(self, now: int) -> None:
        cpus = self.sched.cpus
        x = int(sum(self.cpu_util(c, now) for c in cpus)) // len(cpus)
        t = min(x * x * 117 * 117 // (10000 * 1024), 1024)
        self.nr_idle_scan = (1024 - t) * len(cpus) // 1024

    def _find_busiest(self, cpu: Pcpu, now: int, pinned: int = 0) -> tuple[Pcpu | None, int]:
        cpus = self.sched.cpus
        busiest: Pcpu | None = None
        busiest_type = -1
        for other in cpus[cpu.id + 1:] + cpus[:cpu.id]:
            if other.rq.nr_queued == other.rq.nr_delayed or pinned >> other.id & 1:
                continue
            t = self._group_type(other, now)
            if busiest is None or t > busiest_type:
                busiest, busiest_type = other, t
            elif t == busiest_type == OVERLOADED and other.rq.load > busiest.rq.load:
                busiest = other
            elif t == busiest_type == HAS_SPARE and other.rq.nr_queued > busiest.rq.nr_queued:
                busiest = other
        return busiest, busiest_type


TaskSpec = tuple[int, int, int, int, int, frozenset[int]]  # kind, a, b, nice, start ms, affinity


def _body(kind: int, a: int, b: int) -> TaskBody:
    if kind == 0:
        return CpuHog(duty=(a % 10 + 1) / 10, period_ns=(b % 7 + 2) * MS)
    if kind == 1:
        return PeriodicBurst(burst_ns=(a % 5 + 1) * 300_000, period_ns=(b % 9 + 2) * MS, phase_ns=a * 10_000)
    return PeriodicTask(work_ns=(a % 6 + 1) * 200_000, period_ns=(b % 11 + 3) * MS, phase_ns=b * 7_000)


def _run(policy: str, ncpus: int, specs: list[TaskSpec], scan: bool, duration: int) -> tuple[object, ...]:
    loop, host = EventLoop(), Host(ncpus=ncpus)
    rows: list[tuple[int, str, int, int, bool]] = []

    class Seen:
        def on_segment(self, host: Host, cpu: int, task: Task, start_ns: int, end_ns: int,
                       switched_in: bool) -> None:
            rows.append((cpu, task.name, start_ns, end_ns, switched_in))

        def on_wake(self, host: Host, task: Task, at_ns: int, cpu: int) -> None:
            rows.append((cpu, task.name, at_ns, -1, False))

    sched = Scheduler(host, loop, SchedConfig(policy=policy), end_ns=duration, observer=Seen())  # type: ignore[arg-type]
    if scan:
        sched.balancer = ScanBalancer(sched)
    for i, (kind, a, b, nice, start_ms, affinity) in enumerate(specs):
        cpus = None if not affinity else sorted(c % ncpus for c in affinity)
        sched.add(host.spawn(f"t{i}"), _body(kind, a, b), nice=nice, cpus=cpus, start_ns=start_ms * MS)
    loop.run(duration)
    sched.finish()
    return (rows, [t.schedstat() for t in host.tasks], sched.balancer.pulls, sched.late_reschedules)


task_specs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 50), st.integers(-5, 5),
                                st.integers(0, 30), st.frozensets(st.integers(0, 11), max_size=4)),
                      min_size=1, max_size=16)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["eevdf", "cfs"]), st.integers(2, 12), task_specs)
def test_indexed_balancer_decides_as_the_scan(policy: str, ncpus: int, specs: list[TaskSpec]) -> None:
    """Random tasks (hogs, bursts, periodic jobs, pinned or free) on 2-12 CPUs: every segment,
    wake-up CPU and schedstat is the same with the indexed searches as with full scans."""
    assert _run(policy, ncpus, specs, False, 120 * MS) == _run(policy, ncpus, specs, True, 120 * MS)


def test_indexed_balancer_on_a_crowded_host_moves_tasks_as_the_scan() -> None:
    """A host with more tasks than CPUs, some pinned, balances (tasks are pulled) and does so
    exactly as the scanning balancer."""
    specs: list[TaskSpec] = [(i % 3, 7 * i, 11 * i, i % 3 - 1, i % 5, frozenset({i % 6, (i + 2) % 6}) if i % 4 == 0
                              else frozenset()) for i in range(20)]
    for policy in ("eevdf", "cfs"):
        indexed = _run(policy, 6, specs, False, 400 * MS)
        assert indexed[2] > 0  # the balancer moved tasks
        assert indexed == _run(policy, 6, specs, True, 400 * MS)
