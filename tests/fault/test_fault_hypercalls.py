"""Random hypercalls beside a second VM (issue 10's guest-side campaign).

Guests call HVC and SMC with random x0..x3 and immediates, from a Python model guest and from
AArch64 machine code on the unicorn CPU, while a second VM sits on the same host. Each call must:

- answer as SMCCC and PSCI say (REFERENCE section 1; arch/arm64/kvm/hypercalls.c:
  kvm_smccc_call_handler, arch/arm64/kvm/pvtime.c: kvm_hypercall_pv_features,
  arch/arm64/kvm/psci.c: kvm_psci_1_x_call and kvm_psci_0_2_call), computed here from those
  rules, not from pvtime's dispatch: x0 and x1..x3, and the effects on the vCPUs' power states,
  PSCI CPU_ON's entry point and context id, and the system-event exits;
- write no byte of the calling VM's memory but what the hypervisor owns there: the calling
  vCPU's stolen-time record (its steal field at vcpu_load, all 64 bytes at PV_TIME_ST) and,
  at the VM's first run, its LPT record; and the steal field must read what
  kvm_update_stolen_time computes from the thread's run_delay (REFERENCE section 2);
- leave the other VM as it was: its memory byte-identical, its registers and power states too.

`check_model_calls` and `check_unicorn_calls` run one example each; the campaign
(tools/fault_campaign.py) calls them too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvtime.abi import smccc
from pvtime.abi.sysregs import CTL_ISTATUS
from pvtime.abi.records import LPT_RECORD_SIZE, STEAL_RECORD_SIZE, STEAL_TIME_OFFSET
from pvtime.abi.uapi import (
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CTL,
    KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CTL, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, REG_PC, reg_x,
)
from pvtime.abi.widths import U32, U64
from pvtime.cpu import CpuKind
from pvtime.cpu.backend import Conduit
from pvtime.host import Host, Task
from pvtime.kvm import Exit, HaltExit, IntrExit, Kvm, MmioExit, SystemEventExit, Vcpu
from pvtime.vmm import Machine, MachineConfig
from tests.conftest import ScriptCpu
from tests.fault.tally import TALLY

NS = smccc.to_u64(smccc.NOT_SUPPORTED)
MPIDR_HWID = 0xFF_00FF_FFFF  # Aff3..Aff0
RAM_BASE = MachineConfig("x").layout.ram_base

# --- the function ids a guest may call ---------------------------------------------------------------

PSCI_VERSION, PSCI_FEATURES = 0x8400_0000, 0x8400_000A
CPU_SUSPEND = (0x8400_0001, 0xC400_0001)
CPU_OFF = 0x8400_0002
CPU_ON = (0x8400_0003, 0xC400_0003)
AFFINITY_INFO = (0x8400_0004, 0xC400_0004)
MIGRATE_INFO_TYPE = 0x8400_0006
SYSTEM_OFF, SYSTEM_RESET = 0x8400_0008, 0x8400_0009
SYSTEM_RESET2 = (0x8400_0012, 0xC400_0012)
# kvm_psci_1_x_call, PSCI_FEATURES: the calls PSCI 1.1 in KVM reports (and SMCCC_VERSION).
PSCI_FEATURES_SUPPORTED = frozenset({
    PSCI_VERSION, *CPU_SUSPEND, CPU_OFF, *CPU_ON, *AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF,
    SYSTEM_RESET, PSCI_FEATURES, *SYSTEM_RESET2, smccc.SMCCC_VERSION,
})
PV_TIME = (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST, smccc.PV_TIME_LPT)
FIDS = sorted({
    smccc.SMCCC_VERSION, smccc.SMCCC_ARCH_FEATURES, *PV_TIME, *(f & ~(1 << 30) for f in PV_TIME), 0xC500_0023,
    *PSCI_FEATURES_SUPPORTED, 0xC400_0002, 0xC400_0008, 0x8400_0005, 0xC400_0005, 0x8400_0007, 0x8400_000E,
    0xC400_000E, 0x8000_8000, 0x8000_7FFF, 0x8600_0000, 0x8600_FF01, 0xC600_0002, 0xBF00_0000, 0x0400_0000, 0,
    0xFFFF_FFFF,
})


def mpidr(vcpu_id: int) -> int:
    """The affinity fields KVM gives vCPU `vcpu_id` (sys_regs.c: reset_mpidr; 16 per Aff0)."""
    return (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16


u64s = st.integers(0, U64)
X0 = st.one_of(st.sampled_from(FIDS), st.sampled_from(FIDS), st.sampled_from(FIDS),
               st.builds(lambda f, hi: f | hi << 32, st.sampled_from(FIDS), st.integers(1, U32)), u64s)
X1 = st.one_of(st.sampled_from(FIDS), st.sampled_from([0, 1, 2, 0x100, 1 << 31 | 1, MPIDR_HWID, 1 << 40, 1 << 63]),
               st.builds(lambda f, hi: f | hi << 32, st.sampled_from(FIDS), st.integers(1, U32)), st.integers(0, 4),
               u64s)
XN = st.one_of(st.integers(0, 4), st.sampled_from([RAM_BASE, RAM_BASE + 0x1000, 1 << 32, U64]), u64s)


# Calls that mean something together with their x1: Linux's probe, PSCI on the other vCPU.
MEANINGFUL = st.one_of(
    st.sampled_from([(smccc.SMCCC_ARCH_FEATURES, smccc.PV_TIME_FEATURES), (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST),
                     (smccc.PV_TIME_FEATURES, smccc.PV_TIME_FEATURES), (smccc.PV_TIME_FEATURES, smccc.PV_TIME_LPT),
                     (smccc.PV_TIME_ST, 0), (smccc.PV_TIME_LPT, 0), (CPU_OFF, 0), (SYSTEM_RESET2[1], 1 << 31)]),
    st.tuples(st.sampled_from([*CPU_ON, *AFFINITY_INFO]), st.sampled_from([0, 1, 2, 1 << 31 | 1])),
    st.tuples(st.just(PSCI_FEATURES), st.sampled_from(FIDS)),
)
REGS = st.one_of(st.tuples(X0, X1, XN, XN),
                 st.builds(lambda pair, x2, x3: (*pair, x2, x3), MEANINGFUL, st.one_of(st.integers(0, 3), XN), XN))


@dataclass(frozen=True)
class Call:
    """One hypercall: the calling vCPU, x0..x3, the instruction and its immediate, and how long
    its thread waited before (steal)."""

    vcpu: int
    regs: tuple[int, int, int, int]
    conduit: Conduit
    imm: int
    wait_ns: int


def calls(vcpus: int) -> st.SearchStrategy[Call]:
    return st.builds(
        Call, st.integers(0, vcpus - 1), REGS,
        st.sampled_from([Conduit.HVC, Conduit.HVC, Conduit.SMC]),
        st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF)), st.integers(0, 2_000_000))


# --- the reference answer ----------------------------------------------------------------------------

@dataclass
class Answer:
    """What a call must return and do."""

    regs: tuple[int, int, int, int]
    off: bool = False  # the caller powers off (CPU_OFF)
    suspend: bool = False  # the caller waits for an interrupt (CPU_SUSPEND)
    on: tuple[int, int, int] | None = None  # CPU_ON: the target vCPU index, its entry and x0
    event: int | None = None  # a system event: every vCPU of the VM stops
    st: bool = False  # PV_TIME_ST served: the caller's record is zeroed


@dataclass
class VmView:
    """What the reference needs to know of the calling VM before the call."""

    running: list[bool]  # power state of each vCPU, by index (= vCPU id)
    st_ipa: list[int] | None  # each vCPU's stolen-time record (these VMs give all or none one)
    lpt_ipa: int | None  # the LPT record, if configured (so updated: every call is in a KVM_RUN)
    visible: bool  # the firmware bitmap exposes PV time


def reference(vm: VmView, caller: int, regs: tuple[int, int, int, int], conduit: Conduit, imm: int) -> Answer:
    """x0..x3 and effects of one call, from REFERENCE section 1 and Linux's psci.c."""
    x0, x1, x2, x3 = regs
    if conduit is Conduit.SMC and imm != 0:
        return Answer((U64, x1, x2, x3))  # handle_smc: ~0 in x0, nothing else touched
    fid = x0 & U32
    if fid in PV_TIME and not vm.visible:
        return _ret(smccc.NOT_SUPPORTED)
    if fid == smccc.SMCCC_VERSION:
        return _ret(smccc.SMCCC_VERSION_1_1)
    if fid == smccc.SMCCC_ARCH_FEATURES:
        return _ret(smccc.SUCCESS if x1 & U32 == smccc.PV_TIME_FEATURES and vm.visible else smccc.NOT_SUPPORTED)
    if fid == smccc.PV_TIME_FEATURES:
        feature = x1 & U32
        if feature in (smccc.PV_TIME_FEATURES, smccc.PV_TIME_ST):
            return _ret(smccc.NOT_SUPPORTED if vm.st_ipa is None else smccc.SUCCESS)
        return _ret(smccc.SUCCESS if feature == smccc.PV_TIME_LPT and vm.lpt_ipa is not None else smccc.NOT_SUPPORTED)
    if fid == smccc.PV_TIME_ST:
        return _ret(smccc.NOT_SUPPORTED) if vm.st_ipa is None else Answer(_ret(vm.st_ipa[caller]).regs, st=True)
    if fid == smccc.PV_TIME_LPT:
        if x1 & U32:
            return _ret(smccc.INVALID_PARAMETER)
        return _ret(smccc.NOT_SUPPORTED if vm.lpt_ipa is None else vm.lpt_ipa)
    return _psci(vm, caller, fid, x1, x2, x3)


