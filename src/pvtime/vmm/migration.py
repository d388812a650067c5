"""Saving a running VM, restoring it on another host (of any counter frequency), live migration.

The VMM side of REFERENCE section 5's migration, through the kvm API only, as a real VMM does it:

- **Memory**: the VMM's own buffers (RAM, and the PV-time granule holding the stolen-time and LPT
  records -- which is how steal and the LPT sequence travel: in guest memory). The first pre-copy
  round turns on ``KVM_MEM_LOG_DIRTY_PAGES`` for every slot and sends every non-zero page; each
  later part sends the pages ``vm.get_dirty_log(slot)`` reports (KVM_GET_DIRTY_LOG, which clears
  the log and write-protects again), as QEMU does. Guest stores are logged by every CPU backend
  (unicorn: write protection and a fault at the first store to a page; model: its stores trap to
  KVM), host writes (stolen-time and LPT records) by KVM. A one-part snapshot sends every non-zero
  page. If the migration fails, logging is turned off again.
- **vCPU state** with ``get_reg_list`` + ``get_one_reg``: every register the vCPU has, as QEMU
  saves it (core registers with FP/SIMD, the EL1 system registers, the timer registers by their
  KVM ids, CNTKCTL_EL1, the firmware bitmap), and the power state. Before saving, each vCPU is
  quiesced with ``KVM_RUN`` + ``immediate_exit``, which completes an MMIO access the VMM has
  answered (KVM keeps that state out of userspace's sight); semihosting calls are complete when
  they exit (the PC is past the HLT and the VMM sets x0). **Attributes** with ``get_device_attr``: each vCPU's stolen-time IPA, the LPT IPA and
  frequency. The destination sets them all again, in KVM's required order (memory first, then
  attributes, then ``KVM_ARM_VCPU_INIT`` and registers; the physical counter before the virtual
  one, because CNTVOFF is relative to CNTPCT).
- **Counters across hosts**: the stream carries counter values in the source's native ticks and
  the source's frequency. The destination restores them as they are (plus the downtime, if the
  caller says how long it was, in source ticks); at the first KVM_RUN the destination host
  rescales the counters and both timers from the LPT record's old ``native_freq``
  (:mod:`pvtime.kvm.lpt`). A VM without LPT gets no rescale: its counter continues at the new
  host's rate, as KVM does.
- **The guest program**. Unicorn guests are machine code in RAM plus registers: fully in the
  stream, so they migrate in-process and between processes. (A vCPU halted in WFI resumes past
  it: a spurious wake-up, which the architecture allows, as after a KVM migration.) A *resident* model program (``resident_name`` attribute, state only in guest RAM,
  e.g. :class:`pvtime.guest.clockwatch.ClockWatch`) is named in the stream and re-instantiated
  by name: it migrates between processes too. Any other model program (the model Linux kernel)
  keeps its execution state in Python generators, which no byte stream can carry honestly: the
  stream names a *hand-over token*, and the model CPUs themselves are handed over in-process
  through a :class:`ModelHandover`: the destination VMM creates its VM on them (``Machine(...,
  cpus=...)``), so the program continues where it stopped. A receiver without that hand-over
  (another process) refuses the stream with a clear error.

**A stopped VM is refused** (:meth:`Sender.precopy`, :meth:`Sender.final`): once its guest has
exited, powered off or stopped on an error, there is nothing left to run, and KVM keeps no
"stopped" state a restore could set again -- a destination would run it anew, with no exit status
and an empty console. The VMM reports the stopped VM where it is (its exit status, console and
stop reason) instead of migrating it.

**One stream, one migration.** Each :class:`Sender` draws a random nonce and binds every part to
it, to its index and to the previous part's checksum, and the final part seals the number of parts
(migration_stream's BIND section); the :class:`Receiver` refuses a part of another stream -- of
another VM, even under the same migration label --, a part out of order, repeated or missing, and
a final part whose seal disagrees. The nonce stays in the stream: stats count the bytes without the
BIND framing, so simulated results do not depend on it.

Failure is safe: saving changes nothing the source guest can see (dirty logging only costs it a
write-protect fault per page per round); a refused part changes nothing at the destination; if
the final restore fails the source is resumed, without dirty logging, and keeps running
(:meth:`LiveMigration.complete`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pvtime.abi.widths import U64
from pvtime.abi.errno import ENXIO
from pvtime.abi.records import LPT_RECORD_SIZE, LptRecord
from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.abi.uapi import (
    INVALID_GPA, KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, KVM_ARM_VM_PVTIME_LPT_CTRL,
    KVM_ARM_VM_PVTIME_LPT_FREQ, KVM_ARM_VM_PVTIME_LPT_IPA, KVM_CAP_STEAL_TIME, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MP_STATE_STOPPED,
    KVM_REG_ARM_CNTKCTL_EL1, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CTL, KVM_REG_ARM_PTIMER_CVAL,
    KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL,
    PAGE_SIZE,
)
from pvtime.cpu import CpuBackend, CpuFactory, CpuKind
from pvtime.guest.clockwatch import ClockWatch
from pvtime.guest.machine import ModelProgram
from pvtime.kvm import Kvm, KvmError, Quirk
from pvtime.vmm import gic_state
from pvtime.vmm.layout import Layout
from pvtime.vmm.machine import Machine, MachineConfig, guest_memory
from pvtime.vmm.migration_check import Fields, check_meta, check_state
from pvtime.vmm.migration_stream import (
    CHAIN_START, NONCE_SIZE, Binding, MigrationError, Part, charged_bytes, decode, digest, encode,
)
from pvtime.vmm.stop import StopReason

__all__ = [
    "LiveMigration", "MigrationError", "MigrationStats", "ModelHandover", "Receiver", "Sender",
    "RESIDENT_PROGRAMS", "Link", "restore", "restore_parts", "save",
]

_ZERO_CHUNK = bytes(16 * PAGE_SIZE)
# Restore order: every register in the order KVM_GET_REG_LIST gave, except the counters and
# timers, which come last and in this order: CNTPCT before CNTVCT (CNTVOFF is relative to
# CNTPCT), compare values before the controls that arm them.
COUNTER_REGS = [KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_TIMER_CNT]
TIMER_REGS = [KVM_REG_ARM_PTIMER_CVAL, KVM_REG_ARM_TIMER_CVAL, KVM_REG_ARM_PTIMER_CTL,
              KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_CNTKCTL_EL1]
_LAST = frozenset(COUNTER_REGS + TIMER_REGS)
# Model programs whose whole state lives in guest RAM: migrated by name, across processes too.
RESIDENT_PROGRAMS: dict[str, Callable[[dict[str, Any]], ModelProgram]] = {
    ClockWatch.resident_name: ClockWatch.from_options,
}


# What a link delivers of one part sent (pvtime.vmm.migration.LiveMigration's `link`).
Link = Callable[[bytes], Sequence[bytes]]


class ModelHandover:
    """In-process hand-over of model CPUs (Python guest programs cannot be serialised as bytes)."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[list[CpuBackend], ModelProgram | None]] = {}
        self._next = 0

    def deposit(self, machine: Machine) -> str:
        """Offer `machine`'s model CPUs; returns the token the stream names."""
        self._next += 1
        token = f"{machine.vm.name}#{self._next}"
        self._slots[token] = (list(machine.cpus), machine.model_program)
        return token

    def has(self, token: str) -> bool:
        """Is `token` deposited here?"""
        return token in self._slots

    def take(self, token: str) -> tuple[list[CpuBackend], ModelProgram | None]:
        """The CPUs and program for `token` (once)."""
        return self._slots.pop(token)


