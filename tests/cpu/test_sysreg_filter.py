"""The system-register filter (`pvtime.cpu.unicorn.native.SysregFilter`): only the registers the
hypervisor serves reach it, the others stay the engine's own; the generic timer's CTL and CVAL
writes among the former (the engine does not keep them: KVM's arch_timer.c holds the timer state,
`kvm_arm_timer_write_sysreg`).

- the shipped shared objects do what native/sysreg_filter.c says, on both host architectures
  (each is run in unicorn, so CI on one architecture checks the other's too);
- the C filter and its Python twin give identical results in an engine;
- through the KVM API, with either: timer writes reach the hypervisor, other registers do not.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from functools import partial

import pytest
from unicorn import UC_ARCH_ARM64, UC_HOOK_CODE, UC_MODE_ARM, UC_PROT_ALL, Uc
from unicorn import arm64_const as A
from unicorn.unicorn_py3.unicorn import uclib

from pvtime.abi.uapi import (
    KVM_REG_ARM_PTIMER_CTL, KVM_REG_ARM_PTIMER_CVAL, KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL, reg_x, sysreg,
)
from pvtime.cpu.unicorn import UnicornCpu
from pvtime.cpu.unicorn.native import CpReg, SysregFilter, native_enabled, native_hook, sysreg_key
from pvtime.kvm import HaltExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig
from tests.cpu.shipped import ABIS, set_up_call, shipped

# The filters to compare: the C one where this host has it (and PVTIME_NATIVE allows it), the twin.
NATIVE = [None, False] if native_enabled() and native_hook("sysreg_filter") is not None else [False]

# Running a shipped filter in unicorn: the shared object at BASE, struct sysreg_filter at STATE,
# the uc_arm64_cp_reg at CP; `next`, when set, is NEXT (returns 1); the filter returns to RET.
BASE, STATE, CP, STACK, NEXT, RET = 0x10_0000, 0x40_0000, 0x48_0000, 0x50_0000, 0x60_0000, 0x60_0100
UC, REG, USER = 0x1234_5678_9ABC, 203, 0x7777_0000
STUB_ANSWER_1 = {"x86_64": bytes.fromhex("b801000000c3"),  # mov eax, 1; ret
                 "aarch64": bytes.fromhex("20008052c0035fd6")}  # mov w0, #1; ret
Call = Callable[[tuple[int, int, int, int, int], dict[int, int], bool],
                tuple[int, list[int], tuple[int, ...] | None]]


def _emulated_filter(arch: str) -> Call:
    """A function (register, {key: class}, with next) -> (return value, hits[0..3], the arguments
    `next` got or None) that runs the shipped filter for `arch` once, in unicorn."""
    entry, segments = shipped("sysreg_filter", arch, "pvtime_sysreg_filter")
    abi = ABIS[arch]

    def call(register: tuple[int, int, int, int, int], classes: dict[int, int],
             with_next: bool) -> tuple[int, list[int], tuple[int, ...] | None]:
        uc = Uc(abi.engine, abi.mode)
        for base, size in ((BASE, 0x10_0000), (STATE, 0x2_0000), (CP, 0x1000), (STACK - 0x1_0000, 0x1_0000),
                           (NEXT, 0x1000)):
            uc.mem_map(base, size, UC_PROT_ALL)
        for vaddr, data in segments:
            uc.mem_write(BASE + vaddr, data)
        uc.mem_write(NEXT, STUB_ANSWER_1[arch])
        uc.mem_write(STATE, struct.pack("<QQ4Q", NEXT if with_next else 0, USER, 0, 0, 0, 0))
        for key, cls in classes.items():
            uc.mem_write(STATE + 48 + key, bytes([cls]))
        op0, op1, crn, crm, op2 = register
        uc.mem_write(CP, struct.pack("<5IxxxxQ", crn, crm, op0, op1, op2, 0x55))
        set_up_call(uc, abi, (UC, REG, CP, STATE), STACK, RET)
        got: list[tuple[int, ...]] = []
        uc.hook_add(UC_HOOK_CODE, lambda uc, *_: got.append(tuple(uc.reg_read(r) for r in abi.args)), begin=NEXT,
                    end=NEXT)
        uc.emu_start(BASE + entry, RET)
        hits = list(struct.unpack("<4Q", uc.mem_read(STATE + 16, 32)))
        return uc.reg_read(abi.result) & 0xFFFF_FFFF, hits, got[0] if got else None

    return call


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_filter_passes_on_only_the_registers_in_its_set(arch: str) -> None:
    call = _emulated_filter(arch)
    cntvct, tpidr, tlbi = (3, 3, 14, 0, 2), (3, 0, 13, 0, 4), (1, 0, 8, 3, 1)
    classes = {sysreg_key(*cntvct): 1, sysreg_key(*tlbi): 2}
    assert call(tpidr, classes, True) == (0, [0, 0, 0, 0], None)  # not in the set: the engine's
    assert call(cntvct, classes, True) == (1, [0, 1, 0, 0], (UC, REG, CP, USER))  # next's answer
    assert call(tlbi, classes, False) == (0, [0, 0, 1, 0], None)  # counted, left to the engine
    assert call((3, 3, 14, 0, 3), classes, True)[0] == 0  # a neighbour (op2 3) is not in the set


def _engine_run(native: bool | None) -> tuple[list[int], list[tuple[int, int, int, int, int, int]], list[int]]:
    """Run a mix of MRS of one trapped and one untrapped register in an engine with a filter whose
    `next` emulates the trapped one; -> (x1..x4, next's calls, hits)."""
    code = assemble("""
        msr tpidr_el1, x9
        mov x8, #5
    1:  mrs x1, tpidr_el1
        mrs x2, cntvct_el0
        add x3, x3, x2
        subs x8, x8, #1
        b.ne 1b
        mrs x4, sctlr_el1
    """)
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(RAM_BASE, 0x1000, UC_PROT_ALL)
    uc.mem_write(RAM_BASE, code)
    uc.reg_write(A.UC_ARM64_REG_X9, 0xABC)
    calls: list[tuple[int, int, int, int, int, int]] = []
    value = ctypes.c_uint64()

    def on_mrs(handle: int, reg: int, cp: ctypes._Pointer[CpReg], user: int | None) -> int:
        c = cp.contents
        calls.append((reg, c.op0, c.op1, c.crn, c.crm, c.op2))
        value.value = 100 + len(calls)
        uclib.uc_reg_write(handle, reg, ctypes.byref(value))
        return 1

    f = SysregFilter(uc, A.UC_ARM64_INS_MRS, [[(3, 3, 14, 0, 2)]], on_mrs, native=native)
    assert f.native == (native is None)
    uc.emu_start(RAM_BASE, RAM_BASE + len(code))
    regs = [uc.reg_read(getattr(A, f"UC_ARM64_REG_X{n}")) for n in range(1, 5)]
    return regs, calls, [f.hits(c) for c in (1, 2, 3)]


def test_the_python_twin_gives_the_same_results_as_the_c_filter() -> None:
    results = [_engine_run(native) for native in NATIVE]
    regs, calls, hits = results[0]
    assert regs[0] == 0xABC and regs[2] == sum(range(101, 106)) and regs[3] != 0  # engine's, ours, engine's
    assert calls == [(A.UC_ARM64_REG_X2, 3, 3, 14, 0, 2)] * 5 and hits == [5, 0, 0]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("native", NATIVE)
def test_timer_writes_reach_the_hypervisor_and_other_registers_stay_the_engines(native: bool | None) -> None:
    rig = Rig(assemble("""
        movz x1, #0x1234, lsl #32
        msr cntv_cval_el0, x1
        mov x2, #3
        msr cntv_ctl_el0, x2       /* ENABLE | IMASK */
        add x3, x1, #1
        msr cntp_cval_el0, x3
        msr cntp_ctl_el0, x2
        mrs x10, cntv_cval_el0
        mrs x11, cntv_ctl_el0
        mrs x12, cntp_cval_el0
        mrs x13, cntp_ctl_el0
        mov x4, #0x5a
        msr tpidr_el1, x4
        mrs x14, tpidr_el1
        mrs x15, mpidr_el1
        wfi
    """), cpu=partial(UnicornCpu, native=native))
    cpu = rig.cpus[0]
    assert isinstance(cpu, UnicornCpu) and cpu.native == (native is None)
    assert isinstance(rig.run(), HaltExit)
    vcpu = rig.vcpus[0]
    cval = 0x1234 << 32
    assert vcpu.get_one_reg(KVM_REG_ARM_TIMER_CVAL) == cval and vcpu.get_one_reg(KVM_REG_ARM_TIMER_CTL) & 3 == 3
    assert vcpu.get_one_reg(KVM_REG_ARM_PTIMER_CVAL) == cval + 1 and vcpu.get_one_reg(KVM_REG_ARM_PTIMER_CTL) & 3 == 3
    assert [vcpu.get_one_reg(reg_x(n)) for n in (10, 12)] == [cval, cval + 1]
    assert [vcpu.get_one_reg(reg_x(n)) & 3 for n in (11, 13)] == [3, 3]
    assert vcpu.get_one_reg(reg_x(14)) == 0x5A == vcpu.get_one_reg(sysreg(3, 0, 13, 0, 4))  # TPIDR_EL1
    assert vcpu.get_one_reg(reg_x(15)) == 0x8000_0000  # MPIDR_EL1 as KVM resets it: vCPU 0