def _ret(x0: int) -> Answer:
    return Answer((smccc.to_u64(x0), 0, 0, 0))


def _psci(vm: VmView, caller: int, fid: int, x1: int, x2: int, x3: int) -> Answer:
    if fid in (CPU_ON[0], AFFINITY_INFO[0], SYSTEM_RESET2[0]):  # kvm_psci_narrow_to_32bit
        x1, x2, x3 = x1 & U32, x2 & U32, x3 & U32
    if fid == PSCI_VERSION:
        return _ret(smccc.PSCI_VERSION_1_1)
    if fid == PSCI_FEATURES:
        return _ret(smccc.PSCI_SUCCESS if x1 & U32 in PSCI_FEATURES_SUPPORTED else smccc.PSCI_NOT_SUPPORTED)
    if fid in CPU_SUSPEND:
        return Answer(_ret(smccc.PSCI_SUCCESS).regs, suspend=True)
    if fid == CPU_OFF:
        return Answer(_ret(smccc.PSCI_SUCCESS).regs, off=True)
    if fid in CPU_ON:  # kvm_psci_vcpu_on
        target = next((i for i in range(len(vm.running)) if mpidr(i) == x1), None) if not x1 & ~MPIDR_HWID else None
        if target is None:
            return _ret(smccc.PSCI_INVALID_PARAMETERS)
        if vm.running[target]:
            return _ret(smccc.PSCI_ALREADY_ON)
        return Answer(_ret(smccc.PSCI_SUCCESS).regs, on=(target, x2, x3))
    if fid in AFFINITY_INFO:  # kvm_psci_vcpu_affinity_info
        if x1 & ~MPIDR_HWID or x2 > 3:
            return _ret(smccc.PSCI_INVALID_PARAMETERS)
        mask = MPIDR_HWID & ~((1 << (((1 << x2) >> 1) << 3)) - 1)  # psci_affinity_mask
        matching = [i for i in range(len(vm.running)) if mpidr(i) & mask == x1 & mask]
        if not matching:
            return _ret(smccc.PSCI_INVALID_PARAMETERS)
        return _ret(smccc.AFFINITY_ON if any(vm.running[i] for i in matching) else smccc.AFFINITY_OFF)
    if fid == MIGRATE_INFO_TYPE:
        return _ret(smccc.PSCI_TOS_MP)
    if fid in (SYSTEM_OFF, SYSTEM_RESET):  # x0 preloaded with INTERNAL_FAILURE
        event = KVM_SYSTEM_EVENT_SHUTDOWN if fid == SYSTEM_OFF else KVM_SYSTEM_EVENT_RESET
        return Answer(_ret(smccc.PSCI_INTERNAL_FAILURE).regs, event=event)
    if fid in SYSTEM_RESET2:
        reset_type = x1 & U32  # a u32 argument
        if reset_type == 0 or reset_type >= 1 << 31:
            return Answer(_ret(smccc.PSCI_INTERNAL_FAILURE).regs, event=KVM_SYSTEM_EVENT_RESET)
        return _ret(smccc.PSCI_INVALID_PARAMETERS)
    return _ret(smccc.NOT_SUPPORTED)