@dataclass
class MigrationStats:
    """What a migration moved and how long the guest was stopped."""

    rounds: int = 0  # pre-copy rounds
    pages: list[int] = field(default_factory=list)  # pages per part (the final one last)
    bytes: int = 0  # charged bytes (migration_stream.charged_bytes: without the BIND framing)
    paused_at_ns: int | None = None
    resumed_at_ns: int | None = None

    @property
    def downtime_ns(self) -> int | None:
        """Virtual time from the source's last guest instruction to the destination's restore."""
        if self.paused_at_ns is None or self.resumed_at_ns is None:
            return None
        return self.resumed_at_ns - self.paused_at_ns


def _config_json(config: MachineConfig) -> dict[str, Any]:
    return {"name": config.name, "vcpus": config.vcpus, "memory_mib": config.memory_mib,
            "pvtime": config.pvtime, "quirks": config.quirks.value, "lpt_pv_hz": config.lpt_pv_hz,
            "layout": dataclasses.asdict(config.layout), "cpu": config.cpu.value,
            "instructions_per_sec": config.instructions_per_sec,
            **({"vgic": True} if config.vgic else {})}  # absent: no vGIC (streams without one are unchanged)


def dirty_pages(bitmap: bytes) -> list[int]:
    """The page indexes set in a KVM_GET_DIRTY_LOG bitmap, in order."""
    out = []
    for i, byte in enumerate(bitmap):
        while byte:
            low = byte & -byte
            out.append(8 * i + low.bit_length() - 1)
            byte ^= low
    return out


