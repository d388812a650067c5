"""Collect a finished run's results: a row per vCPU, task, VM, migration and guest clock."""

from __future__ import annotations

import numpy as np

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.sim.build import PlannedMigration, SimVm, World
from pvtime.sim.results import (
    ClockRow, MigrationRow, MigrationStatus, RunResult, TaskRow, VcpuRow, VmRow,
)
from pvtime.vmm.images import PROC_STAT_STEAL


def collect(world: World, end_ns: int) -> RunResult:
    """The results of `world`'s run up to `end_ns` (its end, or where it was stopped), once its
    schedulers have finished."""
    spec, recorder, hosts = world.scenario.spec, world.recorder, world.hosts
    rows: list[VcpuRow] = []
    series: dict[str, dict[str, np.ndarray]] = {}
    times = recorder.grid(end_ns)
    for vm in world.vms:
        end = end_ns if vm.state.stopped_ns is None else min(end_ns, vm.state.stopped_ns)
        stat = vm.state.console_stat(vm.machine) if vm.kernel is None else None
        for thread in vm.threads:
            task = thread.task
            assert task is not None
            cpu = thread.vcpu.id
            probe = vm.state.probes[cpu]
            reading = probe.read(end_ns)
            first = vm.state.first_run_ns.get(cpu)
            first_t = end if first is None else first
            guest, record = reading.guest_ns, reading.record_ns
            proc_stat: int | None = None if guest is None else guest // (NSEC_PER_SEC // USER_HZ)
            total: int | None = None
            note: str | None = None
            if stat is not None:
                if cpu in stat.cpus:  # what the guest printed, not a conversion of its ns
                    proc_stat, total = stat.cpus[cpu][PROC_STAT_STEAL], sum(stat.cpus[cpu])
                if guest is None:
                    note = _no_guest_steal_note(vm, cpu)
            rows.append(VcpuRow(
                vm.host.name, vm.spec.name, cpu, task.name, task.tid, vm.spec.pvtime,
                vm.spec.guest.kind, reading.run_delay_ns, record, guest, proc_stat,
                max(0, end - first_t), task.run_time_ns, task.timeslices, thread.vcpu.stats.loads,
                total, note, host_wait_ns=reading.wait_ns, pv_time_st_calls=reading.pv_time_st_calls,
                first_run_ns=first))
            series[probe.key] = recorder.series(probe.key, times)
    tasks = [TaskRow(h.name, t.name, t.tid, world.kinds.get((h.name, t.tid), "noise"), *t.schedstat())
             for h in hosts for t in h.tasks]
    vm_rows = [VmRow(vm.host.name, vm.spec.name, "model" if vm.kernel is not None else f"{vm.spec.guest.kind}:{vm.state.image}",
                     vm.machine.stopped,
                     vm.kernel.proc_stat() if vm.kernel is not None
                     else "\n".join(vm.state.console_stat(vm.machine).lines),
                     vm.state.console(vm.machine), vm.state.stopped_ns, vm.machine.exit_status)
               for vm in world.vms]
    nbins = -(-end_ns // recorder.sample_ns)
    occupancy = {(h.name, c): recorder.busy[h.name][c][:, :nbins] for h in hosts for c in range(h.ncpus)}
    scheds = world.scheds.values()
    stats = {
        "events": getattr(world.core, "processed", -1),
        "segments": sum(s.segments for s in scheds),
        "context_switches": sum(s.switches for s in scheds),
        "late_reschedules": sum(s.late_reschedules for s in scheds),
        "hypercalls_traced": recorder.hypercalls,
    }
    pids = {h.name: recorder.pid[h.name] for h in hosts}
    names = {(recorder.pid[h.name], t.tid): t.name for h in hosts for t in h.tasks}
    grid = np.array(times, dtype=np.int64)
    result = RunResult(spec, world.scenario.source, end_ns, rows, tasks, vm_rows, grid, series,
                       occupancy, recorder.events, pids, names, {h.name: h.ncpus for h in hosts}, stats)
    result.migrations = [_migration_row(m) for m in world.migrations]
    result.clocks = {vm.spec.name: _clock_row(vm) for vm in world.vms if vm.kernel is not None}
    return result


def _migration_row(planned: PlannedMigration) -> MigrationRow:
    ms, d = planned.spec, planned.driver
    if d is None:
        return MigrationRow(ms.vm, ms.to, ms.at_ms, MigrationStatus.NOT_REACHED)
    st = d.migration.stats
    status = (MigrationStatus.ERROR if d.error else
              MigrationStatus.DONE if d.result is not None else MigrationStatus.IN_PROGRESS)
    return MigrationRow(ms.vm, ms.to, ms.at_ms, status, d.error, d.migration.source.kvm.host.name,
                        st.rounds, tuple(st.pages), st.bytes, st.downtime_ns)


def _clock_row(vm: SimVm) -> ClockRow:
    """The guest clock (its clocksource, PV with LPT) against virtual time, and tick lateness."""
    assert vm.kernel is not None
    clock = vm.kernel.clock
    return ClockRow(None if clock is None else clock.name, None if clock is None else clock.freq,
                    vm.kernel.timer.early, tuple((t, ns - t, x) for t, ns, x in vm.state.ticks))


def _no_guest_steal_note(vm: SimVm, cpu: int) -> str:
    """Why an ELF guest's steal is not known: it prints it at its end, which did not come."""
    stopped = vm.machine.stopped
    if stopped is None:
        return ("still running at the end of the run: it prints /proc/stat when it finishes "
                "(give it a duration_ms below the scenario's)")
    if vm.state.console_stat(vm.machine).cpus:
        return f"no cpu{cpu} line on its console"
    return f"no /proc/stat on its console (stopped: {stopped})"