# --- two VMs on one host -------------------------------------------------------------------------------

@dataclass
class Pair:
    """The calling VM (`a`) and the one beside it (`b`) on one host."""

    host: Host
    a: Machine
    b: Machine
    tasks: list[Task]
    hidden: bool
    b_memory: list[bytes]
    b_state: list[tuple[int, dict[int, int]]]


COUNTERS = (KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_PTIMER_CNT)


def vcpu_state(vcpu: Vcpu, host: Host) -> tuple[int, dict[int, int]]:
    """A vCPU as a VMM can read it: its power state and every register, the counters as their
    offset from the host's (which time does not move) and ISTATUS left out (time moves it)."""
    regs = {r: vcpu.get_one_reg(r) for r in vcpu.get_reg_list()}
    for r in COUNTERS:
        regs[r] = (host.counter() - regs[r]) & U64
    for r in (KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_PTIMER_CTL):
        regs[r] &= ~CTL_ISTATUS
    return vcpu.get_mp_state(), regs


def make_pair(kind: CpuKind, *, pvtime: bool, lpt: bool, hidden: bool, seed: int) -> Pair:
    """VM `a` (2 vCPUs, PV time and LPT as asked, its RAM and records random bytes) and VM `b`
    (2 vCPUs, PV time and LPT, random RAM), `b` having run once, both on one host."""
    host = Host(25_000_000, ncpus=2)
    kvm = Kvm(host)
    rng = random.Random(seed)
    cpus = ScriptCpu if kind is CpuKind.MODEL else None
    a = Machine(kvm, MachineConfig("a", vcpus=2, memory_mib=1, pvtime=pvtime, lpt_pv_hz=10**9 if lpt else None,
                                   cpu=kind), cpus=cpus)
    b = Machine(kvm, MachineConfig("b", vcpus=2, memory_mib=1, lpt_pv_hz=10**9, cpu=kind), cpus=cpus)
    for m in (a, b):
        for _, _, buf in m.regions():
            buf[:] = rng.randbytes(len(buf))
        if m.config.lpt_pv_hz is not None:  # a fresh LPT record (one with a history is a migrated one)
            lpt = m.config.layout.lpt_record() - m.config.layout.pvtime_base
            m.regions()[1][2][lpt:lpt + LPT_RECORD_SIZE] = bytes(LPT_RECORD_SIZE)
    if hidden:
        a.vcpus[0].set_one_reg(KVM_REG_ARM_STD_HYP_BMAP, 0)
    task_b = host.spawn("b-vcpu0")
    if kind is CpuKind.MODEL:
        b.cpus[0].script.append(lambda: b.cpus[0].view.hvc(smccc.PV_TIME_ST))
    else:
        b.ram[:8] = _code([_hvc(0), WFI])  # x0 = 0 at reset: an unknown id
        b.vcpus[0].init()
        b.vcpus[1].init(power_off=True)
        b.vcpus[0].set_one_reg(REG_PC, RAM_BASE)
    with host.on_cpu(task_b, 1_000_000):
        b.vcpus[0].run()
    return Pair(host, a, b, [host.spawn(f"a-vcpu{i}") for i in range(2)], hidden,
                [bytes(buf) for _, _, buf in b.regions()], [vcpu_state(v, host) for v in b.vcpus])


