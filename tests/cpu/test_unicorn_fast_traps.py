"""The fast traps (`pvtime.cpu.unicorn.fast_traps`): counter reads and fixed-answer SMCCC calls
served without the hypervisor's Python hooks give exactly what the hypervisor gives.

The same guest program -- CNTVCT_EL0 and CNTPCT_EL0 reads (arch/arm64/kvm/arch_timer.c:
kvm_arm_timer_read_sysreg), SMCCC_VERSION, ARCH_FEATURES and PV_TIME_FEATURES (which
arch/arm64/kvm/hypercalls.c: kvm_smccc_call_handler answers from the VM's configuration),
PV_TIME_ST, an unknown call and an SMC (which only the hypervisor serves), an MSR of CNTKCTL_EL1
and of the virtual timer -- runs in short slices through the fast traps in C where this host has
them, through their Python twins, and with the fast paths hidden from the backend: the memory it
writes, its registers, the virtual time, the instruction count, the hypercall count and every exit
are the same. This file also runs with PVTIME_NATIVE=0 (test_native_hooks.py).

The shipped counter-read hook of each host architecture is also run in unicorn, against the
arithmetic of the hypervisor's path, so CI on one architecture checks the other's too.
"""

from __future__ import annotations

import ctypes
import struct
from functools import partial
from typing import Any

import pytest
from unicorn import UC_HOOK_CODE, UC_PROT_ALL, Uc
from unicorn import arm64_const as A

from pvtime.abi import smccc
from pvtime.abi.uapi import KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, reg_x
from pvtime.cpu.backend import Clock, Stop, VcpuTraps
from pvtime.cpu.unicorn import UnicornCpu
from pvtime.cpu.unicorn.fast_traps import FastTrapsState
from pvtime.cpu.unicorn.native import native_enabled, native_hook
from pvtime.kvm import HaltExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig
from tests.cpu.shipped import ABIS, set_up_call, shipped

OUT = 0x8_0000  # where the program stores what it read, in RAM
PVTIME = 0x9_0000
ITERATIONS = 40
_FAST_METHODS = ("counter_params", "constant_hypercalls", "note_hypercalls")


def _mov32(reg: str, value: int) -> str:
    return f"movz {reg}, #{value >> 16:#x}, lsl #16\n movk {reg}, #{value & 0xFFFF:#x}\n"


def _call(fid: int, x1: int = 0, conduit: str = "hvc") -> str:
    """An SMCCC call whose x0..x3 are then stored at x10."""
    return (_mov32("x0", fid) + _mov32("x1", x1) + "mov x2, #7\n mov x3, #9\n"
            f"{conduit} #0\n stp x0, x1, [x10], #16\n stp x2, x3, [x10], #16\n")


PROGRAM = assemble(f"""
    {_mov32("x10", RAM_BASE + OUT)}
    mov x9, #{ITERATIONS}
    mov x11, #3
    msr cntkctl_el1, x11
1:  mrs x1, cntvct_el0
    mrs x2, cntpct_el0
    stp x1, x2, [x10], #16
    {_call(smccc.SMCCC_VERSION)}
    {_call(smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES)}
    {_call(smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_ST)}
    {_call(smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST)}
    {_call(smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT)}
    {_call(0xC500_0099)}
    {_call(smccc.SMCCC_VERSION, 0, "smc")}
    {_call(smccc.PV_TIME_ST)}
    mrs x1, cntvct_el0
    add x1, x1, #500
    msr cntv_cval_el0, x1
    mov x5, x9
2:  mul x6, x5, x5
    subs x5, x5, #1
    b.ne 2b
    mrs x1, cntvct_el0
    str x1, [x10], #8
    subs x9, x9, #1
    b.ne 1b
    wfi
""")


class _NoFastPaths:
    """The hypervisor's traps without the fast-path methods: the backend hands it every access."""

    def __init__(self, traps: VcpuTraps) -> None:
        self._traps = traps

    def __getattr__(self, name: str) -> Any:
        if name in _FAST_METHODS:
            raise AttributeError(name)
        return getattr(self._traps, name)


