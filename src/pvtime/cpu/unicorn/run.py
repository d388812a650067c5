"""The vCPU: its engine, `execute()` and its run loop, and the budget that turns code into time.

Each `execute()` runs the engine in steps bounded by the budget: the slice deadline or the next
timer event, whichever is first, so interrupts arrive on time and the same run gives the same
result. The budget is the only way the engine is stopped from outside a hook: never
`emu_start`'s timeout, whose stop comes from another thread at any point and corrupted guest
state. Between steps the loop takes an asserted, unmasked interrupt or a synchronous exception
(`exceptions`), serves what stopped the engine (`traps`, `memory`), and halts at a WFI with no
interrupt asserted.

While the line is asserted but masked, the engine runs one translation block at a time: QEMU ends
a block after every write to DAIF (`msr daifclr`, `msr daif`), so the interrupt is taken right
after the instruction that unmasks it, as the architecture requires. The block counter takes
these steps itself, checking PSTATE.I and the deadline between two blocks as this loop would
(`BlockCounter.arm_steps`), and ends them at the next timer rise too, which can change which
interrupt the vGIC signals: a burst of masked blocks is one engine run, stopped at the block
boundary where the loop's own checks would stop it, and each step counts as a poll. A guest that keeps IRQs
masked with the line asserted for more than `POLL_BLOCKS` blocks is then polled every
`POLL_INSNS` instructions instead (an unmask inside such a burst is seen at its end). A WFI starts
the one-block steps afresh: an idle loop (`wfi` with IRQs masked, which an asserted line
completes, then unmask, then mask again) must have its unmask seen, or it never takes the
interrupt that woke it.

Guest instructions advance virtual time at `instructions_per_sec`, counted per translation block
by the native `BlockCounter`. The engine stops after the block that reaches a deadline: the time of
the instructions past it is charged at the start of the next execute, so that where the host
splits the run never changes how much time the guest's instructions take.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc, UcError
from unicorn import arm64_const as A

from pvtime.abi.linux import NSEC_PER_SEC
from pvtime.abi.uapi import REG_PC
from pvtime.cpu.backend import Clock, Stop, StopKind, VcpuTraps, in_kernel_access
from pvtime.cpu.unicorn.exceptions import IRQ, SYNC, take_exception
from pvtime.cpu.unicorn.fast_traps import FastTraps
from pvtime.cpu.unicorn.memory import GuestMemory
from pvtime.cpu.unicorn.native import BlockCounter
from pvtime.cpu.unicorn.registers import PSTATE_I, CoreRegs, Registers, SysRegs
from pvtime.cpu.unicorn.traps import TrapHooks

DEFAULT_INSTRUCTIONS_PER_SEC = 1_000_000_000  # 1 instruction per virtual ns

# While the interrupt line is asserted but masked: run one block at a time for POLL_BLOCKS runs,
# then check PSTATE.I every POLL_INSNS instructions (see the module docstring).
POLL_INSNS = 4096
POLL_BLOCKS = 256

WFI = 0xD503_207F
_NEVER = 0xFFFF_FFFF_FFFF_FFFC  # `until` address for emu_start: never reached


class Budget:
    """One vCPU's instructions turned into virtual time, and the bound on each run of its engine."""

    def __init__(self, counter: BlockCounter, regs: Registers, instructions_per_sec: int) -> None:
        self.counter = counter
        self._regs = regs
        self.instructions_per_sec = instructions_per_sec
        # Instruction times used so far: instructions counted per translation block plus the
        # instruction times charged for trapped accesses.
        self.instructions = 0
        self.clock: Clock | None = None  # the slice being run, during an execute()
        self._accounted = 0  # counter bytes already turned into time
        self._time_rem = 0  # instructions * 1e9 not yet a whole ns
        self._debt_ns = 0  # time of instructions executed past a deadline, for the next slice
        self._polls = 0  # consecutive one-block runs with the interrupt asserted but masked
        self.fast: FastTraps | None = None  # told the state after every change (fast_traps)

    def begin(self, clock: Clock) -> None:
        """Start an execute() on `clock`: pay the debt first."""
        self.clock = clock
        if self._debt_ns:
            pay = min(self._debt_ns, clock.deadline_ns - clock.now_ns)
            clock.advance(pay)
            self._debt_ns -= pay
        self._accounted = self.counter.used

    def end(self) -> None:
        """End the execute(): account for what ran."""
        self.account()
        self.clock = None

    def settled(self) -> bool:
        """No time debt to pay and the deadline not reached: beginning a new execute() now would
        change nothing."""
        clock = self.clock
        return not self._debt_ns and clock is not None and clock.now_ns < clock.deadline_ns

    def woke(self) -> None:
        """A WFI completed: step one block at a time again while the line is masked."""
        self._polls = 0
        self.counter.take_steps()  # those were before the WFI

    def expired(self) -> bool:
        """Has the slice reached its deadline?"""
        return self.clock is not None and self.clock.now_ns >= self.clock.deadline_ns

    def charge(self, insns: int) -> None:
        """Count `insns` instruction times that the blocks do not (a trapped access)."""
        self.counter.charge(4 * insns)

    def publish(self) -> None:
        """Tell the fast traps the state as of the last accounting (and the deadline now)."""
        fast, clock = self.fast, self.clock
        if fast is not None and clock is not None:
            fast.publish_time(self._accounted, self._time_rem, clock.now_ns, clock.deadline_ns,
                              self.instructions_per_sec)

    def arm(self, traps: VcpuTraps, irq_pending: bool) -> None:
        """Let the engine run until the slice deadline or the next timer event, whichever is first."""
        self._arm(traps, irq_pending)
        self.publish()

    def _arm(self, traps: VcpuTraps, irq_pending: bool) -> None:
        clock = self.clock
        assert clock is not None
        now = clock.now_ns
        # The one-block steps the counter took since the last arm count as polls, as if this
        # method had armed each (`native.BlockCounter.arm_steps`).
        steps = self.counter.take_steps()
        if irq_pending:
            self._polls += steps
            if not self._regs.pstate() & PSTATE_I:
                self.counter.arm(0)
                return
            self._polls += 1
            insns = POLL_INSNS
        else:
            self._polls = 0
            insns = 1 << 40
        until = clock.deadline_ns
        fire = traps.next_irq_ns()
        if fire is not None and fire > now:
            until = min(until, fire)
        if irq_pending and self._polls <= POLL_BLOCKS:
            # Exactly one block, then one at a time while still masked and before `until`: a
            # timer's rise may change which interrupt the vGIC signals (the line may fall), and
            # the loop looks again there.
            self.counter.arm_steps(POLL_BLOCKS - self._polls, self._deadline_used(until))
            return
        # ceil: the engine must reach `until`, so that the event is due when it stops.
        need = -(-max(until - now, 0) * self.instructions_per_sec // NSEC_PER_SEC)
        self.counter.arm(4 * max(1, min(insns, need)))

    def _deadline_used(self, until: int) -> int:
        """The counter's `used` at which account() brings the clock to `until` (ns)."""
        clock = self.clock
        assert clock is not None
        left = until - clock.now_ns
        # The fewest instructions i with (i * 1e9 + time_rem) // ips >= left (none when left <= 0).
        need = max(0, -(-(left * self.instructions_per_sec - self._time_rem) // NSEC_PER_SEC))
        return self._accounted + 4 * need

    def account(self) -> None:
        """Turn the instructions executed since the last call into virtual time."""
        used = self.counter.used
        insns = (used - self._accounted) // 4
        self._accounted = used
        if insns <= 0 or self.clock is None:
            return
        self.instructions += insns
        total = insns * NSEC_PER_SEC + self._time_rem
        ns, self._time_rem = divmod(total, self.instructions_per_sec)
        over = ns - (self.clock.deadline_ns - self.clock.now_ns)
        if over > 0:
            self._debt_ns += over
        self.clock.advance(ns)


class UnicornCpu:
    """Executes one vCPU's AArch64 code in its own unicorn engine, resumable across slices."""

    def __init__(self, index: int, *, instructions_per_sec: int = DEFAULT_INSTRUCTIONS_PER_SEC,
                 native: bool | None = None) -> None:
        if instructions_per_sec <= 0:
            raise ValueError(f"instructions_per_sec must be positive, got {instructions_per_sec}")
        self.index = index
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A72)
        self._uc = uc
        self._regs = Registers(uc)
        self._memory = GuestMemory(uc, native=native)
        counter = BlockCounter(uc, step_while=(A.UC_ARM64_REG_PSTATE, PSTATE_I), native=native)
        self._budget = Budget(counter, self._regs, instructions_per_sec)
        self._hooks = TrapHooks(uc, self._regs, self._memory, self._budget, native=native)
        self.core_regs: MutableMapping[int, int] = CoreRegs(self)
        self.sys_regs: MutableMapping[int, int] = SysRegs(uc)
        self._fault: Stop | None = None  # the fault that stopped this vCPU for good
        self._halted = False
        self.reset()

    @property
    def instructions_per_sec(self) -> int:
        """The rate at which guest instructions advance virtual time."""
        return self._budget.instructions_per_sec

    @property
    def instructions(self) -> int:
        """Instruction times used so far (instructions executed plus trapped-access charges)."""
        return self._budget.instructions

    @property
    def fast_served(self) -> tuple[int, int]:
        """Counter reads and hypercalls served by the fast traps so far (`fast_traps`)."""
        fast = self._hooks.fast
        return fast.reads, fast.calls

    @property
    def native(self) -> bool:
        """Are the hooks (block counter, system-register filters) the native ones (else their
        Python twins)?"""
        return self._budget.counter.native and self._hooks.native and self._memory.native_faults

    # --- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """The vCPU-init state: all registers zero, EL1h, MMU off, DAIF masked, PC 0."""
        self._regs.reset()
        self._memory.abandon_mmio()
        self._fault = None
        self._halted = False
        self._hooks.exception = None

    def read_core(self, reg_id: int) -> int:
        """ONE_REG read of a core register by KVM id."""
        return self._regs.read_core(reg_id)

    def write_core(self, reg_id: int, value: int) -> None:
        """ONE_REG write of a core register by KVM id."""
        self._regs.write_core(reg_id, value)
        if reg_id == REG_PC:
            self._memory.abandon_mmio()  # a new PC abandons an unfinished MMIO access

    def complete_mmio(self, data: bytes) -> None:
        """The data of the last MMIO read exit (kvm_run.mmio.data), for the next execute()
        (ValueError if none is pending)."""
        self._memory.complete_mmio(data)

    def complete_pending(self) -> None:
        """KVM_RUN with immediate_exit: finish an MMIO access (a read with the data given, zeros if
        none, as KVM uses kvm_run.mmio.data) without executing; the state is then complete."""
        if self._memory.mmio_pending:
            self._memory.finish_mmio(self._regs)

    # --- execution ---------------------------------------------------------------------------

    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        """Run until the deadline, a halt, an exit request, an MMIO access, semihosting or a fault."""
        if self._fault is not None:
            return self._fault
        self._hooks.begin(traps)
        self._budget.begin(clock)
        self._memory.sync(traps.memslots())
        try:
            self.complete_pending()
            return self._run(traps, clock)
        finally:
            self._budget.end()
            self._hooks.end()
            self._hooks.publish_maintenance()

    def _in_kernel_mmio(self, traps: VcpuTraps, stop: Stop) -> bool:
        """io_mem_abort: an access the vGIC or a coalesced-MMIO zone serves completes here, and the
        engine goes on within this execute(); False when the access must leave it (the vCPU's
        KVM_RUN then asks the same devices, which decline again, and exits to the VMM). Doing it
        here saves ending and beginning an execute(), which, with no time debt to pay and no memslot
        change an in-kernel device could make, would change nothing."""
        data = in_kernel_access(traps, stop)
        if data is None:
            return False
        if not stop.mmio_write:
            self._memory.complete_mmio(data)
        self._memory.finish_mmio(self._regs)
        return True

    def _run(self, traps: VcpuTraps, clock: Clock) -> Stop:
        uc, regs, memory, hooks, budget = self._uc, self._regs, self._memory, self._hooks, self._budget
        while True:
            if traps.exit_requested():
                return Stop(StopKind.EXIT)
            pending = traps.irq_pending()
            if pending:
                self._halted = False  # WFI completes on an asserted interrupt, masked or not
                if not regs.pstate() & PSTATE_I:
                    self._fault = take_exception(regs, memory, IRQ, "timer IRQ")
                    if self._fault is not None:
                        return self._fault
            if clock.now_ns >= clock.deadline_ns:
                return Stop(StopKind.DEADLINE)
            if self._halted:
                return Stop(StopKind.HALT)
            budget.arm(traps, pending)  # taking the IRQ moved no time: the line is as it was
            hooks.stop = None
            try:
                uc.emu_start(regs.pc(), _NEVER)
            except UcError as err:
                if memory.faulted():  # an access the engine refused: it ends the run, as it says
                    stop = memory.take_fault()
                    if stop is not None:
                        hooks.stop = stop
                elif hooks.stop is None and memory.wp_fault is None:
                    hooks.stop = memory.fault_stop(uc.reg_read(A.UC_ARM64_REG_PC), f"unicorn: {err}")
            if hooks.error is not None:
                error, hooks.error = hooks.error, None
                raise error
            budget.account()
            if memory.wp_fault is not None:
                memory.log_write()  # the store is retried when the engine resumes at its PC
                continue
            if hooks.exception is not None:
                exc, hooks.exception = hooks.exception, None
                self._fault = take_exception(regs, memory, SYNC, exc.cause, exc.esr, exc.far, exc.at)
                if self._fault is not None:
                    return self._fault
                continue
            stop, hooks.stop = hooks.stop, None
            if stop is not None:
                if stop.kind is StopKind.MMIO and budget.settled() and self._in_kernel_mmio(traps, stop):
                    continue
                if stop.kind is StopKind.FAULT:
                    self._fault = stop
                elif stop.kind is StopKind.SEMIHOSTING:
                    regs.set_pc(stop.pc + 4)
                if stop.kind is not StopKind.EXIT or traps.exit_requested():
                    return stop
                continue
            if budget.counter.stopped:
                continue  # the budget ran out: deadline, timer event, or an IRQ to take
            pc = uc.reg_read(A.UC_ARM64_REG_PC)
            if memory.fetch(pc - 4) == WFI:
                self._halted = True
                budget.woke()
                continue
            self._fault = memory.fault_stop(pc, "the engine stopped for no known reason")
            return self._fault