def view_of(pair: Pair) -> VmView:
    a, layout = pair.a, pair.a.config.layout
    return VmView([v.get_mp_state() == KVM_MP_STATE_RUNNABLE for v in a.vcpus],
                  [layout.steal_record(v.id) for v in a.vcpus] if a.config.pvtime else None,
                  layout.lpt_record() if a.config.lpt_pv_hz is not None else None, not pair.hidden)


def memory_of(m: Machine) -> list[tuple[int, bytes]]:
    return [(base, bytes(buf)) for _, base, buf in m.regions()]


def check_effects(pair: Pair, call: Call, want: Answer, got: tuple[int, ...], ex: Exit,
                  before: list[tuple[int, bytes]], was: VmView, first: bool) -> None:
    """After one call: the answer, the power states, the exits, and every byte of both VMs."""
    a = pair.a
    what = f"{call}: x0..x3 {tuple(hex(r) for r in got)}"
    assert tuple(got) == want.regs, f"{what}, expected {tuple(hex(r) for r in want.regs)}"
    if want.event is not None:
        assert ex == SystemEventExit(want.event), f"{what}: exit {ex}"
    else:
        assert isinstance(ex, (HaltExit, IntrExit)), f"{what}: exit {ex}"
    for i, vcpu in enumerate(a.vcpus):
        running = was.running[i]
        if want.event is not None or (want.off and i == call.vcpu):
            running = False
        if want.on is not None and want.on[0] == i:
            running = True
            assert (vcpu.get_one_reg(REG_PC), vcpu.get_one_reg(reg_x(0))) == want.on[1:], f"{what}: CPU_ON target"
        assert vcpu.get_mp_state() == (KVM_MP_STATE_RUNNABLE if running else KVM_MP_STATE_STOPPED), \
            f"{what}: vCPU {i} power state"
    allowed: list[tuple[int, int]] = []
    if a.config.pvtime:
        record = a.config.layout.steal_record(call.vcpu)
        allowed.append((record, STEAL_RECORD_SIZE) if want.st else (record + STEAL_TIME_OFFSET, 8))
    if first and a.config.lpt_pv_hz is not None:
        allowed.append((a.config.layout.lpt_record(), LPT_RECORD_SIZE))
    after = memory_of(a)
    for (base, old), (_, new) in zip(before, after, strict=True):
        if old == new:
            continue
        stray = [base + i for i in range(len(old)) if old[i] != new[i]
                 and not any(s <= base + i < s + n for s, n in allowed)]
        assert not stray, f"{what}: the hypervisor wrote guest memory at {[hex(g) for g in stray[:8]]}"
    if want.st:
        record = a.config.layout.steal_record(call.vcpu)
        assert a.read_guest(record, STEAL_RECORD_SIZE) == bytes(STEAL_RECORD_SIZE), f"{what}: record not zeroed"
    assert [bytes(buf) for _, _, buf in pair.b.regions()] == pair.b_memory, f"{what}: the other VM's memory changed"