class Sender:
    """The source side of one migration: pre-copy parts, then the final part.

    `migration_id` is a label for people (it is in every part's META section). What binds the
    parts to this one stream is a random nonce the Sender draws, its parts' indexes and their
    hash chain (migration_stream's BIND section); the nonce stays inside the stream.
    """

    def __init__(self, machine: Machine, migration_id: str, *, handover: ModelHandover | None = None) -> None:
        self.machine = machine
        self.migration_id = migration_id
        self.handover = handover
        self.stats = MigrationStats()
        self._logging = False  # KVM_MEM_LOG_DIRTY_PAGES is on for the machine's slots
        self._parts = 0
        self._nonce = Binding.new_nonce()
        self._previous = CHAIN_START
        self._sealed = False

    def _meta(self, final: bool) -> dict[str, Any]:
        return {"migration": self.migration_id, "part": self._parts, "final": final,
                "config": _config_json(self.machine.config),
                "regions": [[slot, gpa, len(buf)] for slot, gpa, buf in self.machine.regions()]}

    def _set_logging(self, on: bool) -> None:
        vm = self.machine.vm
        for slot, gpa, buf in self.machine.regions():
            vm.set_user_memory_region(slot, gpa, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES if on else 0)
        self._logging = on

    def stop_logging(self) -> None:
        """Turn dirty logging off again (the migration failed; the source runs on without it)."""
        if self._logging:
            self._set_logging(False)

    def _dirty(self, *, log: bool) -> dict[tuple[int, int], bytes]:
        """The pages to send: logged ones once logging is on; else every non-zero page (and, with
        `log`, turn logging on first, so that nothing written from now on is missed)."""
        pages: dict[tuple[int, int], bytes] = {}
        regions = self.machine.regions()
        if self._logging:
            for slot, _, buf in regions:
                for index in dirty_pages(self.machine.vm.get_dirty_log(slot)):
                    pages[(slot, index)] = bytes(buf[index * PAGE_SIZE:(index + 1) * PAGE_SIZE])
            return pages
        if log:
            self._set_logging(True)
        chunk_size = len(_ZERO_CHUNK)
        for slot, _, buf in regions:
            # 64 KiB at a time, and pages only inside a chunk that is not zero. The chunk is copied
            # to bytes first: bytes compare with one memcmp, a memoryview element by element (50x slower).
            for chunk in range(0, len(buf), chunk_size):
                end = min(chunk + chunk_size, len(buf))
                if bytes(buf[chunk:end]) == _ZERO_CHUNK[:end - chunk]:
                    continue
                for off in range(chunk, end, PAGE_SIZE):
                    data = bytes(buf[off:off + PAGE_SIZE])
                    if data.count(0) != PAGE_SIZE:
                        pages[(slot, off // PAGE_SIZE)] = data
        return pages

    def _check_running(self) -> None:
        if self._sealed:
            raise MigrationError(f"{self.machine.config.name}: the stream was sealed by its final part")
        stopped = self.machine.stopped
        if stopped is not None:
            raise MigrationError(f"{self.machine.config.name} has stopped ({stopped}): a stopped VM is not migrated")

    def precopy(self) -> bytes:
        """A part with every page changed since the last part; the VM may keep running."""
        self._check_running()
        part = Part(self._meta(False), self._dirty(log=True))
        self.stats.rounds += 1
        return self._emit(part)

    def final(self, now_ns: int) -> bytes:
        """The last part, for a VM that does not run any more (paused): pages and CPU state.

        `now_ns` is when the guest last executed (counters are read at that instant).
        """
        m = self.machine
        self._check_running()
        if not m.paused and m.started:
            raise MigrationError(f"{m.config.name}: pause the VM before the final part")
        with m.kvm.host.control_call(now_ns):
            # Quiesce: complete what an exit left pending, enter nothing. A VM whose vCPU threads
            # never entered KVM_RUN has nothing pending, and a KVM_RUN would count as its first
            # run (HAS_RAN_ONCE).
            for vcpu in m.vcpus if m.started else ():
                vcpu.immediate_exit = True
                try:
                    vcpu.run()
                finally:
                    vcpu.immediate_exit = False
            state = self._state(now_ns)
        self.stats.paused_at_ns = now_ns
        return self._emit(Part(self._meta(True), self._dirty(log=False), state))

    def _emit(self, part: Part) -> bytes:
        part.binding = Binding(self._nonce, self._parts, self._parts + 1 if part.final else 0, self._previous)
        data = encode(part)
        self._previous = digest(data)
        self._parts += 1
        self._sealed = part.final
        self.stats.pages.append(len(part.pages))
        self.stats.bytes += charged_bytes(data)
        return data

    def _state(self, now_ns: int) -> dict[str, Any]:
        m = self.machine
        vm = m.vm
        try:
            lpt_ipa = vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA)
            lpt_hz = vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ)
        except KvmError as err:
            if err.errno != ENXIO:
                raise
            lpt_ipa, lpt_hz = INVALID_GPA, 0
        vcpus = []
        for vcpu in m.vcpus:
            try:
                ipa = vcpu.get_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA)
            except KvmError as err:
                if err.errno != ENXIO:
                    raise
                ipa = INVALID_GPA
            regs = {f"{r:#x}": vcpu.get_one_reg(r) for r in vcpu.get_reg_list()}
            vcpus.append({"id": vcpu.id, "powered_off": vcpu.get_mp_state() == KVM_MP_STATE_STOPPED,
                          "steal_ipa": None if ipa == INVALID_GPA else ipa, "regs": regs})
        state: dict[str, Any] = {
            "saved_at_ns": now_ns,
            "native_hz": m.kvm.host.counter_hz,
            "std_hyp_bmap": m.vcpus[0].get_one_reg(KVM_REG_ARM_STD_HYP_BMAP),
            "lpt": None if lpt_hz == 0 and lpt_ipa == INVALID_GPA else {"ipa": lpt_ipa, "pv_hz": lpt_hz},
            "vcpus": vcpus,
            "guest": self._guest(),
        }
        if m.coalesced is not None:
            m.coalesced.flush()  # stores still in KVM's ring reach the UART before it is saved
        if m.gic is not None:  # the interrupt controller, and the device whose interrupt it carries
            state["vgic"] = gic_state.to_json(gic_state.save(m.gic, list(range(len(m.vcpus)))))
        if m.gic is not None or m.config.cpu is not CpuKind.MODEL:  # a UART some guest code can drive
            state["uart"] = m.uart.save_state()
        return state

    def _guest(self) -> dict[str, Any]:
        m = self.machine
        if m.config.cpu is not CpuKind.MODEL:
            return {"kind": m.config.cpu.value}
        program = m.model_program
        if program is None:
            return {"kind": "none"}
        name = getattr(program, "resident_name", None)
        if name is not None:
            return {"kind": "resident", "program": name, "options": program.resident_options()}  # type: ignore[attr-defined]
        if self.handover is None:
            raise MigrationError(f"{m.config.name}: a model guest ({type(program).__name__}) keeps its "
                                 "state in Python objects; migrate it in-process with a ModelHandover")
        return {"kind": "handover", "token": self.handover.deposit(m)}


