"""The run loop's bounds: the engine stops only at the synchronous budget (never at emu_start's
timeout, from another thread), and after a WFI it steps one block at a time, so that an idle
loop's short unmask is seen (Linux's `do_idle` -> `arch_cpu_idle` (arch/arm64/kernel/idle.c):
`wfi` with IRQs masked, then `local_irq_enable`).
"""

from __future__ import annotations

from typing import Any

import pytest
from unicorn import Uc

from pvtime.abi.uapi import REG_SP_EL1, reg_x
from pvtime.cpu.unicorn.native import BlockCounter
from pvtime.cpu.unicorn.run import POLL_BLOCKS
from pvtime.kvm import HaltExit
from tests.cpu.asm import IRQ_VECTORS, assemble
from tests.cpu.rig import RAM_BASE, Rig

IRQ_VECTOR = IRQ_VECTORS + """
        mov x20, #1          /* current EL, SPx, IRQ */
        mrs x21, elr_el1
        msr cntv_ctl_el0, xzr
        wfi
"""


def test_an_idle_loop_takes_the_interrupt_at_its_unmask_after_a_long_masked_stretch() -> None:
    """The line is asserted while IRQs are masked for longer than the one-block polling lasts;
    then the guest idles: `wfi` (which the asserted line completes at once), unmask, mask, again.
    The interrupt must be taken at the first unmask; polled every few thousand instructions it
    would be checked only where IRQs are masked again, and never taken."""
    rig = Rig(assemble(f"""
        adr x1, vectors
        msr vbar_el1, x1
        msr cntv_cval_el0, xzr
        mov x3, #1
        msr cntv_ctl_el0, x3     /* the timer line is asserted from now on; IRQs are masked */
        mov x4, #{4 * POLL_BLOCKS}
    1:  subs x4, x4, #1
        b.ne 1b
    idle:
        wfi
        msr daifclr, #2
        msr daifset, #2
        add x9, x9, #1
        b idle
    """ + IRQ_VECTOR))
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(REG_SP_EL1, RAM_BASE + 0x8_0000)
    assert isinstance(rig.run(budget_ns=5_000_000), HaltExit)
    assert vcpu.get_one_reg(reg_x(20)) == 1
    assert vcpu.get_one_reg(reg_x(9)) == 0  # taken at the first unmask
    elr = vcpu.get_one_reg(reg_x(21))
    assert rig.ram[elr - RAM_BASE:elr - RAM_BASE + 4] == assemble("msr daifset, #2")  # right after it


def test_the_engine_runs_without_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each emu_start is bounded by the block counter alone: no timeout, no instruction count."""
    calls: list[tuple[int, int]] = []
    original = Uc.emu_start

    def emu_start(self: Uc, begin: int, until: int, timeout: int = 0, count: int = 0, **kw: Any) -> None:
        calls.append((timeout, count))
        original(self, begin, until, timeout, count, **kw)

    monkeypatch.setattr(Uc, "emu_start", emu_start)
    rig = Rig(assemble("1: add x1, x1, #1\n b 1b"))
    for _ in range(3):
        rig.run(budget_ns=200_000)
    assert calls and set(calls) == {(0, 0)}


# Masked stretches with the timer line asserted, of 13 to 533 blocks (past POLL_BLOCKS), with
# counter reads (the fast traps' charge), and in odd rounds CVAL writes that keep, drop and restore
# the line (the MSR hook re-arms the budget mid-block) and a WFI the asserted line completes; the
# unmask of an even round may come in the POLL_INSNS polling and be missed, as the run loop says.
# The handler re-arms the timer a varying few ticks ahead.
MASKED_STRETCHES = """
        adr x1, vectors
        msr vbar_el1, x1
        mrs x2, cntvct_el0
        add x2, x2, #5
        msr cntv_cval_el0, x2
        mov x3, #1
        msr cntv_ctl_el0, x3
        mov x5, #41
    round:
        mov x6, #13
        mul x4, x5, x6
    1:  subs x4, x4, #1
        mrs x7, cntvct_el0
        b.ne 1b
        add x9, x9, #3
        tbz x5, #0, 2f              /* even rounds: straight on, polled each POLL_INSNS */
        msr cntv_cval_el0, x2       /* still asserted (or not yet) */
        mvn x8, xzr
        msr cntv_cval_el0, x8       /* dropped: the line falls */
        msr cntv_cval_el0, x2       /* restored */
        mov x4, #7
    4:  subs x4, x4, #1
        b.ne 4b
        wfi                         /* completed by the asserted line, or the timer */
    2:  mov x4, #{POLL_BLOCKS - 6}     /* after the WFI, a few blocks short of POLL_BLOCKS */
    3:  subs x4, x4, #1
        b.ne 3b
        msr daifclr, #2             /* the interrupt is taken here */
        add x9, x9, #1
        msr daifset, #2
        subs x5, x5, #1
        b.ne round
        msr cntv_ctl_el0, xzr
        wfi
        b .