class StealWatch:
    """What each vCPU's stolen_time must read after a KVM_RUN (kvm_update_stolen_time): the value
    before plus its thread's run_delay since its last load; 0 after PV_TIME_ST, which zeroes the
    record and takes the baseline anew. The first load only takes the baseline."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.baseline: dict[int, int] = {}

    def value(self, vcpu: int) -> int:
        raw = self.pair.a.read_guest(self.pair.a.config.layout.steal_record(vcpu) + STEAL_TIME_OFFSET, 8)
        assert raw is not None
        return int.from_bytes(raw, "little")

    def check(self, call: Call, want: Answer, old: int) -> None:
        task = self.pair.tasks[call.vcpu]
        expected = 0 if want.st else (old + task.run_delay_ns - self.baseline.get(call.vcpu, task.run_delay_ns)) & U64
        assert self.value(call.vcpu) == expected, f"{call}: stolen_time {self.value(call.vcpu)}, expected {expected}"
        self.baseline[call.vcpu] = task.run_delay_ns


def check_beside(pair: Pair) -> None:
    """The other VM: every register and power state as before."""
    assert [vcpu_state(v, pair.host) for v in pair.b.vcpus] == pair.b_state, "the other VM's vCPUs changed"


# --- model guests ----------------------------------------------------------------------------------------

def check_model_calls(pvtime: bool, lpt: bool, hidden: bool, seed: int, sequence: list[Call]) -> None:
    """Run `sequence` as the guest code of VM `a`'s model vCPUs, one call per KVM_RUN."""
    pair = make_pair(CpuKind.MODEL, pvtime=pvtime, lpt=lpt, hidden=hidden, seed=seed)
    a = pair.a
    steal = StealWatch(pair)
    first = True
    for call in sequence:
        vcpu, cpu = a.vcpus[call.vcpu], a.cpus[call.vcpu]
        assert isinstance(cpu, ScriptCpu)
        if vcpu.get_mp_state() == KVM_MP_STATE_STOPPED:
            vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)  # the VMM powers it on where it stands
        was, before = view_of(pair), memory_of(a)
        old = steal.value(call.vcpu) if a.config.pvtime else 0
        want = reference(was, call.vcpu, call.regs, call.conduit, call.imm)
        insn = cpu.view.smc if call.conduit is Conduit.SMC else cpu.view.hvc
        cpu.script.append(lambda insn=insn, call=call: insn(*call.regs, imm=call.imm))
        pair.host.hold(pair.tasks[call.vcpu], call.wait_ns)
        with pair.host.on_cpu(pair.tasks[call.vcpu], 1_000_000):
            ex = vcpu.run()
        assert not cpu.script, f"{call}: the vCPU did not enter the guest ({ex})"
        TALLY["hypercalls"] += 1
        assert isinstance(cpu.result, tuple)
        check_effects(pair, call, want, cpu.result, ex, before, was, first)
        if a.config.pvtime:
            steal.check(call, want, old)
        first = False
        if want.suspend:
            vcpu.init()  # KVM_ARM_VCPU_INIT ends the wait (no interrupt will come)
    check_beside(pair)