class Receiver:
    """The destination side: accepts the parts of one stream in order, restores on the final one.

    A part must be of this stream (the nonce of part 0), the next one (its index), chained to the
    part before (its `previous` digest) and, if final, seal the number of parts received; its META
    section must describe the same machine. Refusals are MigrationErrors naming the part (by its
    place in the stream as received), the section and the field. A refused stream is over: its
    buffers are released and any further part is refused, as is a part after the final one.

    `downtime_ns`: how long the guest was stopped, when the caller knows it (hosts sharing a
    timeline, as in a simulation): the counters are moved on by it, so the guest's clock keeps
    real time. None: the counters resume where they stopped (the guest does not see the pause).

    `allow_frequency_change` False refuses a VM without LPT whose source host's counter ran at
    another frequency than this host's (its clock would run at the wrong rate here).
    """

    def __init__(self, kvm: Kvm, *, handover: ModelHandover | None = None, name: str | None = None,
                 cpus: CpuFactory | None = None, allow_frequency_change: bool = True) -> None:
        self.kvm = kvm
        self.handover = handover
        self.name = name
        self.allow_frequency_change = allow_frequency_change
        self.cpus = cpus  # the destination's CPU engines (default: the stream's kind), unless handed over
        self._first: dict[str, Any] | None = None
        self._memory: dict[int, memoryview] = {}
        self._received: dict[int, set[int]] = {}  # the pages each slot received
        self._next = 0
        self._nonce: bytes | None = None
        self._previous = CHAIN_START
        self._over: str | None = None  # why no part is accepted any more

    def feed(self, data: bytes | bytearray | memoryview, *, now_ns: int | None = None,
             downtime_ns: int | None = None) -> Machine | None:
        """Take one part; the restored (not yet running) Machine after the final one, else None."""
        if self._over is not None:
            raise MigrationError(f"part {self._next}: {self._over}")
        try:
            machine = self._feed(data, now_ns, downtime_ns)
        except BaseException:
            self._over = "the stream was already refused: a refused stream is not resumed"
            self._first, self._memory, self._received = None, {}, {}
            raise
        if machine is not None:
            self._over = f"the final part (part {self._next - 1}) sealed the stream: nothing may follow it"
            self._memory, self._received = {}, {}
        return machine

    def _feed(self, data: bytes | bytearray | memoryview, now_ns: int | None,
              downtime_ns: int | None) -> Machine | None:
        part = decode(data)
        self._check_binding(part)
        meta = part.meta
        if self._first is None:
            self._begin(meta)
        assert self._first is not None
        if meta.get("migration") != self._first["migration"]:
            raise MigrationError(f"part {self._next}, META section, field migration: part of migration "
                                 f"{meta.get('migration')!r} in migration {self._first['migration']!r}: "
                                 "mismatched stream")
        if meta.get("part") != self._next:
            raise MigrationError(f"part {self._next}, META section, field part: {meta.get('part')!r} in "
                                 "the part its BIND section places there")
        for key in ("config", "regions"):
            if meta.get(key) != self._first[key]:
                raise MigrationError(f"part {self._next}, META section, field {key}: the machine described "
                                     "changed between parts: mismatched stream")
        for (slot, index), _ in part.pages.items():
            mem = self._memory.get(slot)
            if mem is None or (index + 1) * PAGE_SIZE > len(mem):
                raise MigrationError(f"part {self._next}, PAGE section: page {index} of slot {slot} is outside "
                                     "the machine's memory")
        if part.final != (meta.get("final") is True):
            raise MigrationError(f"part {self._next}, META section, field final: {meta.get('final')!r}, but "
                                 f"the part {'has' if part.final else 'has no'} STAT section")
        if part.state is not None:
            check_state(self._next, part.state, self._first["config"]["vcpus"], _LAST)
        for (slot, index), page in part.pages.items():
            self._memory[slot][index * PAGE_SIZE:(index + 1) * PAGE_SIZE] = page
            self._received.setdefault(slot, set()).add(index)
        assert part.binding is not None
        self._nonce = part.binding.nonce
        self._previous = part.digest
        self._next += 1
        if not part.final:
            return None
        assert part.state is not None
        host = self.kvm.host
        try:
            return restore_state(self.kvm, self._first, self._memory, part.state, handover=self.handover,
                                 name=self.name, now_ns=host.now_ns() if now_ns is None else now_ns,
                                 downtime_ns=downtime_ns, cpus=self.cpus, received=self._received,
                                 allow_frequency_change=self.allow_frequency_change)
        except MigrationError as err:
            raise MigrationError(f"part {self._next - 1}, {err}") from None

    def _check_binding(self, part: Part) -> None:
        """The part belongs to this stream, at this place, after the part before it."""
        b = part.binding
        assert b is not None  # decode refuses an unbound part
        n = self._next
        f = Fields(n, "BIND")
        if self._nonce is None:
            if b.nonce == bytes(NONCE_SIZE):
                raise f.error("nonce", "all zero: the part is not bound to a migration")
        elif b.nonce != self._nonce:
            raise f.error("nonce", "not this stream's nonce: a part of another migration (spliced stream)")
        if b.index != n:
            raise f.error("index", f"{b.index}, expected {n}: " + (
                f"the stream starts at part {b.index}, not 0: truncated stream" if n == 0 else
                "parts out of order, repeated or missing"))
        if b.previous != self._previous:
            raise f.error("previous", "not the chain's start value: the stream does not begin here" if n == 0 else
                          f"not the checksum of part {n - 1}: broken chain (a part altered, dropped or spliced in)")
        if part.final and b.count != n + 1:
            raise f.error("count", f"the final part seals {b.count} parts, {n + 1} were received")
        if not part.final and b.count != 0:
            raise f.error("count", f"{b.count} in a part that is not final (no STAT section)")

    def _begin(self, meta: dict[str, Any]) -> None:
        regions = check_meta(meta)
        try:
            # as the destination's own guest memory: pages cost memory only once received
            memory = {slot: guest_memory(size) for slot, _, size in regions}
        except (MemoryError, OSError):
            raise MigrationError(f"part 0, META section, field config.memory_mib: {meta['config']['memory_mib']} "
                                 "MiB cannot be allocated here") from None
        self._first = meta
        self._memory = memory