class _HypervisorOnlyCpu(UnicornCpu):
    def execute(self, traps: VcpuTraps, clock: Clock) -> Stop:
        return super().execute(_NoFastPaths(traps), clock)  # type: ignore[arg-type]


def _run(kind: str) -> tuple[object, ...]:
    make = {"fast": UnicornCpu, "twin": partial(UnicornCpu, native=False), "hypervisor": _HypervisorOnlyCpu}[kind]
    rig = Rig(PROGRAM, cpu=lambda i: make(i, instructions_per_sec=200_000_000))
    vcpu = rig.vcpus[0]
    vcpu.set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, RAM_BASE + PVTIME)
    exits = []
    for _ in range(1000):
        ex = rig.run(budget_ns=1_000)  # slices end inside loops and around calls
        exits.append((type(ex).__name__, rig.host.now_ns()))
        if isinstance(ex, HaltExit):
            break
    cpu = rig.cpus[0]
    assert isinstance(cpu, UnicornCpu)
    regs = [vcpu.get_one_reg(reg_x(n)) for n in range(12)]
    served = cpu.fast_served
    return (bytes(rig.ram[OUT:OUT + 0x8000]), regs, exits, cpu.instructions, vcpu.stats.hypercalls), served


def test_the_fast_traps_give_what_the_hypervisor_gives() -> None:
    hypervisor, none = _run("hypervisor")
    assert none == (0, 0)
    twin, served = _run("twin")
    assert twin == hypervisor
    _assert_served(served)
    out, _, exits, _, hypercalls = hypervisor
    assert hypercalls == 8 * ITERATIONS and len(exits) > ITERATIONS  # many slices
    words = [int.from_bytes(out[i:i + 8], "little") for i in range(0, 8 * 8, 8)]
    assert words[0] > 0 and words[2:6] == [smccc.SMCCC_VERSION_1_1, 0, 0, 0]  # the first CNTVCT, VERSION
    if native_enabled() and native_hook("fast_traps") is not None:
        fast, served = _run("fast")
        assert fast == hypervisor
        _assert_served(served)


def _assert_served(served: tuple[int, int]) -> None:
    reads, calls = served
    assert reads == 4 * ITERATIONS  # every counter read
    # VERSION, ARCH_FEATURES(PV_TIME_FEATURES), PV_TIME_FEATURES(ST and LPT) but those the
    # hypervisor serves: the first of each execute, and those that end a slice
    assert ITERATIONS < calls < 4 * ITERATIONS


def test_a_hypercall_observer_sees_every_call() -> None:
    """With an observer on the VM's hypercall tracepoint no call is answered without the
    hypervisor: the tracepoint publishes each (kvm/trace.py)."""
    rig = Rig(PROGRAM)
    seen: list[object] = []
    rig.vm.subscribe_hypercalls(seen.append)
    while not isinstance(rig.run(), HaltExit):
        pass
    cpu = rig.cpus[0]
    assert isinstance(cpu, UnicornCpu)
    assert cpu.fast_served[1] == 0 and len(seen) == 8 * ITERATIONS == rig.vcpus[0].stats.hypercalls


@pytest.mark.parametrize("native", [False, None])
def test_an_el0_counter_read_cntkctl_does_not_enable_still_traps_to_el1(native: bool | None) -> None:
    """Covered in test_unicorn_exceptions.py through the default hooks; here through each kind."""
    rig = Rig(assemble("""
        adr x1, vectors
        msr vbar_el1, x1
        msr cntkctl_el1, xzr
        adr x1, el0
        msr elr_el1, x1
        msr spsr_el1, xzr
        eret
    el0:
        mrs x2, cntvct_el0
        b el0
        .balign 0x800
    vectors:
        .skip 0x400
        mrs x20, esr_el1
        mrs x21, cntvct_el0
        wfi
    """), cpu=lambda i: UnicornCpu(i, native=native))
    assert isinstance(rig.run(), HaltExit)
    assert rig.vcpus[0].get_one_reg(reg_x(20)) >> 26 == 0x18  # EC: a trapped MSR/MRS
    assert rig.vcpus[0].get_one_reg(reg_x(21)) > 0 and rig.vcpus[0].get_one_reg(reg_x(2)) == 0


