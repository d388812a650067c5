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
from pvtime.cpu.unicorn.run import POLL_BLOCKS
from pvtime.kvm import HaltExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig

IRQ_VECTOR = """
        .balign 0x800
    vectors:
        .rept 5
        b .
        .balign 0x80
        .endr
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
