"""Live migration inside a simulation: a `LiveMigration` driven in virtual time between two hosts.

The hosts share one event core (one timeline), each with its own scheduler. At ``at_ns`` the
driver runs pre-copy rounds while the source VM keeps running (each round takes the time its
bytes need on the link), then pauses the source, makes the final part -- counters read at the
instant the source's vCPUs last executed, since a scheduler segment is simulated ahead of the
event loop -- and restores the VM on the destination after the final part's transfer time plus
a fixed set-up cost. The destination's vCPU threads are started by the caller's ``start`` hook
(the scenario runner registers them with its recorder). If the restore fails, the source is
resumed, its threads are woken, and the error is kept in ``error``: the source VM keeps running.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pvtime.cpu import CpuKind
from pvtime.guest.clockwatch import ClockWatch, WatchLog
from pvtime.host import EventCore, EventLoop, Host, Scheduler
from pvtime.host.events import PRIO_WAKE
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig, StopReason, VcpuThread, build_machine, start_vcpu_threads
from pvtime.vmm.migration import (
    LiveMigration, MigrationError, ModelHandover, Receiver, Sender,
)
from pvtime.vmm.migration_net import ACCEPT_TIMEOUT_S, TIMEOUT_S, accept, receive, send_parts

MS = 1_000_000

StartHook = Callable[[Machine, int], list[VcpuThread]]
StepRunner = Callable[[Callable[[], Any]], Any]


@dataclass(frozen=True)
class LinkSpec:
    """The migration link and policy."""

    bandwidth_bytes_per_s: int = 1_250_000_000  # 10 Gbit/s
    setup_ns: int = 1_000_000  # fixed cost of the switch-over (device state, network, resume)
    max_rounds: int = 5
    converge_pages: int = 64
    count_downtime: bool = True  # the guest's counters keep real time across the pause


class MigrationDriver:
    """One migration of `machine` (its vCPU `threads` on `src_sched`) to `dst_kvm` at `at_ns`."""

    def __init__(self, core: EventCore, machine: Machine, threads: list[VcpuThread], src_sched: Scheduler,
                 dst_kvm: Kvm, start: StartHook, *, at_ns: int, link: LinkSpec | None = None,
                 handover: ModelHandover | None = None, timed: StepRunner | None = None) -> None:
        self.core = core
        self.machine = machine
        self.threads = threads
        self.src_sched = src_sched
        self.start = start
        self.link = link or LinkSpec()
        self.migration = LiveMigration(machine, dst_kvm, bandwidth_bytes_per_s=self.link.bandwidth_bytes_per_s,
                                       max_rounds=self.link.max_rounds, converge_pages=self.link.converge_pages,
                                       handover=handover, count_downtime=self.link.count_downtime)
        self.error: str | None = None
        self.result: Machine | None = None
        self.dest_threads: list[VcpuThread] = []
        # Runs each migration step; a benchmark passes one that measures its wall-clock cost.
        self._timed: StepRunner = timed or (lambda step: step())
        core.at(at_ns, PRIO_WAKE, self._round)

    def _round(self) -> None:
        if self.machine.stopped is not None:
            self.error = f"source stopped before the migration: {self.machine.stopped}"
            return
        try:
            nbytes = self._timed(self.migration.precopy)
        except MigrationError as err:  # refused while the source runs: it just runs on
            self.error = str(err)
            return
        after = self.core.now + self.migration.transfer_ns(nbytes)
        self.core.at(after, PRIO_WAKE, self._round if self.migration.want_more_rounds() else self._stop)

    def _stop(self) -> None:
        last = max((t.last_ns for t in self.threads), default=0)
        now = self.core.now
        try:
            nbytes = self._timed(lambda: self.migration.stop_and_copy(now, last))
        except MigrationError as err:
            self._fail(err)
            return
        done = max(now, last) + self.migration.transfer_ns(nbytes) + self.link.setup_ns
        self.core.at(done, PRIO_WAKE, self._complete)

    def _complete(self) -> None:
        now = self.core.now
        try:
            machine = self._timed(lambda: self.migration.complete(now))
        except MigrationError as err:
            self._fail(err)
            return
        self.result = machine
        self.dest_threads = self.start(machine, now)

    def _fail(self, err: MigrationError) -> None:
        self.error = str(err)
        for thread in self.threads:  # the source resumes where it paused
            if thread.task is not None:
                self.src_sched.wake(thread.task)


# --- two `pvtime` processes: `pvtime migrate send` and `pvtime migrate listen` -----------------

WATCH_LOG_OFFSET = 0x1000  # where the resident clock-watch guest keeps its log, from RAM base


def _solo(host: Host, end_ns: int = 1 << 62) -> tuple[EventLoop, Scheduler]:
    core = EventLoop()
    return core, Scheduler(host, core, end_ns=end_ns)


def watch_summary(machine: Machine) -> dict[str, object]:
    """What the resident clock-watch guest logged, the LPT record, and steal (for the CLI)."""
    off = WATCH_LOG_OFFSET
    log = WatchLog.unpack(bytes(machine.ram[off:off + WatchLog.SIZE]))
    return {"vm": machine.config.name, "stopped": _stopped(machine), "reads": log.reads, "last": log.last,
            "freq": log.freq, "backsteps": log.backsteps, "restarts": log.restarts,
            "record": _record_dict(machine), "steal_ns": machine.stolen_time(0)}


def elf_summary(machine: Machine) -> dict[str, object]:
    """An AArch64 guest's console, exit status and steal (for the CLI)."""
    return {"vm": machine.config.name, "stopped": _stopped(machine), "exit_status": machine.exit_status,
            "console": machine.console.decode(errors="replace"), "record": _record_dict(machine),
            "steal_ns": [machine.stolen_time(v.id) for v in machine.vcpus]}