# --- the shipped shared objects, each run in unicorn (so CI on one architecture checks both) ---

BASE, STATE, CP, STACK, STUBS, RET = 0x10_0000, 0x40_0000, 0x48_0000, 0x50_0000, 0x60_0000, 0x60_1000
NEXT_SYS, REG_READ, REG_WRITE = STUBS, STUBS + 0x100, STUBS + 0x200
USED = STATE + 0x1000
ENGINE, USER, NEXT_ANSWER = 0x1234_5678_9ABC, 0x7777_0000, 7
CNTVCT, CNTPCT, CNTFRQ = (3, 3, 14, 0, 2), (3, 3, 14, 0, 1), (3, 3, 14, 0, 0)


def _emulated_fast_mrs(arch: str, state: FastTrapsState, used: int, register: tuple[int, int, int, int, int],
                       rt: int, pstate: int) -> tuple[int, int, list[tuple[int, int]], bool, int]:
    """Run the shipped pvtime_fast_mrs for `arch` once in unicorn: -> (its answer, `used` after,
    the registers it wrote, whether it called `next_sys`, the reads it counted)."""
    entry, segments = shipped("fast_traps", arch, "pvtime_fast_mrs")
    abi = ABIS[arch]
    args, result = abi.args, abi.result
    uc = Uc(abi.engine, abi.mode)
    for base, size in ((BASE, 0x10_0000), (STATE, 0x2000), (CP, 0x1000), (STACK - 0x1_0000, 0x1_0000),
                       (STUBS, 0x2000)):
        uc.mem_map(base, size, UC_PROT_ALL)
    for vaddr, data in segments:
        uc.mem_write(BASE + vaddr, data)
    for stub in (NEXT_SYS, REG_READ, REG_WRITE):
        uc.mem_write(stub, abi.ret)
    state.next_sys, state.next_sys_user, state.reg_read, state.reg_write, state.used = (
        NEXT_SYS, USER, REG_READ, REG_WRITE, USED)
    uc.mem_write(STATE, bytes(state))
    uc.mem_write(USED, used.to_bytes(8, "little"))
    op0, op1, crn, crm, op2 = register
    uc.mem_write(CP, struct.pack("<5IxxxxQ", crn, crm, op0, op1, op2, 0))
    set_up_call(uc, abi, (ENGINE, rt, CP, STATE), STACK, RET)
    written: list[tuple[int, int]] = []
    called: list[bool] = []

    def reg_read(uc: Uc, *_: object) -> None:  # uc_reg_read(engine, PSTATE, uint32_t *)
        assert uc.reg_read(args[0]) == ENGINE and uc.reg_read(args[1]) == A.UC_ARM64_REG_PSTATE
        uc.mem_write(uc.reg_read(args[2]), pstate.to_bytes(4, "little"))
        uc.reg_write(result, 0)

    def reg_write(uc: Uc, *_: object) -> None:
        written.append((uc.reg_read(args[1]) & 0xFFFF_FFFF,
                        int.from_bytes(uc.mem_read(uc.reg_read(args[2]), 8), "little")))
        uc.reg_write(result, 0)

    def next_sys(uc: Uc, *_: object) -> None:
        assert [uc.reg_read(r) for r in args] == [ENGINE, rt, CP, USER]
        called.append(True)
        uc.reg_write(result, NEXT_ANSWER)

    for stub, fn in ((REG_READ, reg_read), (REG_WRITE, reg_write), (NEXT_SYS, next_sys)):
        uc.hook_add(UC_HOOK_CODE, fn, begin=stub, end=stub)
    uc.emu_start(BASE + entry, RET)
    after = FastTrapsState.from_buffer_copy(uc.mem_read(STATE, ctypes.sizeof(FastTrapsState)))
    return (uc.reg_read(result) & 0xFFFF_FFFF, int.from_bytes(uc.mem_read(USED, 8), "little"), written,
            bool(called), after.reads)