def _config_from_json(c: dict[str, Any], name: str | None = None) -> MachineConfig:
    ips = c.get("instructions_per_sec")
    return MachineConfig(name or c["name"], vcpus=int(c["vcpus"]), memory_mib=int(c["memory_mib"]),
                         pvtime=False, quirks=Quirk(int(c["quirks"])), layout=Layout(**c["layout"]),
                         cpu=CpuKind(c.get("cpu", CpuKind.MODEL.value)), instructions_per_sec=None if ips is None else int(ips),
                         vgic=bool(c.get("vgic", False)))


def restore_state(kvm: Kvm, meta: dict[str, Any], memory: dict[int, memoryview], state: dict[str, Any], *,
                  handover: ModelHandover | None, name: str | None, now_ns: int,
                  downtime_ns: int | None, cpus: CpuFactory | None = None,
                  received: dict[int, set[int]] | None = None, allow_frequency_change: bool = True) -> Machine:
    """Build the destination machine from a complete stream; MigrationError if it cannot be.

    `cpus` makes the destination's CPU engines (default: those of the stream's CPU kind); a
    handed-over model guest brings its own. `received` lists the pages each slot received: only
    those are copied into the machine (the others are zero on both sides), so restoring a large,
    mostly unused VM touches only what the guest used. `allow_frequency_change`: as `Receiver`'s."""
    try:
        if not allow_frequency_change:
            _check_frequency(kvm, state)
        return _restore(kvm, meta, memory, state, handover, name, now_ns, downtime_ns, cpus, received)
    except MigrationError as err:
        raise MigrationError(f"STAT section: {err}") from None
    except KvmError as err:
        raise MigrationError(f"STAT section: destination refused the state: {err}") from None
    except (LookupError, TypeError, ValueError, ArithmeticError, AttributeError, MemoryError) as err:
        raise MigrationError(f"STAT section: bad state ({type(err).__name__}: {err})") from None