def _stopped(machine: Machine) -> str | None:
    return None if machine.stopped is None else str(machine.stopped)


def _record_dict(machine: Machine) -> dict[str, int] | None:
    record = machine.lpt_record()
    return None if record is None else dataclasses.asdict(record)


def summary(machine: Machine) -> dict[str, object]:
    """The summary that fits the guest: an ELF guest's console, or the clock-watch log."""
    return elf_summary(machine) if machine.config.cpu is CpuKind.UNICORN else watch_summary(machine)


def send_vm(address: tuple[str, int], *, native_hz: int, pv_hz: int | None, run_ms: int,
            name: str | None = None, image: bytes | None = None, vcpus: int = 1) -> dict[str, object]:
    """Run a VM for `run_ms` on a host of `native_hz`, then migrate it to `address`.

    The VM is the resident clock-watch model guest, or the AArch64 ELF `image` on `vcpus` vCPUs.
    If the receiver refuses, the VM is resumed and runs 1 ms more, to show it kept running.
    """
    host = Host(native_hz, name="source")
    core, sched = _solo(host)
    name = name or ("watch" if image is None else "guest")
    if image is None:
        config = MachineConfig(name, memory_mib=2, lpt_pv_hz=pv_hz)
        machine = build_machine(Kvm(host), config, program=ClockWatch(config.layout.ram_base + WATCH_LOG_OFFSET,
                                                                      lpt=pv_hz is not None))
    else:
        machine = build_machine(Kvm(host), MachineConfig(name, vcpus=vcpus, memory_mib=64, lpt_pv_hz=pv_hz,
                                                         cpu=CpuKind.UNICORN), image=image)
    threads = start_vcpu_threads(machine, host, sched)
    paused = run_ms * MS
    # The VMM pauses the VM at run_ms: an event on the core, so no guest code runs past it.
    core.at(paused, PRIO_WAKE, machine.pause)
    core.run(paused + 1)
    at = max([paused] + [t.last_ns for t in threads])
    sender = Sender(machine, f"{name}@{host.name}")
    part = sender.final(at)
    before = summary(machine)
    with socket.create_connection(address, timeout=30) as sock:
        ok, message = send_parts(sock, [part])
    if ok:
        machine.stop(StopReason.migrated(f"{address[0]}:{address[1]}"))
    else:
        machine.resume()
        for t in threads:
            assert t.task is not None
            sched.wake(t.task)
        core.run(core.now + MS)
    return {"accepted": ok, "message": message, "bytes": len(part), "saved_at_ns": at,
            "at_save": before, "now": summary(machine)}


def listen_vm(port: int, *, native_hz: int, run_ms: int, announce: Callable[[int], None],
              accept_timeout: float = ACCEPT_TIMEOUT_S, timeout: float = TIMEOUT_S,
              allow_frequency_change: bool = False) -> dict[str, object]:
    """Receive one VM on 127.0.0.1:`port` (0: any), run it `run_ms` on a host of `native_hz`.

    `announce(port)` is called once listening. Raises MigrationError on a refused stream, when no
    sender connects within `accept_timeout` seconds, when a read waits more than `timeout`, or for
    a VM without LPT from a host of another counter frequency unless `allow_frequency_change`
    (as scenario files refuse it).
    """
    host = Host(native_hz, name="dest")
    core, sched = _solo(host, end_ns=run_ms * MS)
    kvm = Kvm(host)
    with socket.create_server(("127.0.0.1", port)) as server:
        announce(server.getsockname()[1])
        with accept(server, timeout=accept_timeout) as conn:
            receiver = Receiver(kvm, allow_frequency_change=allow_frequency_change)
            machine = receive(conn, lambda data: receiver.feed(data, now_ns=0), timeout=timeout)
    start_vcpu_threads(machine, host, sched, start_ns=0)
    at_restore = summary(machine)
    core.run(run_ms * MS)
    return {"at_restore": at_restore, "now": summary(machine), "run_ms": run_ms}