@settings(max_examples=50)
@given(st.booleans(), st.booleans(), st.sampled_from([False, False, True]), st.integers(0, 1 << 32),
       st.lists(calls(2), min_size=1, max_size=25))
def test_random_hypercalls_from_a_model_guest_answer_as_smccc_and_touch_only_their_records(
        pvtime, lpt, hidden, seed, sequence):
    check_model_calls(pvtime, lpt, hidden, seed, sequence)


# --- AArch64 guests ------------------------------------------------------------------------------------------

WFI = 0xD503_207F
NOP = 0xD503_201F
STR_XZR_X9 = 0xF900_013F  # str xzr, [x9]
MMIO = 0x0A00_0000  # no memslot: a store there is an MMIO exit to the VMM
BLOCK = 0x80  # bytes of code per call: x9, x0..x3, the call, the store


def _hvc(imm: int) -> int:
    return 0xD400_0002 | imm << 5


def _smc(imm: int) -> int:
    return 0xD400_0003 | imm << 5


def _mov64(reg: int, value: int) -> list[int]:
    """MOVZ then three MOVKs: `value` into x`reg`."""
    return [(0xD280_0000 if hw == 0 else 0xF280_0000) | hw << 21 | (value >> (16 * hw) & 0xFFFF) << 5 | reg
            for hw in range(4)]


