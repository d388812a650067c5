"""The model CPU backend: runs a Python model guest program on one vCPU.

Guest code is a generator of `Compute`/`WaitForInterrupt` actions; hypercalls, memory and system
register accesses are synchronous calls that trap to the hypervisor, as on a real CPU. Time passes
only through `Compute` and is bounded by the slice's deadline; a timer interrupt is taken
between actions, or in the middle of a `Compute` at the instant it asserts. PSCI CPU_SUSPEND takes
effect at the program's next action: the call returns its x0 at once, and the action yielded after
it runs only when the vCPU resumes. A call that powers the vCPU off (PSCI CPU_OFF, and SYSTEM_OFF,
SYSTEM_RESET or SYSTEM_RESET2 when they succeed) does not return, as on a CPU: the program ends
there, as if its main had returned, and none of its code after the call runs.
"""

from __future__ import annotations

from pvtime.abi.uapi import EL1_SYSREG_RESET
from pvtime.abi.widths import U64
from pvtime.abi.sysregs import SysReg
from pvtime.cpu.backend import Clock, Conduit, GuestFault, Stop, StopKind, VcpuTraps
from pvtime.guest.machine import (
    Compute, CpuProgram, GuestPanic, ModelProgram, MmioRead, MmioWrite, WaitForInterrupt,
)

# An IRQ handler that never acknowledges its interrupt would spin forever; a real CPU would too,
# but a simulator must stop it and say why.
_MAX_IRQS_WITHOUT_PROGRESS = 1000