""" + IRQ_VECTORS + """
        add x20, x20, #1            /* current EL, SPx, IRQ */
        mrs x21, elr_el1
        add x22, x22, x21
        mrs x2, cntvct_el0
        and x23, x20, #7
        add x2, x2, x23
        add x2, x2, #1
        msr cntv_cval_el0, x2
        eret
"""


def test_the_counters_one_block_steps_run_the_guest_as_one_engine_run_per_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the line waits masked, the block counter takes the run loop's one-block steps itself
    (`BlockCounter.arm_steps`): the guest must run exactly as when the loop runs the engine once per
    block -- every exit, time, instruction count and register alike, in slices whose deadlines fall
    inside the stretches -- with far fewer engine runs; the Python twin alike."""
    import pvtime.cpu.unicorn.run as run_module
    from pvtime.cpu.unicorn import UnicornCpu

    program = assemble(MASKED_STRETCHES.replace("{POLL_BLOCKS - 6}", str(POLL_BLOCKS - 6)))
    counter = run_module.BlockCounter

    def trace(native: bool | None, steps: bool) -> tuple[list[object], int]:
        made = (lambda uc, step_while, native: counter(uc, step_while=step_while if steps else None,
                                                       native=native))
        monkeypatch.setattr(run_module, "BlockCounter", made)
        # Every budget but a one-block step's, where it was set: the polls counted alike.
        arms: list[tuple[int, int]] = []
        arm = counter.arm

        def record(self: BlockCounter, budget_bytes: int) -> None:
            arms.append((self.used, budget_bytes))
            arm(self, budget_bytes)

        monkeypatch.setattr(counter, "arm", record)
        engine_runs = 0
        original = Uc.emu_start

        def emu_start(self: Uc, *args: Any, **kw: Any) -> None:
            nonlocal engine_runs
            engine_runs += 1
            original(self, *args, **kw)

        monkeypatch.setattr(Uc, "emu_start", emu_start)
        rig = Rig(program, cpu=lambda i: UnicornCpu(i, instructions_per_sec=700_000_007, native=native))
        vcpu = rig.vcpus[0]
        vcpu.set_one_reg(REG_SP_EL1, RAM_BASE + 0x8_0000)
        seen: list[object] = []
        for _ in range(400):
            ex = rig.run(budget_ns=2_345)
            seen.append((ex, rig.host.clock_ns, rig.cpus[0].instructions,
                         *(vcpu.get_one_reg(reg_x(n)) for n in (4, 5, 9, 20, 22))))
            if isinstance(ex, HaltExit) and vcpu.get_one_reg(reg_x(5)) == 0:
                break
        monkeypatch.undo()
        return [*seen, arms], engine_runs

    one_block, runs_one_block = trace(None, steps=False)
    stepped, runs_stepped = trace(None, steps=True)
    _, _, _, _, rounds_left, rounds_done, irqs, _ = one_block[-2]
    assert (rounds_left, rounds_done) == (0, 41 * 4)  # the guest finished
    assert 41 // 2 < irqs < 41  # taken at each odd round's unmask, missed at some even ones
    assert stepped == one_block
    assert runs_stepped < runs_one_block / 3, (runs_stepped, runs_one_block)
    assert trace(False, steps=True)[0] == one_block