def _check_frequency(kvm: Kvm, state: dict[str, Any]) -> None:
    """Refuse a VM without LPT from a host whose counter ran at another frequency: nothing would
    rescale its counter, so its clock would run at the wrong rate here."""
    old_hz, new_hz = int(state["native_hz"]), kvm.host.counter_hz
    if state["lpt"] is None and old_hz != new_hz:
        raise MigrationError(f"field native_hz: the VM has no LPT and its source host's counter ran at {old_hz} Hz, "
                             f"this host's at {new_hz} Hz: its clock would run at the wrong rate here "
                             "(frequency changes are not allowed)")


def _restore(kvm: Kvm, meta: dict[str, Any], memory: dict[int, memoryview], state: dict[str, Any],
             handover: ModelHandover | None, name: str | None, now_ns: int, downtime_ns: int | None,
             cpus: CpuFactory | None, received: dict[int, set[int]] | None) -> Machine:
    config = _config_from_json(meta["config"], name)
    old_hz = int(state["native_hz"])
    guest = state["guest"]
    vcpus = state["vcpus"]
    if len(vcpus) != config.vcpus:
        raise MigrationError(f"STAT lists {len(vcpus)} vCPUs, the machine has {config.vcpus}")
    # Refuse what cannot work before building anything.
    if any(v["steal_ipa"] is not None for v in vcpus) and not kvm.check_extension(KVM_CAP_STEAL_TIME):
        raise MigrationError(f"destination host {kvm.host.name} does not support stolen time "
                             "(KVM_CAP_STEAL_TIME is 0) and the VM uses it: mismatched host")
    lpt = state["lpt"]
    if lpt is not None:
        _check_lpt_record(memory, meta, int(lpt["ipa"]), int(lpt["pv_hz"]))
    kind = guest["kind"]
    if kind == "handover" and (handover is None or not handover.has(guest["token"])):
        raise MigrationError(f"the stream hands a model guest over in-process (token {guest['token']!r}), "
                             "and no such hand-over is here: model programs are Python objects; migrate "
                             "between processes with a resident program or an ELF guest")
    if kind == "resident" and guest["program"] not in RESIDENT_PROGRAMS:
        raise MigrationError(f"unknown resident model program {guest['program']!r}")
    if kind not in ("handover", "resident", "none", *(k.value for k in CpuKind)):
        raise MigrationError(f"guest kind {kind!r} cannot be restored by this VMM")
    if (kind == CpuKind.UNICORN.value) != (config.cpu is CpuKind.UNICORN):
        raise MigrationError(f"guest kind {kind!r} on a {config.cpu.value!r} CPU: mismatched stream")
    program: ModelProgram | None = None
    if kind == "handover":  # the VM is created on the source's model CPUs: the program goes on
        assert handover is not None
        handed, program = handover.take(guest["token"])
        cpus = handed.__getitem__
    machine = Machine(kvm, config, cpus=cpus)
    try:
        _fill(machine, meta, memory, state, old_hz, now_ns, downtime_ns, received)
        if kind == "handover":
            machine.model_program = program
        elif kind == "resident":
            machine.load_model_guest(RESIDENT_PROGRAMS[guest["program"]](guest["options"]))
    except BaseException:
        machine.vm.close()  # whatever refused it, the half-built VM goes
        raise
    return machine


def _check_lpt_record(memory: dict[int, memoryview], meta: dict[str, Any], ipa: int, pv_hz: int) -> None:
    for slot, gpa, size in meta["regions"]:
        if gpa <= ipa and ipa + LPT_RECORD_SIZE <= gpa + size:
            record = LptRecord.unpack(bytes(memory[slot][ipa - gpa:ipa - gpa + LPT_RECORD_SIZE]))
            if record.sequence_number != 0 and record.pv_freq != pv_hz:
                raise MigrationError(f"LPT record at {ipa:#x} says pv_freq {record.pv_freq} Hz, the "
                                     f"stream configures {pv_hz} Hz: mismatched stream")
            return
    raise MigrationError(f"the LPT IPA {ipa:#x} is not in the migrated memory")


