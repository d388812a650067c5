"""The unicorn backend through the KVM API: exits, registers, traps, interrupts, faults, time."""

from __future__ import annotations

from functools import partial

import pytest

from pvtime.abi import smccc
from pvtime.abi.errno import EINVAL, ENOENT
from pvtime.abi.uapi import (
    KVM_MEM_READONLY, KVM_REG_SIZE_MASK, KVM_REG_SIZE_U64, REG_ELR_EL1, REG_FPCR, REG_FPSR, REG_PC, REG_PSTATE,
    REG_SP, REG_SP_EL1, REG_SPSR_EL1, core_reg, reg_x, sysreg,
)
from pvtime.cpu import create_cpu
from pvtime.host import Host
from pvtime.kvm import HaltExit, InternalErrorExit, IntrExit, KvmError, MmioExit, SemihostingExit, SystemEventExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig

UART = 0x0900_0000


def test_reset_state_is_el1h_with_daif_masked() -> None:
    rig = Rig(assemble("wfi"))
    vcpu = rig.vcpus[0]
    assert vcpu.get_one_reg(REG_PSTATE) == 0x3C5
    assert vcpu.get_one_reg(REG_PC) == RAM_BASE
    assert all(vcpu.get_one_reg(reg_x(n)) == 0 for n in range(31))


def test_core_registers_round_trip_with_banked_stack_pointers() -> None:
    rig = Rig(assemble("wfi"))
    vcpu = rig.vcpus[0]
    for n in range(31):
        vcpu.set_one_reg(reg_x(n), 0x1000 + n)
    vcpu.set_one_reg(REG_SP, 0x4001_0000)  # struct kvm_regs.sp is SP_EL0
    vcpu.set_one_reg(REG_SP_EL1, 0x4002_0000)
    vcpu.set_one_reg(REG_ELR_EL1, 0x1234)
    vcpu.set_one_reg(REG_SPSR_EL1, 0x3C4)
    assert [vcpu.get_one_reg(reg_x(n)) for n in range(31)] == [0x1000 + n for n in range(31)]
    for pstate in (0x3C4, 0x3C5, 0x3C0):  # EL1t, EL1h, EL0t: the banks do not move
        vcpu.set_one_reg(REG_PSTATE, pstate)
        assert vcpu.get_one_reg(REG_PSTATE) == pstate
        assert vcpu.get_one_reg(REG_SP) == 0x4001_0000
        assert vcpu.get_one_reg(REG_SP_EL1) == 0x4002_0000
    assert vcpu.get_one_reg(REG_ELR_EL1) == 0x1234 and vcpu.get_one_reg(REG_SPSR_EL1) == 0x3C4


def test_core_register_errors() -> None:
    vcpu = Rig(assemble("wfi")).vcpus[0]
    with pytest.raises(KvmError) as err:
        vcpu.set_one_reg(REG_PSTATE, 0x3C9)  # EL2h
    assert err.value.errno == EINVAL
    with pytest.raises(KvmError) as err:
        vcpu.get_one_reg(core_reg(2 * 40))  # spsr[4]: a pvtime vCPU has no AArch32 SPSRs
    assert err.value.errno == EINVAL  # an offset inside struct kvm_regs with no register: EINVAL
    with pytest.raises(KvmError) as err:
        vcpu.get_one_reg(core_reg(216))  # past the end of struct kvm_regs
    assert err.value.errno == ENOENT


def test_a_refused_set_one_reg_leaves_the_register_unchanged() -> None:
    """kvm_arm_sys_reg_set_reg / set_core_reg check before they store: EINVAL changes nothing."""
    vcpu = Rig(assemble("wfi")).vcpus[0]
    vbar = sysreg(3, 0, 12, 0, 0)  # VBAR_EL1: bits 10..0 are RES0 on this CPU
    vcpu.set_one_reg(vbar, 0x7000)
    with pytest.raises(KvmError) as err:
        vcpu.set_one_reg(vbar, 0x7333)
    assert err.value.errno == EINVAL
    assert vcpu.get_one_reg(vbar) == 0x7000