def _code(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def program(sequence: list[Call]) -> bytes:
    """One block per call at RAM_BASE + BLOCK * i: x0..x3 set, HVC/SMC #imm, then a store to MMIO
    (an exit to the VMM, with x0..x3 as the call left them); the blocks run on one after another."""
    out = bytearray()
    for call in sequence:
        words = [*_mov64(9, MMIO), *(w for n in range(4) for w in _mov64(n, call.regs[n]))]
        words += [(_smc if call.conduit is Conduit.SMC else _hvc)(call.imm), STR_XZR_X9]
        out += _code(words + [NOP] * (BLOCK // 4 - len(words)))
    return bytes(out)


def check_unicorn_calls(pvtime: bool, lpt: bool, hidden: bool, seed: int, sequence: list[Call]) -> None:
    """Run `sequence` as AArch64 code on VM `a`'s vCPU 0 (vCPU 1 starts powered off)."""
    pair = make_pair(CpuKind.UNICORN, pvtime=pvtime, lpt=lpt, hidden=hidden, seed=seed)
    a = pair.a
    code = program(sequence)
    a.ram[:len(code)] = code
    vcpu = a.vcpus[0]
    a.vcpus[1].init(power_off=True)
    restart = True
    first = True
    steal = StealWatch(pair)
    for i, call in enumerate(sequence):
        call = Call(0, call.regs, call.conduit, call.imm, call.wait_ns)
        if restart:  # KVM_ARM_VCPU_INIT: ends a PSCI wait, powers the vCPU on; then start at block i
            vcpu.init()
            vcpu.set_one_reg(REG_PC, RAM_BASE + BLOCK * i)
        was, before = view_of(pair), memory_of(a)
        old = steal.value(0) if a.config.pvtime else 0
        want = reference(was, 0, call.regs, call.conduit, call.imm)
        pair.host.hold(pair.tasks[0], call.wait_ns)
        with pair.host.on_cpu(pair.tasks[0], 10_000_000):
            ex = vcpu.run()
        TALLY["hypercalls"] += 1
        got = tuple(vcpu.get_one_reg(reg_x(n)) for n in range(4))
        restart = want.event is not None or want.off or want.suspend
        if restart:
            assert not isinstance(ex, MmioExit), f"{call}: the guest went on after the call ({ex})"
            check_effects(pair, call, want, got, ex, before, was, first)
        else:
            assert ex == MmioExit(MMIO, 8, bytes(8), True), f"{call}: stopped before the end of its block ({ex})"
            check_effects(pair, call, want, got, HaltExit(None), before, was, first)
        if a.config.pvtime:
            steal.check(call, want, old)
        first = False
    check_beside(pair)


@settings(max_examples=15)
@given(st.booleans(), st.booleans(), st.sampled_from([False, False, True]), st.integers(0, 1 << 32),
       st.lists(calls(1), min_size=1, max_size=12))
def test_random_hypercalls_from_aarch64_code_answer_as_smccc_and_touch_only_their_records(
        pvtime, lpt, hidden, seed, sequence):
    check_unicorn_calls(pvtime, lpt, hidden, seed, sequence)


def test_the_encoder_writes_what_it_says():
    """The hand-encoded instructions disassemble as intended (capstone)."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    words = [*_mov64(3, 0xFEDC_BA98_7654_3210), _hvc(0x1234), _smc(7), STR_XZR_X9, WFI]
    text = [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(_code(words), 0)]
    assert text == ["mov x3, #0x3210", "movk x3, #0x7654, lsl #16", "movk x3, #0xba98, lsl #32",
                    "movk x3, #0xfedc, lsl #48", "hvc #0x1234", "smc #7", "str xzr, [x9]", "wfi"]


@pytest.mark.parametrize("regs,conduit,imm,x0", [
    ((smccc.PSCI_AFFINITY_INFO, 1 << 40, 0, 0), Conduit.HVC, 0, smccc.to_u64(smccc.PSCI_INVALID_PARAMETERS)),
    ((smccc.PSCI_FEATURES, 0xFFFF_FFFF_0000_0000 | CPU_OFF, 0, 0), Conduit.HVC, 0, 0),
    ((smccc.SMCCC_VERSION, 1, 2, 3), Conduit.SMC, 9, U64),
])
def test_the_reference_answers_as_linux_on_known_cases(regs, conduit, imm, x0):
    """The reference itself, on cases read off Linux (kvm_psci_vcpu_affinity_info checks the
    affinity's reserved bits; PSCI_FEATURES takes a u32; handle_smc answers ~0)."""
    assert reference(VmView([True, False], [0x1000, 0x1040], None, True), 0, regs, conduit, imm).regs[0] == x0