def _copy_pages(dst: bytearray | memoryview, src: memoryview, pages: set[int] | None) -> None:
    """Copy `src` into `dst`: all of it, or only `pages` (the rest is zero in both)."""
    if pages is None:
        dst[:] = src
        return
    for index in sorted(pages):
        dst[index * PAGE_SIZE:(index + 1) * PAGE_SIZE] = src[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]


def _fill(machine: Machine, meta: dict[str, Any], memory: dict[int, memoryview], state: dict[str, Any],
          old_hz: int, now_ns: int, downtime_ns: int | None, received: dict[int, set[int]] | None) -> None:
    for slot, _, size in meta["regions"]:
        if slot == Machine.RAM_SLOT:
            if size != len(machine.ram):
                raise MigrationError(f"RAM is {size} bytes in the stream, {len(machine.ram)} in the config")
            _copy_pages(machine.ram, memory[slot], None if received is None else received.get(slot, set()))
        elif slot == Machine.PVTIME_SLOT:
            region = machine.add_pvtime_region()
            if size != len(region):
                raise MigrationError(f"PV-time region is {size} bytes in the stream, {len(region)} here")
            _copy_pages(region, memory[slot], None if received is None else received.get(slot, set()))
        else:
            raise MigrationError(f"memory slot {slot} is not one this VMM lays out")
    vcpus = state["vcpus"]
    if any(v["steal_ipa"] is not None for v in vcpus):
        machine.config = dataclasses.replace(machine.config, pvtime=True)
    for vcpu, v in zip(machine.vcpus, vcpus):
        if v["steal_ipa"] is not None:
            vcpu.set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, int(v["steal_ipa"]))
    lpt = state["lpt"]
    if lpt is not None:
        machine.configure_lpt(int(lpt["pv_hz"]), int(lpt["ipa"]))
        machine.config = dataclasses.replace(machine.config, lpt_pv_hz=int(lpt["pv_hz"]))
    extra = 0 if downtime_ns is None else max(0, downtime_ns) * old_hz // NSEC_PER_SEC
    with machine.kvm.host.control_call(now_ns):
        machine.vcpus[0].set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, int(state["std_hyp_bmap"]))
        for vcpu, v in zip(machine.vcpus, vcpus):
            vcpu.init(power_off=bool(v["powered_off"]))
            regs = {int(k, 16): int(val) for k, val in v["regs"].items()}
            for reg, val in regs.items():  # as listed (KVM_GET_REG_LIST order), timers last
                if reg not in _LAST:
                    vcpu.set_one_reg(reg, val)
            for reg in COUNTER_REGS:  # before the timers: TVAL-free CVALs are absolute anyway
                vcpu.set_one_reg(reg, (regs[reg] + extra) & U64)
            for reg in TIMER_REGS:
                vcpu.set_one_reg(reg, regs[reg])
    if ("vgic" in state) != (machine.gic is not None):
        raise MigrationError("the stream's vGIC state and its config.vgic disagree: mismatched stream")
    if machine.gic is not None:
        gic_state.restore(machine.gic, gic_state.from_json(state["vgic"]))
    if "uart" in state:  # after the vGIC: the UART drives its interrupt line as its registers say
        machine.uart.load_state(state["uart"])
        if machine.coalesced is not None:
            machine.coalesced.sync()  # the zone follows the restored interrupt mask


def save(machine: Machine, *, now_ns: int, handover: ModelHandover | None = None,
         migration_id: str | None = None) -> bytes:
    """A one-part snapshot of a paused (or never run) VM: memory and state in one stream."""
    sender = Sender(machine, migration_id or f"{machine.vm.name}@{now_ns}", handover=handover)
    return sender.final(now_ns)


def restore(kvm: Kvm, stream: bytes, *, handover: ModelHandover | None = None, name: str | None = None,
            now_ns: int | None = None, downtime_ns: int | None = None, cpus: CpuFactory | None = None) -> Machine:
    """Restore a one-part stream (from :func:`save`) on `kvm`'s host."""
    return restore_parts(kvm, [stream], handover=handover, name=name, now_ns=now_ns, downtime_ns=downtime_ns,
                         cpus=cpus)


def restore_parts(kvm: Kvm, parts: Iterable[bytes], *, handover: ModelHandover | None = None,
                  name: str | None = None, now_ns: int | None = None, downtime_ns: int | None = None,
                  cpus: CpuFactory | None = None) -> Machine:
    """Restore a whole stream, given as its parts (e.g. read back from files), on `kvm`'s host.

    MigrationError if a part is refused, if the parts end before the final one, or if any part
    follows the final one; in each case no VM is left on `kvm`."""
    machine = _deliver(Receiver(kvm, handover=handover, name=name, cpus=cpus), parts, now_ns, downtime_ns,
                       complete=True)
    assert machine is not None  # complete=True: else MigrationError
    return machine


