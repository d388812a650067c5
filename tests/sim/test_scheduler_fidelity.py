"""The host scheduler under whole guests: wake-ups from guest code take effect at their instant,
results do not depend on internal limits, and a migration saves a VM when it was asked to."""

from __future__ import annotations

import threading

from pvtime.abi import smccc
from pvtime.cpu import CpuKind
from pvtime.host import EventLoop, Host, Scheduler
from pvtime.kvm import HypercallEvent, Kvm
from pvtime.sim import scenario
from pvtime.sim.migration import listen_vm, send_vm
from pvtime.vmm.builder import start_vcpu_threads
from pvtime.sim.runner import run
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.images import packaged_image, patch_minikernel

MS = 1_000_000
TICK = 4 * MS  # the host's HZ=250


class FirstRuns:
    """When each task first arrives on a CPU."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}

    def on_segment(self, host, cpu, task, start_ns, end_ns, switched_in) -> None:  # type: ignore[no-untyped-def]
        self.first.setdefault(task.name, start_ns)

    def on_wake(self, host, task, at_ns, cpu) -> None:  # type: ignore[no-untyped-def]
        pass


def test_cpu_on_from_guest_code_preempts_within_a_tick() -> None:
    """A guest whose vCPU 0 starts three vCPUs with PSCI CPU_ON on a 1-CPU host: each woken vCPU
    runs within a tick of its CPU_ON (try_to_wake_up -> wakeup_preempt at the call, preemption
    at the next tick at the latest), and vCPU 0 waits from then on: the steal its guest sees
    grows (kernel/sched/core.c try_to_wake_up, fair.c check_preempt_wakeup_fair, sched_tick)."""
    host = Host(62_500_000)
    core = EventLoop()
    seen = FirstRuns()
    sched = Scheduler(host, core, end_ns=60 * MS, observer=seen)
    m = Machine(Kvm(host), MachineConfig("g", vcpus=4, memory_mib=64, cpu=CpuKind.UNICORN,
                                         instructions_per_sec=200_000_000))
    m.load_elf(patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=40, busy_ms=40, idle_ms=0))
    cpu_on: dict[int, int] = {}

    def trace(event: HypercallEvent) -> None:
        if event.function_id == smccc.PSCI_CPU_ON and event.results[0] == smccc.PSCI_SUCCESS:
            cpu_on[len(cpu_on) + 1] = host.now_ns()

    m.vm.subscribe_hypercalls(trace)
    threads = start_vcpu_threads(m, host, sched, start_ns=0)
    core.run(60 * MS)
    sched.finish()
    assert sorted(cpu_on) == [1, 2, 3], cpu_on
    for i, at in cpu_on.items():
        first = seen.first[f"g/vcpu{i}"]
        assert at <= first <= at + TICK, (i, at, first)
    assert sched.late_reschedules == 0
    boot = threads[0].task
    assert boot is not None and boot.run_delay_ns > 10 * MS  # kept waiting once its siblings run
    assert (m.stolen_time(0) or 0) > 0


def _results_of(max_segment_ns: int | None) -> tuple[list[object], list[object]]:
    spec = scenario.load("default").spec
    spec = spec.model_copy(update={"duration_ms": 300, "migration": []})
    r = run(scenario.Scenario(spec, "embedded:default"), max_segment_ns=max_segment_ns)
    return [(t.name, (t.run_time_ns, t.run_delay_ns, t.timeslices)) for t in r.tasks], list(r.vcpus)


def test_results_do_not_depend_on_the_internal_segment_bound() -> None:
    """The default scenario (model and machine-code guests, noise, VMM threads) gives identical
    schedstat, steal records, guest /proc/stat and vCPU loads whether task bodies run a whole
    segment per call or at most 0.25 ms (a body continued without a switch is no sched_in, so
    no kvm_arch_vcpu_load)."""
    assert _results_of(None) == _results_of(250_000)


def test_migrate_send_saves_the_vm_at_the_requested_time() -> None:
    """`pvtime migrate send --run-ms N` saves at N ms of virtual time, not at the end of a
    segment simulated ahead."""
    for run_ms in (10, 60):
        port: list[int] = []
        ready = threading.Event()

        def listen(port: list[int] = port, ready: threading.Event = ready) -> None:
            listen_vm(0, native_hz=10**9, run_ms=1, announce=lambda p: (port.append(p), ready.set()))

        t = threading.Thread(target=listen)
        t.start()
        assert ready.wait(30)
        sent = send_vm(("127.0.0.1", port[0]), native_hz=25_000_000, pv_hz=10**9, run_ms=run_ms)
        t.join(30)
        assert sent["accepted"] and sent["saved_at_ns"] == run_ms * MS, sent["saved_at_ns"]