class GuestView:
    """The `GuestCpu` a program sees: every access goes through the hypervisor's traps."""

    def __init__(self, traps: VcpuTraps) -> None:
        self._traps = traps

    def retarget(self, traps: VcpuTraps) -> None:
        """Trap to another vCPU's hypervisor side: the program keeps this view across a handover."""
        self._traps = traps

    def _call(self, conduit: Conduit, imm: int, x0: int, x1: int, x2: int, x3: int) -> tuple[int, int, int, int]:
        regs = [x0 & U64, x1 & U64, x2 & U64, x3 & U64]
        self._traps.hypercall(regs, conduit, imm)
        return regs[0], regs[1], regs[2], regs[3]

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0) -> tuple[int, int, int, int]:
        """HVC #imm: the SMCCC dispatch; x0..x3 after the call."""
        return self._call(Conduit.HVC, imm, x0, x1, x2, x3)

    def smc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0, *, imm: int = 0) -> tuple[int, int, int, int]:
        """SMC #imm: the SMCCC dispatch (a non-zero immediate answers ~0); x0..x3 after the call."""
        return self._call(Conduit.SMC, imm, x0, x1, x2, x3)

    def mrs(self, reg: SysReg) -> int:
        """A trapped system-register read (GuestFault for one the vCPU lacks)."""
        return self._traps.read_sysreg(reg)

    def msr(self, reg: SysReg, value: int) -> None:
        """A trapped system-register write."""
        self._traps.write_sysreg(reg, value & U64)

    def read(self, addr: int, size: int) -> bytes:
        """Guest RAM (the MMU is off); an unbacked address is a fault that stops the vCPU."""
        data = self._traps.read_memory(addr, size)
        if data is None:
            raise GuestFault(f"load of {size} bytes from unmapped address {addr:#x}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Store to guest RAM; unbacked or read-only memory is a fault (devices: yield MmioWrite)."""
        if not self._traps.write_memory(addr, data):
            raise GuestFault(f"store of {len(data)} bytes to unmapped or read-only address {addr:#x}")

    def mmio_read(self, addr: int, size: int) -> bytes:
        """A load from a device the hypervisor emulates in the kernel (the vGIC's registers); a
        device the VMM emulates needs an exit (`yield MmioRead`), so here it is a fault."""
        data = self._traps.mmio_read(addr, size)
        if data is None:
            raise GuestFault(f"load of {size} bytes from {addr:#x}: no in-kernel device there")
        return data

    def mmio_write(self, addr: int, data: bytes) -> None:
        """A store to a device the hypervisor emulates in the kernel; elsewhere a fault."""
        if not self._traps.mmio_write(addr, data):
            raise GuestFault(f"store of {len(data)} bytes to {addr:#x}: no in-kernel device there")

    def load64(self, addr: int) -> int:
        """One aligned, single-copy-atomic 64-bit little-endian load."""
        if addr % 8:
            raise GuestFault(f"unaligned 64-bit load from {addr:#x}")
        data = self._traps.read_memory(addr, 8)
        if data is None:
            raise GuestFault(f"load of 8 bytes from unmapped address {addr:#x}")
        return int.from_bytes(data, "little")


class _PoweredOff(BaseException):
    """Unwinds a model program from a call that powered its vCPU off (a BaseException, so that the
    program's own `except Exception` cannot resume it)."""


class _ProgramView(GuestView):
    """The view a `ModelCpu` runs its program with: a call that powers the vCPU off does not return."""

    def _call(self, conduit: Conduit, imm: int, x0: int, x1: int, x2: int, x3: int) -> tuple[int, int, int, int]:
        result = super()._call(conduit, imm, x0, x1, x2, x3)
        if self._traps.powered_off:
            raise _PoweredOff
        return result


class ModelCpu:
    """Executes a `ModelProgram` for one vCPU, resumable across slices.

    Between two actions of the program the CPU looks for an exit request and a pending interrupt.
    After a piece of work that ended before any timer reached its compare value, it does not look
    again: nothing can have changed (no guest code ran, and a timer's line rises only at its
    compare value). `step_by_step` (internal, for tests) makes it look after every piece of work
    anyway; results are identical either way (tests/cpu/test_model_step_by_step.py).
    """

    step_by_step = False

    def __init__(self, index: int) -> None:
        self.index = index
        # Register files for ONE_REG (a VMM saves and restores them); model code ignores them.
        self.core_regs: dict[int, int] = {}
        self.sys_regs: dict[int, int] = dict(EL1_SYSREG_RESET)
        self._program: ModelProgram | None = None
        self._code: CpuProgram | None = None
        self._compute_left = 0
        self._waiting = False
        self._done = False
        self._mmio_read: MmioRead | None = None  # a read exit the VMM has not completed yet
        self._send: bytes | None = None  # what the next step of the program receives
        self._view: GuestView | None = None

    def load(self, program: ModelProgram) -> None:
        """Install the guest program (the model's equivalent of placing code in RAM); restarts the vCPU."""
        self._program = program
        self._code = None
        self._compute_left = 0
        self._waiting = False
        self._done = False
        self._mmio_read = None
        self._send = None

    def reset(self) -> None:
        """The vCPU reset: the register files to their reset values (the program is kept)."""
        self.core_regs.clear()
        self.sys_regs.update(EL1_SYSREG_RESET)

    def complete_pending(self) -> None:
        """Nothing to apply now: a completed read reaches the program when it next runs."""

    def complete_mmio(self, data: bytes) -> None:
        """The VMM's data for the pending MMIO read exit (ValueError if none, or of another size)."""
        if self._mmio_read is None:
            raise ValueError(f"vCPU {self.index}: no MMIO read is pending")
        if len(data) != self._mmio_read.size:
            raise ValueError(f"vCPU {self.index}: MMIO read of {self._mmio_read.size} bytes "
                             f"completed with {len(data)}")
        self._mmio_read, self._send = None, bytes(data)

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        """Run until the deadline, a halt, an exit request, the end of the program or a fault."""
        if self._program is None:
            return Stop(StopKind.FAULT, reason="no guest program loaded on this vCPU")
        if self._done:
            return _POWER_OFF
        if self._mmio_read is not None:
            return Stop(StopKind.FAULT, reason=f"MMIO read of {self._mmio_read.addr:#x} was never "
                                                "completed by the VMM")
        # One view for the program's lifetime, pointed at whichever vCPU executes this CPU now:
        # the program's generators keep the view they started with, and a model CPU handed over
        # in an in-process migration (pvtime.vmm.migration) continues on another vCPU.
        view = self._view
        if view is None:
            view = self._view = _ProgramView(traps)
        else:
            view.retarget(traps)
        try:
            return self._run(view, traps, clock)
        except GuestFault as fault:
            self._done = True
            return Stop(StopKind.FAULT, pc=fault.pc, instruction=fault.instruction, reason=fault.reason)
        except GuestPanic as panic:
            self._done = True
            return Stop(StopKind.FAULT, reason=f"guest kernel panic: {panic}")
        except _PoweredOff:
            self._done = True
            return _EXIT

    def _run(self, view: GuestView, traps: VcpuTraps, clock: Clock) -> Stop:
        program = self._program
        assert program is not None
        code = self._code
        if code is None:
            code = self._code = program.main(view, self.index)
        exit_requested, irq_pending, next_irq_ns = traps.exit_requested, traps.irq_pending, traps.next_irq_ns
        irqs_here, irq_time = 0, -1
        while True:
            if exit_requested():
                return _EXIT
            if irq_pending():
                irqs_here = irqs_here + 1 if clock.now_ns == irq_time else 1
                irq_time = clock.now_ns
                if irqs_here > _MAX_IRQS_WITHOUT_PROGRESS:
                    raise GuestFault("interrupt storm: the IRQ handler never acknowledges the timer")
                self._waiting = False
                program.irq(view, self.index)
                continue
            now, deadline = clock.now_ns, clock.deadline_ns
            if now >= deadline:
                return _DEADLINE
            if self._waiting:
                return _HALT
            left = self._compute_left
            if left > 0:
                # Execute pending work up to the next interrupt or the deadline.
                fire = next_irq_ns()
                until = fire if fire is not None and now < fire < deadline else deadline
                step = left if left < until - now else until - now
                clock.advance(step)
                self._compute_left = left = left - step
                now = clock.now_ns
                if fire is not None and now >= fire or self.step_by_step:
                    continue  # a timer asserts now: look at the interrupt first
                # No interrupt was pending at the start, no guest code ran since and no timer has
                # reached its compare value: none is pending now, and no trap asked to exit.
                if now >= deadline:
                    return _DEADLINE
                if left > 0:
                    continue
            try:
                action = code.send(self._send)
                self._send = None
            except StopIteration:
                self._done = True
                return _POWER_OFF
            if isinstance(action, Compute):
                if action.ns < 0:
                    raise GuestFault(f"Compute({action.ns}): negative time")
                self._compute_left = action.ns
            elif isinstance(action, WaitForInterrupt):
                self._waiting = True
            elif isinstance(action, MmioWrite):
                return Stop(StopKind.MMIO, mmio_addr=action.addr, mmio_len=len(action.data),
                            mmio_data=bytes(action.data), mmio_write=True)
            elif isinstance(action, MmioRead):
                self._mmio_read = action
                return Stop(StopKind.MMIO, mmio_addr=action.addr, mmio_len=action.size)
            else:
                raise GuestFault(f"unknown action {action!r} from the guest program")


# The stops that carry nothing but their kind (a Stop is immutable: one of each serves every run).
_EXIT = Stop(StopKind.EXIT)
_DEADLINE = Stop(StopKind.DEADLINE)
_HALT = Stop(StopKind.HALT)
_POWER_OFF = Stop(StopKind.POWER_OFF)