def _deliver(receiver: Receiver, parts: Iterable[bytes], now_ns: int | None, downtime_ns: int | None, *,
             complete: bool) -> Machine | None:
    """Feed `parts` to `receiver`. With `complete`, they must end with the final part; without,
    they must not hold it. Whatever is refused, a machine restored meanwhile is closed."""
    machine: Machine | None = None
    try:
        for data in parts:
            restored = receiver.feed(data, now_ns=now_ns, downtime_ns=downtime_ns)
            if restored is not None:
                machine = restored
        if complete and machine is None:
            raise MigrationError("the stream ended before its final part: truncated stream")
        if not complete and machine is not None:
            raise MigrationError("a final part arrived during pre-copy, before the source was paused")
    except BaseException:
        if machine is not None:
            machine.vm.close()
        raise
    return machine


class LiveMigration:
    """Pre-copy live migration of one VM to another host, as steps a simulation drives in time.

    1. :meth:`precopy` while the source runs, as long as :meth:`want_more_rounds`;
    2. :meth:`stop_and_copy` pauses the source and makes the final part (MigrationError, with
       the source resumed, if it stopped meanwhile);
    3. :meth:`complete` restores it at the destination after the transfer time. On failure the
       source is resumed (the caller wakes its threads) and MigrationError is raised; on success
       the source is stopped for good.

    Each step returns the bytes it put on the wire, as the link charges them
    (:func:`~pvtime.vmm.migration_stream.charged_bytes`); the driver turns them into virtual time
    with its link's bandwidth (:meth:`transfer_ns`).

    `link` says what the destination receives of each part sent (default: that part, once). A
    faulty link may alter, drop, repeat, hold back or swap in parts: the receiver refuses what is
    not the sender's stream, the step raises MigrationError, and the source runs on (resumed if
    it was paused; dirty logging off). A refusal in a pre-copy round ends the migration too.
    """

    def __init__(self, source: Machine, dest: Kvm, *, bandwidth_bytes_per_s: int = 1_250_000_000,
                 max_rounds: int = 5, converge_pages: int = 64, handover: ModelHandover | None = None,
                 count_downtime: bool = True, migration_id: str | None = None, link: Link | None = None) -> None:
        if bandwidth_bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth_bytes_per_s}")
        self.source = source
        self.dest = dest
        self.bandwidth = bandwidth_bytes_per_s
        self.max_rounds = max_rounds
        self.converge_pages = converge_pages
        self.count_downtime = count_downtime
        self.handover = handover or ModelHandover()
        mid = migration_id or f"{source.vm.name}:{source.kvm.host.name}->{dest.host.name}"
        self.sender = Sender(source, mid, handover=self.handover)
        self.receiver = Receiver(dest, handover=self.handover, name=source.config.name)
        self.result: Machine | None = None
        self._final: bytes | None = None
        self._link: Link = link or (lambda data: (data,))

    @property
    def stats(self) -> MigrationStats:
        """Pages, bytes, rounds and downtime so far."""
        return self.sender.stats

    def transfer_ns(self, nbytes: int) -> int:
        """Virtual time to send `nbytes` over the link."""
        return -(-nbytes * NSEC_PER_SEC // self.bandwidth)

    def precopy(self) -> int:
        """One pre-copy round (the source keeps running); bytes sent."""
        data = self.sender.precopy()
        try:
            _deliver(self.receiver, self._link(data), None, None, complete=False)
        except MigrationError:
            self.sender.stop_logging()
            raise
        return charged_bytes(data)

    def want_more_rounds(self) -> bool:
        """Another round is worth it: below the round limit and the last round was not small."""
        pages = self.stats.pages
        return self.stats.rounds < self.max_rounds and (not pages or pages[-1] > self.converge_pages)

    def stop_and_copy(self, now_ns: int, last_guest_ns: int | None = None) -> int:
        """Pause the source and make the final part (counters read when the guest last ran)."""
        self.source.pause()
        at = max(now_ns, last_guest_ns or 0)
        try:
            self._final = self.sender.final(at)
        except MigrationError:
            self.sender.stop_logging()
            self.source.resume()
            raise
        return charged_bytes(self._final)

    def complete(self, now_ns: int) -> Machine:
        """Restore at the destination at `now_ns`; on failure the source is resumed."""
        if self._final is None:
            raise MigrationError("complete() before stop_and_copy()")
        paused = self.stats.paused_at_ns
        assert paused is not None
        downtime = max(0, now_ns - paused) if self.count_downtime else None
        try:
            machine = _deliver(self.receiver, self._link(self._final), now_ns, downtime, complete=True)
        except MigrationError:
            self.sender.stop_logging()
            self.source.resume()
            raise
        assert machine is not None
        self.stats.resumed_at_ns = now_ns
        self.source.stop(StopReason.migrated(self.dest.host.name))
        self.result = machine
        return machine