# A Group-1 IRQ (the physical timer's PPI) waits masked; a little later the virtual timer's PPI,
# Group 0 with FIQEn set and of higher priority, rises and becomes the vGIC's best candidate, as a
# FIQ, which pvtime does not take: the IRQ line falls by time alone. Disabling that PPI later (an
# in-kernel MMIO store) raises the line again before the guest unmasks.
FIQ_OVERTAKES = """
        movz x1, #0x0800, lsl #16
        movz x2, #0x0801, lsl #16
        adr x10, vectors
        msr vbar_el1, x10
        mov w4, #1
        str w4, [x1]                  /* GICD_CTLR */
        mov w4, #0xb
        str w4, [x2]                  /* GICC_CTLR: EnableGrp0, EnableGrp1, FIQEn */
        mov w4, #0xf0
        str w4, [x2, #4]              /* GICC_PMR */
        mov w4, #(1 << 30)
        str w4, [x1, #0x80]           /* GICD_IGROUPR0: PPI 30 Group 1, PPI 27 Group 0 */
        str wzr, [x1, #0x418]         /* PPI 27 (virtual timer): priority 0 */
        mov w4, #0x800000
        str w4, [x1, #0x41c]          /* PPI 30 (physical timer): priority 0x80 */
        mov w4, #(1 << 27)
        orr w4, w4, #(1 << 30)
        str w4, [x1, #0x100]          /* GICD_ISENABLER0 */
        mov x6, #1
        mrs x5, cntpct_el0
        add x5, x5, #10
        msr cntp_cval_el0, x5
        msr cntp_ctl_el0, x6          /* the IRQ in 10 ticks */
        mrs x5, cntvct_el0
        add x5, x5, #12
        msr cntv_cval_el0, x5
        msr cntv_ctl_el0, x6          /* the FIQ 2 ticks later */
        mov x4, #310
    1:  subs x4, x4, #1
        b.ne 1b
        mov w4, #(1 << 27)
        str w4, [x1, #0x180]          /* GICD_ICENABLER0: the FIQ's source off, the IRQ signalled again */
        mov x4, #200
    2:  subs x4, x4, #1
        b.ne 2b
        msr daifclr, #2               /* the IRQ is taken here */
    3:  add x9, x9, #1
        b 3b
""" + IRQ_VECTORS + """
        mov x20, x9
        mrs x21, elr_el1
        msr cntp_ctl_el0, xzr
        wfi
        b .
"""


def test_the_counters_steps_end_where_a_timer_rises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timer's rise can change which interrupt the vGIC signals, and so lower the IRQ line with
    no guest action (vgic: irq_signaled); the one-block loop sees the line fall at the next block and
    stops counting polls. The counter's steps end at the rise, so the guest runs as with one engine
    run per block: it takes the IRQ right at its unmask, not a POLL_INSNS chunk later."""
    import pvtime.cpu.unicorn.run as run_module
    from pvtime.abi.uapi import KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_TYPE_ARM_VGIC_V2, KVM_VGIC_V2_ADDR_TYPE_CPU
    from pvtime.abi.uapi import KVM_VGIC_V2_ADDR_TYPE_DIST

    counter = run_module.BlockCounter

    def run(steps: bool) -> tuple[object, ...]:
        monkeypatch.setattr(run_module, "BlockCounter", lambda uc, step_while, native: counter(
            uc, step_while=step_while if steps else None, native=native))
        rig = Rig(assemble(FIQ_OVERTAKES))
        gic = rig.vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, 0x0800_0000)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, 0x0801_0000)
        vcpu = rig.vcpus[0]
        vcpu.set_one_reg(REG_SP_EL1, RAM_BASE + 0x8_0000)
        ex = rig.run(budget_ns=1_000_000)
        monkeypatch.undo()
        return ex, rig.host.clock_ns, rig.cpus[0].instructions, *(vcpu.get_one_reg(reg_x(n)) for n in (20, 21))

    one_block = run(steps=False)
    assert isinstance(one_block[0], HaltExit) and one_block[3] == 0  # x9 still 0: taken at the unmask
    assert run(steps=True) == one_block
