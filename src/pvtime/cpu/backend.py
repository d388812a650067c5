"""The contract between a CPU backend and the hypervisor that traps for it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from collections.abc import Callable, MutableMapping, Sequence
from typing import Protocol

from pvtime.abi.sysregs import SysReg


class Conduit(Enum):
    """How an SMCCC call reached the hypervisor."""

    HVC = "hvc"
    SMC = "smc"


class GuestFault(Exception):
    """The guest did something its vCPU cannot survive (unmapped access, undefined register...)."""

    def __init__(self, reason: str, *, pc: int = 0, instruction: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.pc = pc
        self.instruction = instruction


class Clock(Protocol):
    """The CPU time a backend may use: a cursor in virtual ns that it advances, up to a deadline."""

    now_ns: int
    deadline_ns: int

    def advance(self, ns: int) -> None:
        """Consume CPU time (clamped at the deadline)."""
        ...


class GuestRegion(Protocol):
    """A memslot as a CPU backend maps it: guest-physical range, host buffer, read-only flag."""

    guest_phys_addr: int
    memory_size: int
    buffer: memoryview

    @property
    def readonly(self) -> bool:
        """Guest writes to a read-only region are MMIO exits."""
        ...

    # Dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES): a backend whose guest stores bypass the
    # hypervisor write-protects a logging region, calls `mark_dirty` at the first store to each
    # page, and write-protects the region again whenever `log_generation` changes.
    log_generation: int

    @property
    def dirty_logging(self) -> bool:
        """Are writes to this region being logged?"""
        ...

    def mark_dirty(self, offset: int, size: int = 1) -> None:
        """Record a guest store to [offset, offset+size) of the region."""
        ...


class VcpuTraps(Protocol):
    """What the hypervisor handles on behalf of a running vCPU."""

    # Has a trap powered the vCPU off (PSCI CPU_OFF, a system event)? Its code then runs no further.
    powered_off: bool

    def hypercall(self, regs: list[int], conduit: Conduit, imm: int) -> None:
        """SMCCC/PSCI call: `regs` holds x0..x3 on entry and the results on return."""
        ...

    def read_sysreg(self, reg: SysReg) -> int:
        """A trapped MRS; raises GuestFault for a register the vCPU does not have."""
        ...

    def write_sysreg(self, reg: SysReg, value: int) -> None:
        """A trapped MSR; raises GuestFault for a register the vCPU does not have."""
        ...

    def read_memory(self, gpa: int, size: int) -> bytes | None:
        """Guest RAM contents, or None where no memslot backs the range."""
        ...

    def write_memory(self, gpa: int, data: bytes) -> bool:
        """Store to guest RAM; False where no writable memslot backs the range."""
        ...

    def mmio_read(self, gpa: int, size: int) -> bytes | None:
        """A load from a device the hypervisor emulates itself (the vGIC); None when none is
        there (then the access is an MMIO exit to the VMM)."""
        ...

    def mmio_write(self, gpa: int, data: bytes) -> bool:
        """A store to a device the hypervisor emulates itself; False when none is there."""
        ...

    def irq_pending(self) -> bool:
        """Is the vCPU's IRQ input asserted now (a timer's level, or the vGIC's signal)?"""
        ...

    def next_irq_ns(self) -> int | None:
        """The virtual time at which an interrupt will next assert, if one is armed."""
        ...

    def exit_requested(self) -> bool:
        """Has a trap asked to leave to the VMM (for example PSCI SYSTEM_OFF)?"""
        ...

    def memslots(self) -> Sequence[GuestRegion]:
        """The VM's memslots now (a machine-code backend maps them; the buffers are shared)."""
        ...


class StopKind(Enum):
    """Why a backend returned."""

    DEADLINE = "deadline"  # the slice's time is used up
    HALT = "halt"  # WFI/WFE with no interrupt pending
    EXIT = "exit"  # a trap requested an exit to the VMM
    MMIO = "mmio"  # an access to an address no memslot backs (or a write to a read-only slot)
    FAULT = "fault"  # the vCPU cannot go on
    POWER_OFF = "power_off"  # the vCPU's code ended (the model's main returned)
    SEMIHOSTING = "semihosting"  # HLT #0xF000: a semihosting call for the VMM (PC already past it)


@dataclass(frozen=True)
class Stop:
    """A backend's report of why it stopped executing."""

    kind: StopKind
    pc: int = 0
    instruction: str = ""
    reason: str = ""
    mmio_addr: int = 0
    mmio_len: int = 0
    mmio_data: bytes = b""
    mmio_write: bool = False
    semihost_op: int = 0  # w0 of a semihosting call
    semihost_param: int = 0  # x1 of a semihosting call


class CpuBackend(Protocol):
    """What the hypervisor needs from the engine that executes one vCPU's guest code."""

    index: int

    # ONE_REG registers by KVM id: the core registers, and the EL1 system registers. An unknown
    # id raises KeyError, a value the register cannot hold ValueError (KVM: ENOENT, EINVAL).
    @property
    def core_regs(self) -> MutableMapping[int, int]:
        """The KVM_REG_ARM_CORE registers."""
        ...

    @property
    def sys_regs(self) -> MutableMapping[int, int]:
        """The EL1 system registers (`EL1_SYSREG_IDS`)."""
        ...

    def reset(self) -> None:
        """The vCPU reset (KVM_ARM_VCPU_INIT, PSCI CPU_ON): every register to its reset value."""
        ...

    def complete_pending(self) -> None:
        """Apply a completed MMIO access without executing anything (KVM_RUN with immediate_exit)."""
        ...

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        """Run guest code until something the hypervisor or the VMM must handle."""
        ...

    def complete_mmio(self, data: bytes) -> None:
        """The data of the last MMIO read exit; applied (and the PC moved on) at the next execute().
        ValueError when no read exit is pending (KVM: EINVAL)."""
        ...


def in_kernel_access(traps: VcpuTraps, stop: Stop) -> bytes | None:
    """io_mem_abort's in-kernel half for an MMIO stop: the devices KVM emulates itself (the vGIC,
    coalesced-MMIO zones: kvm_io_bus) serve the access or decline it. A served load's data, b""
    for a served store, None when declined (the access exits to the VMM)."""
    if stop.mmio_write:
        return b"" if traps.mmio_write(stop.mmio_addr, stop.mmio_data) else None
    return traps.mmio_read(stop.mmio_addr, stop.mmio_len)


# What a VM is created with: makes the engine for vCPU `index` (`pvtime.cpu.create_cpu` makes the
# standard ones). The VMM keeps the engines it makes, to install a model guest program on them.
CpuFactory = Callable[[int], CpuBackend]