def test_core_registers_answer_as_set_core_reg() -> None:
    """set_core_reg: a wrong size is EINVAL, an invalid PSTATE mode EINVAL, and a value accepted
    reads back unchanged -- FPSR, FPCR and PSTATE bits this CPU does not keep are EINVAL, the
    register left as it was, not masked silently."""
    vcpu = Rig(assemble("wfi")).vcpus[0]
    vcpu.set_one_reg(REG_SP, 0x4001_0000)
    vcpu.set_one_reg(REG_SP_EL1, 0x4002_0000)
    vcpu.set_one_reg(REG_FPSR, 0x0800_0010)  # QC | IXC
    vcpu.set_one_reg(REG_FPCR, 0x0340_0000)  # AHP | DN | RMode
    for reg, bad in ((REG_FPSR, 0xFFFF_FFFF), (REG_FPCR, 0xFFFF_FFFF),
                     (REG_PSTATE, 0x1_0000_03C5), (REG_PSTATE, 0x3C4 | 0b01001)):
        before = vcpu.get_one_reg(reg)
        with pytest.raises(KvmError) as err:
            vcpu.set_one_reg(reg, bad)
        assert err.value.errno == EINVAL, hex(bad)
        assert vcpu.get_one_reg(reg) == before, hex(bad)
    assert (vcpu.get_one_reg(REG_FPSR), vcpu.get_one_reg(REG_FPCR)) == (0x0800_0010, 0x0340_0000)
    assert vcpu.get_one_reg(REG_PSTATE) == 0x3C5
    assert (vcpu.get_one_reg(REG_SP), vcpu.get_one_reg(REG_SP_EL1)) == (0x4001_0000, 0x4002_0000)
    with pytest.raises(KvmError) as err:
        vcpu.set_one_reg(REG_FPSR & ~KVM_REG_SIZE_MASK | KVM_REG_SIZE_U64, 0)  # FPSR is a u32
    assert err.value.errno == EINVAL


def test_mmio_read_and_write_exits_follow_kvm() -> None:
    rig = Rig(assemble(f"""
        mov x1, #{UART:#x}
        movz x3, #0x1234
        movk x3, #0x5678, lsl #48
        ldr w2, [x1, #0x18]
        str x3, [x1]
        ldrsb x4, [x1, #4]
        ldrsh w5, [x1, #8]
        strb wzr, [x1, #1]
        wfi
    """))
    vcpu = rig.vcpus[0]
    ex = rig.run()
    assert ex == MmioExit(UART + 0x18, 4, b"", False)
    assert vcpu.get_one_reg(REG_PC) == RAM_BASE + 12  # still at the load during the exit
    vcpu.complete_mmio(b"\x90\x00\x00\x00")
    ex = rig.run()
    assert vcpu.get_one_reg(reg_x(2)) == 0x90
    assert ex == MmioExit(UART, 8, (0x5678_0000_0000_1234).to_bytes(8, "little"), True)
    ex = rig.run()
    assert ex == MmioExit(UART + 4, 1, b"", False)
    vcpu.complete_mmio(b"\xf0")
    ex = rig.run()
    assert vcpu.get_one_reg(reg_x(4)) == 0xFFFF_FFFF_FFFF_FFF0  # sign-extended to 64 bits
    assert ex == MmioExit(UART + 8, 2, b"", False)
    vcpu.complete_mmio(b"\x00\x80")
    ex = rig.run()
    assert vcpu.get_one_reg(reg_x(5)) == 0xFFFF_8000  # sign-extended to 32, upper half zero
    assert ex == MmioExit(UART + 1, 1, b"\0", True)
    assert isinstance(rig.run(), HaltExit)
    assert vcpu.get_one_reg(REG_PC) == RAM_BASE + 36  # past the WFI
    with pytest.raises(KvmError) as err:  # no MMIO read exit is waiting for its data
        vcpu.complete_mmio(b"\0")
    assert err.value.errno == EINVAL