def _published(**fields: int) -> FastTrapsState:
    state = FastTrapsState(x0_id=A.UC_ARM64_REG_X0, x28_id=A.UC_ARM64_REG_X28, x29_id=A.UC_ARM64_REG_X29,
                           x30_id=A.UC_ARM64_REG_X30, pstate_id=A.UC_ARM64_REG_PSTATE, hvc_intno=11,
                           accounted=4000, time_rem=333_000_000, now_ns=5_000_000_123, deadline_ns=6_000_000_000,
                           insns_per_sec=3_000_000_000, counter_on=1, counter_hz=25_000_000, voffset=1000,
                           poffset=(-77) & (2**64 - 1), cntkctl=0, charge=80)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def _expected(state: FastTrapsState, used: int, offset: int) -> int:
    """What the hypervisor reads: the budget's accounting (run.Budget.account), then the host's
    counter (Host.counter) less the VM's offset (ArchTimer.cntvct)."""
    insns = (used - state.accounted) // 4
    ns = (insns * 1_000_000_000 + state.time_rem) // state.insns_per_sec
    now = min(state.deadline_ns, state.now_ns + ns)
    return (now * state.counter_hz // 1_000_000_000 - offset) & (2**64 - 1)


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_the_shipped_fast_counter_read_computes_what_the_hypervisor_would(arch: str) -> None:
    x5, el1, el0, used = A.UC_ARM64_REG_X5, 0b0101, 0b0000, 4000 + 4 * 12_345
    state = _published()
    charged = used + 80
    # EL1: charged SYSREG_ACCESS_INSNS (80 bytes), the value written to Xt, counted
    assert _emulated_fast_mrs(arch, state, used, CNTVCT, x5, el1) == (
        1, charged, [(x5, _expected(state, charged, 1000))], False, 1)
    assert _emulated_fast_mrs(arch, state, used, CNTPCT, A.UC_ARM64_REG_X30, el1) == (
        1, charged, [(A.UC_ARM64_REG_X30, _expected(state, charged, (-77) & (2**64 - 1)))], False, 1)
    # EL0 without CNTKCTL_EL1.EL0VCTEN: left to the engine (which traps it), nothing charged
    assert _emulated_fast_mrs(arch, state, used, CNTVCT, x5, el0) == (0, used, [], False, 0)
    assert _emulated_fast_mrs(arch, _published(cntkctl=2), used, CNTVCT, x5, el0)[0:2] == (1, charged)
    assert _emulated_fast_mrs(arch, _published(cntkctl=2), used, CNTPCT, x5, el0)[0:2] == (0, used)  # EL0PCTEN
    # the time is clamped at the slice's deadline, as Slice.advance does
    late = _published(deadline_ns=5_000_000_200)
    assert _emulated_fast_mrs(arch, late, used, CNTVCT, x5, el1)[2] == [(x5, (5_000_000_200 // 40 - 1000))]
    # Xt the zero register: served, nothing written
    assert _emulated_fast_mrs(arch, state, used, CNTVCT, A.UC_ARM64_REG_XZR, el1) == (1, charged, [], False, 1)
    # to Python: another register, the fast path off, a state out of range (nothing charged)
    for other in (_emulated_fast_mrs(arch, state, used, CNTFRQ, x5, el1),
                  _emulated_fast_mrs(arch, _published(counter_on=0), used, CNTVCT, x5, el1),
                  _emulated_fast_mrs(arch, _published(insns_per_sec=0), used, CNTVCT, x5, el1),
                  _emulated_fast_mrs(arch, _published(counter_hz=2**60), used, CNTVCT, x5, el1)):
        assert other == (NEXT_ANSWER, used, [], True, 0)