def test_write_to_read_only_slot_is_an_mmio_exit() -> None:
    rig = Rig(assemble("""
        movz x1, #0x4010, lsl #16
        mov x2, #7
        ldr x3, [x1]
        str w2, [x1, #4]
        wfi
    """))
    flash = bytearray(0x1000)
    flash[:8] = (0xABCD).to_bytes(8, "little")
    rig.vm.set_user_memory_region(1, 0x4010_0000, len(flash), flash, KVM_MEM_READONLY)
    assert rig.run() == MmioExit(0x4010_0004, 4, (7).to_bytes(4, "little"), True)
    assert rig.vcpus[0].get_one_reg(reg_x(3)) == 0xABCD  # reads come from the slot
    assert flash[4:8] == bytes(4)


def test_ram_is_shared_with_the_vmm_and_between_vcpus() -> None:
    rig = Rig(assemble("""
        movz x1, #0x4008, lsl #16
        ldr x2, [x1]
        add x2, x2, #1
        str x2, [x1, #8]
        wfi
    """))
    rig.ram[0x80000:0x80008] = (41).to_bytes(8, "little")
    assert isinstance(rig.run(), HaltExit)
    assert int.from_bytes(rig.ram[0x80008:0x80010], "little") == 42


def test_hvc_and_smc_reach_the_smccc_dispatch() -> None:
    rig = Rig(assemble(f"""
        mov x0, #{smccc.SMCCC_VERSION:#x}
        hvc #0
        mov x10, x0
        mov x0, #{smccc.SMCCC_VERSION:#x}
        hvc #7
        mov x11, x0
        mov x0, #{smccc.SMCCC_VERSION:#x}
        smc #0
        mov x12, x0
        mov x0, #{smccc.SMCCC_VERSION:#x}
        smc #1
        mov x13, x0
        wfi
    """))
    assert isinstance(rig.run(), HaltExit)
    vcpu = rig.vcpus[0]
    assert [vcpu.get_one_reg(reg_x(n)) for n in (10, 11, 12, 13)] == [0x10001, 0x10001, 0x10001, 2**64 - 1]
    assert vcpu.stats.hypercalls == 4  # every trapped call counts, SMC #1 (answered ~0) included


def test_psci_cpu_on_starts_the_target_at_entry_and_wakes_it() -> None:
    rig = Rig(assemble("""
        movz x0, #0xc400, lsl #16
        movk x0, #3
        mov x1, #1
        adr x2, 1f
        mov x3, #0x77
        hvc #0
        mov x20, x0
        wfi
        .balign 16
    1:  mrs x21, mpidr_el1
        mov x22, x0
        wfi
    """), vcpus=2)
    woken: list[object] = []
    rig.host.set_waker(woken.append)  # the host's scheduler: kvm_vcpu_wake_up wakes the KVM_RUN caller
    assert rig.run(1) == HaltExit(None)  # powered off: its thread now waits in KVM_RUN
    assert isinstance(rig.run(0), HaltExit)
    assert rig.vcpus[0].get_one_reg(reg_x(20)) == 0 and woken == [rig.tasks[1]]
    v1 = rig.vcpus[1]
    assert v1.get_one_reg(REG_PSTATE) == 0x3C5 and v1.get_one_reg(reg_x(0)) == 0x77
    assert isinstance(rig.run(1), HaltExit)
    assert v1.get_one_reg(reg_x(21)) == 0x8000_0001 and v1.get_one_reg(reg_x(22)) == 0x77


def test_system_off_is_a_system_event() -> None:
    rig = Rig(assemble("""
        movz x0, #0x8400, lsl #16
        movk x0, #8
        hvc #0
        b .
    """))
    assert rig.run() == SystemEventExit(1)


def test_semihosting_is_reported_with_the_pc_past_the_hlt() -> None:
    rig = Rig(assemble("""
        mov x0, #0x18
        mov x1, #0x20
        movk x1, #2, lsl #16
        hlt #0xf000
        mov x5, x0
        wfi
    """))
    assert rig.run() == SemihostingExit(0x18, 0x20020)
    vcpu = rig.vcpus[0]
    assert vcpu.get_one_reg(REG_PC) == RAM_BASE + 16
    vcpu.set_one_reg(reg_x(0), 99)
    assert isinstance(rig.run(), HaltExit)
    assert vcpu.get_one_reg(reg_x(5)) == 99


TIMER_IRQ = """
        adr x1, vectors
        msr vbar_el1, x1
        mrs x2, cntvct_el0
        add x2, x2, #{ticks}
        msr cntv_cval_el0, x2
        mov x3, #1
        msr cntv_ctl_el0, x3
        {prologue}
        msr daifclr, #2
    spin:
        add x9, x9, #1
        cbz x10, spin
        wfi
        .balign 0x800
    vectors:
        .rept 2
        b bad
        .balign 0x80
        .endr
        .balign 0x80
        b bad
        .balign 0x80
        b bad
        .balign 0x80
        b bad   /* current EL SPx sync, +0x200 */
        .balign 0x80
        b irq   /* current EL SPx IRQ, +0x280 */
        .balign 0x80
    bad:
        hlt #0x1
    irq:
        mrs x10, elr_el1
        mrs x11, spsr_el1
        mov x12, sp
        mrs x13, cntv_ctl_el0
        msr cntv_ctl_el0, xzr
        mrs x14, cntvct_el0
        eret
"""


def test_timer_interrupt_entry_is_architectural() -> None:
    rig = Rig(assemble(TIMER_IRQ.format(ticks=100, prologue="")))
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(REG_SP_EL1, 0x4008_0000)
    ex = rig.run(budget_ns=1_000_000_000)
    assert isinstance(ex, HaltExit), ex
    elr, spsr = vcpu.get_one_reg(reg_x(10)), vcpu.get_one_reg(reg_x(11))
    assert RAM_BASE <= elr < RAM_BASE + 0x40  # interrupted inside the spin loop
    assert spsr & 0x3C5 == 0x345  # EL1h with IRQs unmasked (D, A, F still set)
    assert vcpu.get_one_reg(reg_x(12)) == 0x4008_0000  # SP_EL1
    assert vcpu.get_one_reg(reg_x(13)) == 0b101  # ENABLE | ISTATUS
    # 100 ticks at 25 MHz are 4 us: the interrupt came at 4 us of executed guest instructions.
    assert vcpu.get_one_reg(reg_x(14)) >= 100
    assert 3_900 <= rig.host.clock_ns <= 4_300


def test_interrupt_from_el1t_uses_the_sp0_vector_and_switches_stacks() -> None:
    code = TIMER_IRQ.format(ticks=10, prologue="msr spsel, #0\n        movz x15, #0x4004, lsl #16\n"
                                                 "        mov sp, x15")
    code = code.replace("        .rept 2\n        b bad\n", "        b bad\n        .balign 0x80\n        b irq\n")
    code = code.replace(".rept 2", "").replace(".endr", "")
    rig = Rig(assemble(code))
    vcpu = rig.vcpus[0]
    vcpu.set_one_reg(REG_SP_EL1, 0x4008_0000)
    assert isinstance(rig.run(budget_ns=1_000_000_000), HaltExit)
    assert vcpu.get_one_reg(reg_x(11)) & 0xF == 0b0100  # taken from EL1t
    assert vcpu.get_one_reg(reg_x(12)) == 0x4008_0000  # handler ran on SP_EL1
    assert vcpu.get_one_reg(REG_SP) == 0x4004_0000  # eret restored SP_EL0


def test_wfi_parks_until_the_next_timer_event() -> None:
    rig = Rig(assemble("""
        mrs x2, cntvct_el0
        add x2, x2, #2500
        msr cntv_cval_el0, x2
        mov x3, #1
        msr cntv_ctl_el0, x3
        wfi
        mrs x4, cntvct_el0
        msr cntv_ctl_el0, xzr
        wfi
    """))
    ex = rig.run()
    assert ex == HaltExit(100_000)  # 2500 ticks at 25 MHz
    rig.host.idle(100_000 - rig.host.clock_ns)
    assert rig.run() == HaltExit(None)  # woke (IRQs masked: no entry), read the counter, parked
    assert rig.vcpus[0].get_one_reg(reg_x(4)) >= 2500


def test_slice_deadline_is_an_intr_exit_and_time_follows_instructions() -> None:
    rig = Rig(assemble("b ."), instructions_per_sec=500_000_000)
    assert rig.run(budget_ns=1_000_000) == IntrExit()
    assert rig.host.clock_ns == 1_000_000
    assert rig.cpus[0].instructions == pytest.approx(500_000, abs=1)


def test_counter_reads_are_monotonic_and_runs_are_deterministic() -> None:
    program = assemble("""
        movz x1, #0x4008, lsl #16
        mov x2, #200
    1:  mrs x3, cntvct_el0
        str x3, [x1], #8
        mov x4, #50
    2:  subs x4, x4, #1
        b.ne 2b
        subs x2, x2, #1
        b.ne 1b
        wfi
    """)

    def once() -> tuple[list[int], int]:
        rig = Rig(program)
        while not isinstance(rig.run(budget_ns=3_000), HaltExit):
            rig.host.hold(rig.tasks[0], 1_000)  # preempted between slices
        reads = [int.from_bytes(rig.ram[0x80000 + 8 * i:0x80008 + 8 * i], "little") for i in range(200)]
        return reads, rig.host.clock_ns

    first = once()
    assert first == once()
    assert first[0] == sorted(first[0]) and first[0][-1] > first[0][0]


@pytest.mark.parametrize(("source", "reason", "insn"), [
    (".word 0", "undefined instruction", "udf"),
    ("mov x1, #0x09000000\n ldp x2, x3, [x1]", "no valid syndrome", "ldp"),
    ("movz x1, #0x2000, lsl #16\n br x1", "instruction fetch", ""),
    ("svc #0", "SVC", "svc"),
])
def test_faults_stop_the_vcpu_with_pc_instruction_and_reason(source: str, reason: str, insn: str) -> None:
    host = Host()
    rig = Rig(assemble(source), host=host)
    other = Rig(assemble("mov x0, #1\n wfi"), host=host, name="other")
    ex = rig.run()
    assert isinstance(ex, InternalErrorExit)
    assert reason in ex.detail and insn in ex.instruction
    assert ex.pc in (RAM_BASE + 4 * source.count("\n"), 0x2000_0000)
    assert f"pc={ex.pc:#x}" in str(ex)
    assert rig.run() == ex  # the vCPU stays stopped
    assert isinstance(other.run(), HaltExit)  # another VM on the host goes on
    assert other.vcpus[0].get_one_reg(reg_x(0)) == 1


def test_interrupt_without_vectors_is_an_exception_the_guest_cannot_take() -> None:
    rig = Rig(assemble("""
        mov x3, #1
        msr cntv_cval_el0, xzr
        msr cntv_ctl_el0, x3
        msr daifclr, #2
        b .
    """))
    ex = rig.run()
    assert isinstance(ex, InternalErrorExit)
    assert "VBAR_EL1 = 0x0" in ex.detail and "cannot take" in ex.detail
    assert ex.pc == RAM_BASE + 16 and ex.instruction == "b #0x40000010"


def test_unknown_cpu_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="CPU backend 'x86'"):
        Rig(assemble("wfi"), cpu=partial(create_cpu, "x86"))


def test_python_block_counter_gives_the_same_virtual_time_as_the_native_one() -> None:
    from pvtime.cpu.unicorn import UnicornCpu

    program = assemble("""
        mov x2, #300
    1:  mrs x3, cntvct_el0
        mov x4, #7
    2:  subs x4, x4, #1
        b.ne 2b
        subs x2, x2, #1
        b.ne 1b
        wfi
    """)
    results = []
    for native in (None, False):
        rig = Rig(program, cpu=lambda i, native=native: UnicornCpu(i, native=native))
        assert isinstance(rig.run(), HaltExit)
        results.append((rig.host.clock_ns, rig.cpus[0].instructions, rig.vcpus[0].get_one_reg(reg_x(3))))
    assert results[0] == results[1]
