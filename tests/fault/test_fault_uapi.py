"""Random sequences of KVM userspace calls with random arguments (issue 10's uAPI campaign).

A VMM can hand KVM anything: the only failure allowed is a `KvmError` carrying the errno Linux
returns, never another exception. After each call the test checks what a VMM can observe:

- a refused call changes nothing: every register of every vCPU reads back as before, and the
  memslots are the same (a guest probe inside the next KVM_RUN reads and writes through them);
- an accepted KVM_SET_ONE_REG reads back unchanged, and setting a register to the value it
  reads is accepted (every id KVM_GET_REG_LIST lists round-trips; no other id is accepted);
- the calls with documented errno orders answer exactly as Linux does: memslots
  (virt/kvm/kvm_main.c: __kvm_set_memory_region; arch/arm64/kvm/mmu.c:
  kvm_arch_prepare_memory_region), the PV-time vCPU attribute (arch/arm64/kvm/pvtime.c:
  kvm_arm_pvtime_set_attr, REFERENCE section 3), the LPT VM attributes (REFERENCE section 5),
  the firmware bitmap (arch/arm64/kvm/hypercalls.c: kvm_arm_set_fw_reg_bmap), KVM_GET_DIRTY_LOG,
  KVM_{GET,SET}_MP_STATE, KVM_CREATE_VCPU, KVM_GET_REG_LIST and copy_from_user (EFAULT);
- a dirty log keeps every page the guest wrote while logging was on, across a memslot move or a
  call that changes nothing (kvm_prepare_memory_region keeps the old dirty bitmap);
- KVM_RUN writes no byte of guest memory but the running vCPU's stolen-time field and, at the
  VM's first run, its LPT record.

`check_sequence` runs one example; the campaign (tools/fault_campaign.py) calls it too.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvtime.abi.widths import U32, U64
from pvtime.abi.errno import E2BIG, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENXIO
from pvtime.abi.records import LPT_RECORD_SIZE, STEAL_TIME_OFFSET
from pvtime.abi.sysregs import CTL_ISTATUS
from pvtime.abi.uapi import (
    CORE_REG_IDS, EL1_SYSREG_IDS, INVALID_GPA, KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA,
    KVM_ARM_VCPU_TIMER_CTRL,
    KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ, KVM_ARM_VM_PVTIME_LPT_IPA, KVM_CAP_MAX_VCPUS,
    KVM_CAP_NR_VCPUS, KVM_CAP_STEAL_TIME, KVM_MAX_VCPUS, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_MEM_VALID_FLAGS, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED,
    KVM_MP_STATE_SUSPENDED, KVM_REG_ARM_CNTKCTL_EL1, KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CTL,
    KVM_REG_ARM_PTIMER_CVAL, KVM_REG_ARM_STD_HYP_BMAP, KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED,
    KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CVAL, KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_SHIFT, KVM_USER_MEM_SLOTS, PAGE_SIZE, REG_PSTATE, reg_size,
)
from pvtime.cpu import CpuKind, create_cpu
from pvtime.host import Host, Task
from pvtime.kvm import Exit, Kvm, KvmError, MmioExit, Quirk, Vcpu, Vm
from tests.conftest import ScriptCpu
from tests.fault.tally import TALLY

IPA_LIMIT = 1 << 40  # the VM's default 40-bit IPA space (KVM_VM_TYPE_ARM_IPA_SIZE 0)
POOL_PAGES = 16  # each backing buffer the VMM owns: 64 KiB
ERRNOS = frozenset({E2BIG, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENXIO})
U64_MAX = (1 << 64) - 1

# Where memslots (and so accepted IPAs) are likely: low memory, QEMU's PV-time granule, RAM, the
# top of the IPA space.
GPA_BASES = (0, 0x8000, 0x090A_0000, 0x4000_0000, IPA_LIMIT - 8 * PAGE_SIZE)
TIMER_REGS = (KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_TIMER_CVAL, KVM_REG_ARM_PTIMER_CTL,
              KVM_REG_ARM_PTIMER_CNT, KVM_REG_ARM_PTIMER_CVAL, KVM_REG_ARM_CNTKCTL_EL1)
KNOWN_REGS = (*CORE_REG_IDS, KVM_REG_ARM_STD_HYP_BMAP, *TIMER_REGS, *EL1_SYSREG_IDS)
CTL_REGS = frozenset({KVM_REG_ARM_TIMER_CTL, KVM_REG_ARM_PTIMER_CTL})
COUNTER_REGS = frozenset({KVM_REG_ARM_TIMER_CNT, KVM_REG_ARM_PTIMER_CNT})  # per VM, not per vCPU
VM_WIDE_REGS = COUNTER_REGS | {KVM_REG_ARM_STD_HYP_BMAP}

# What KVM keeps of a value userspace sets (arch/arm64/kvm/arch_timer.c kvm_arm_timer_set_reg): a
# timer's cnt_ctl is a u32. (Finding U1, fixed: pvtime kept only ENABLE and IMASK, and CNTKCTL_EL1
# only its low 32 bits.)
KEPT_ON_SET = {KVM_REG_ARM_TIMER_CTL: U32, KVM_REG_ARM_PTIMER_CTL: U32}


# --- arguments: what a VMM may pass ----------------------------------------------------------------

def user_values(size: int = 8) -> st.SearchStrategy[tuple[Any, ...]]:
    """A value passed by address (attr.addr, reg.addr), as a tagged tuple built at call time: an
    int (in or out of range), bytes of any length, views with any item size, or nonsense."""
    top = 1 << (8 * size)
    return st.one_of(
        st.tuples(st.just("int"), st.integers(0, top - 1)),
        st.tuples(st.just("int"), st.sampled_from([0, 1, top - 1, top, -1, 1 << 64, 1 << 128, 64, 0x1000])),
        st.tuples(st.just("int"), st.integers(-(1 << 130), 1 << 130)),
        st.tuples(st.just("bytes"), st.binary(max_size=2 * size + 2)),
        st.tuples(st.just("bytearray"), st.binary(max_size=2 * size + 2)),
        st.tuples(st.just("array"), st.sampled_from("BHILQbd"), st.integers(0, 4), st.integers(0, 255)),
        st.tuples(st.just("strided"), st.binary(min_size=0, max_size=4 * size)),
        st.tuples(st.sampled_from(["released", "none", "bool", "float", "str"])),
    )


def make_value(spec: tuple[Any, ...]) -> object:
    """The Python object a `user_values` tag describes."""
    kind = spec[0]
    if kind == "int":
        return spec[1]
    if kind == "bytes":
        return bytes(spec[1])
    if kind == "bytearray":
        return bytearray(spec[1])
    if kind == "array":
        typecode, count, fill = spec[1], spec[2], spec[3]
        return memoryview(array(typecode, [float(fill) if typecode == "d" else fill % 128] * count))
    if kind == "strided":
        return memoryview(spec[1])[::2]
    if kind == "released":
        view = memoryview(b"\x40" * 16)
        view.release()
        return view
    return {"none": None, "bool": True, "float": 64.0, "str": "0x40"}[kind]


def readable(value: object, size: int) -> int | None:
    """copy_from_user of `size` bytes as pvtime.kvm.uaccess documents it: the int, or None (EFAULT)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            data = memoryview(value).tobytes()
        except ValueError:  # a released view: the address is gone
            return None
        return int.from_bytes(data[:size], "little") if len(data) >= size else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << (8 * size):
        return value
    return None


def _ipa() -> st.SearchStrategy[tuple[Any, ...]]:
    """An IPA for the PV-time or LPT attribute: usually 64-byte aligned near a likely memslot."""
    near = st.builds(lambda base, off: ("int", base + off), st.sampled_from(GPA_BASES),
                     st.one_of(st.integers(0, 16 * PAGE_SIZE // 64).map(lambda k: 64 * k), st.integers(0, 0x1_0000)))
    return st.one_of(near, near, user_values(8))


def _reg_id() -> st.SearchStrategy[int]:
    """A register id: one the vCPU has, or one mutated from it (a bit, the size, the index)."""
    known = st.sampled_from(KNOWN_REGS)
    return st.one_of(
        known, known, known,
        st.builds(lambda r, bit: r ^ (1 << bit), known, st.integers(0, 63)),
        st.builds(lambda r, size: r & ~KVM_REG_SIZE_MASK | size << KVM_REG_SIZE_SHIFT, known, st.integers(0, 15)),
        st.builds(lambda r, index: r & ~0xFFFF | index, known, st.integers(0, 0xFFFF)),
        st.sampled_from([0, -1, 1 << 64, REG_PSTATE | 1 << 64]),
        st.integers(0, U64_MAX),
    )


def _reg_value() -> st.SearchStrategy[tuple[Any, ...]]:
    pstates = st.builds(lambda mode, daif, nzcv, high: ("int", mode | daif << 6 | nzcv << 28 | high << 32),
                        st.sampled_from([0b0000, 0b0100, 0b0101, 0b0001, 0b1001, 0b10000]),
                        st.integers(0, 15), st.integers(0, 15), st.sampled_from([0, 1, 0xF000_0000]))
    small = st.integers(0, 0xFFFF).map(lambda v: ("int", v))
    return st.one_of(user_values(8), user_values(16), user_values(4), pstates, small)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a sensible argument, sometimes a bad one: a sequence must get somewhere to find bugs."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: good if ok else bad)


_vcpu = st.integers(0, 3)
MEMSLOT = st.tuples(
    st.just("memslot"), mostly(st.integers(0, 3), st.sampled_from([-1, 511, 512, 1 << 32])),
    mostly(st.builds(lambda base, page: base + page * PAGE_SIZE, st.sampled_from(GPA_BASES), st.integers(0, 12)),
           st.sampled_from([-PAGE_SIZE, 1, PAGE_SIZE - 1, IPA_LIMIT, IPA_LIMIT - PAGE_SIZE, 1 << 64, 1 << 70])),
    mostly(st.sampled_from(range(9)).map(lambda n: n * PAGE_SIZE), st.sampled_from([-PAGE_SIZE, 100, 1 << 64, POOL_PAGES * PAGE_SIZE])),
    mostly(st.tuples(st.just("pool"), st.integers(0, 2), st.sampled_from([0, 0, 0, 1, 4])),
           st.tuples(st.sampled_from(["none", "bytes", "strided", "released", "int"]))),
    mostly(st.sampled_from([0, 0, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, 3]),
           st.sampled_from([4, 1 << 31, -1])))
VCPU_ATTR = st.tuples(
    st.just("vcpu_attr"), st.sampled_from(["set", "set", "get", "has"]), _vcpu,
    mostly(st.just(KVM_ARM_VCPU_PVTIME_CTRL), st.integers(-1, 4)),
    mostly(st.just(KVM_ARM_VCPU_PVTIME_IPA), st.sampled_from([-1, 1, 2, 1 << 64])), _ipa())
VM_ATTR = st.tuples(
    st.just("vm_attr"), st.sampled_from(["set", "set", "get", "has"]),
    mostly(st.just(KVM_ARM_VM_PVTIME_LPT_CTRL), st.integers(-1, 3)),
    mostly(st.sampled_from([KVM_ARM_VM_PVTIME_LPT_IPA, KVM_ARM_VM_PVTIME_LPT_FREQ]), st.sampled_from([-1, 2, 3])),
    st.one_of(_ipa(), st.integers(0, 2_000_000_000).map(lambda hz: ("int", hz)), user_values(4)))
RUN = st.tuples(st.just("run"), _vcpu, st.sampled_from([False] * 7 + [True]), st.integers(0, 3_000_000),
                st.integers(0, 1 << 16))
OPS = st.one_of(
    MEMSLOT, MEMSLOT, MEMSLOT, VCPU_ATTR, VCPU_ATTR, VM_ATTR, VM_ATTR, RUN, RUN, RUN,
    st.tuples(st.just("set_reg"), _vcpu, _reg_id(), _reg_value()),
    st.tuples(st.just("set_reg"), _vcpu, _reg_id(), _reg_value()),
    st.tuples(st.just("dirty_log"), mostly(st.integers(0, 3), st.sampled_from([-1, 512]))),
    st.tuples(st.just("dirty_log"), st.integers(0, 3)),
    st.tuples(st.just("create_vcpu"), mostly(st.integers(0, 4), st.sampled_from([-1, KVM_MAX_VCPUS - 1,
                                                                                 KVM_MAX_VCPUS, 1 << 64]))),
    st.tuples(st.just("get_reg"), _vcpu, _reg_id()),
    st.tuples(st.just("roundtrip"), _vcpu, st.sampled_from(KNOWN_REGS)),
    st.tuples(st.just("reg_list"), _vcpu, st.one_of(st.none(), st.integers(-1, 120))),
    st.tuples(st.just("mp_state"), _vcpu, st.one_of(st.none(), st.sampled_from(
        [KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED, KVM_MP_STATE_HALTED, KVM_MP_STATE_SUSPENDED, -1, 1 << 64]))),
    st.tuples(st.just("init"), _vcpu, st.booleans()),
    st.tuples(st.just("check_extension"), st.sampled_from(["vm", "kvm"]),
              st.one_of(st.sampled_from([KVM_CAP_STEAL_TIME, KVM_CAP_NR_VCPUS, KVM_CAP_MAX_VCPUS]),
                        st.integers(-1, 300), st.just(1 << 64))),
    st.tuples(st.just("quirks"), st.sampled_from(list(Quirk))),
    st.tuples(st.just("complete_mmio"), _vcpu, st.binary(max_size=9)),
    # The VMM writes its own memory: the LPT record (a restored one: sequence, frequencies), or a
    # stolen-time record.
    st.tuples(st.just("poke"), st.sampled_from(["lpt", "steal"]), st.sampled_from([8, 16, 20, 0, 40]),
              st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from([b"\x02", b"\x00" * 4, b"\xff" * 4]))),
)
# Closing the VM ends a sequence: it comes last, in one sequence out of eight.
SEQUENCES = st.tuples(st.lists(OPS, min_size=4, max_size=32),
                      st.sampled_from([[]] * 7 + [[("close",)]])).map(lambda t: t[0] + t[1])
WORLDS = st.fixed_dictionaries({
    "cpu": st.sampled_from(["model", "model", "unicorn"]),
    "schedstats": st.sampled_from([True, True, True, False]),
    "protected": st.sampled_from([False, False, False, True]),
    "vcpus": st.integers(1, 2),
    "slots": st.sampled_from([
        [], [(0x4000_0000, 8, 0, 0), (0x090A_0000, 1, 2, 0)],
        [(0x4000_0000, 8, 0, KVM_MEM_LOG_DIRTY_PAGES), (0x090A_0000, 1, 2, KVM_MEM_LOG_DIRTY_PAGES)],
        [(0x4000_0000, 4, 1, KVM_MEM_READONLY), (0x8000, 2, 0, 0)],
    ]),
})


# --- the shadow: what the VMM knows it asked for ---------------------------------------------------

@dataclass
class Slot:
    """A memslot as accepted: where, how big, its flags, and its userspace address."""

    gpa: int
    size: int
    flags: int
    pool: int
    offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def key(self) -> tuple[int, int]:
        return self.pool, self.offset


@dataclass
class World:
    """One host, its KVM, the VM under test, its vCPUs and the shadow state."""

    host: Host
    kvm: Kvm
    vm: Vm
    cpu: str
    supported: bool  # PV time (KVM_CAP_STEAL_TIME)
    lpt_supported: bool
    pool: list[Any]  # the VMM's buffers (bytearrays and an anonymous mmap)
    vcpus: list[Vcpu] = field(default_factory=list)
    cpus: dict[int, Any] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    slots: dict[int, Slot] = field(default_factory=dict)
    dirty: dict[int, set[int]] = field(default_factory=dict)  # pages known written while logging
    ipa: dict[int, int] = field(default_factory=dict)  # vCPU id -> stolen-time IPA
    lpt_ipa: int = INVALID_GPA
    lpt_hz: int = 0
    bitmap: int = KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED
    has_run: bool = False
    mmio_pending: set[int] = field(default_factory=set)
    closed: bool = False

    def buffer(self, slot: Slot) -> memoryview:
        return memoryview(self.pool[slot.pool])[slot.offset * PAGE_SIZE:slot.offset * PAGE_SIZE + slot.size]

    def slot_of(self, gpa: int, size: int = 1) -> Slot | None:
        """The shadow slot holding all of [gpa, gpa+size) (lowest slot id first, as pvtime finds none
        twice: slots never overlap)."""
        for s in self.slots.values():
            if s.gpa <= gpa and gpa + size <= s.end:
                return s
        return None

    def writable_page(self, gpa: int) -> bool:
        s = self.slot_of(gpa - gpa % PAGE_SIZE, PAGE_SIZE)
        return s is not None and not s.flags & KVM_MEM_READONLY


def make_world(spec: dict[str, Any]) -> World:
    host = Host(25_000_000, schedstats=spec["schedstats"])
    kvm = Kvm(host)
    cpus: dict[int, Any] = {}

    def factory(index: int) -> Any:
        cpu = ScriptCpu(index) if spec["cpu"] == "model" else create_cpu(CpuKind.UNICORN, index)
        cpus[index] = cpu
        return cpu

    vm = kvm.create_vm("fuzzed", protected=spec["protected"], cpu=factory)
    anon = mmap.mmap(-1, POOL_PAGES * PAGE_SIZE, flags=mmap.MAP_PRIVATE)
    pool = [bytearray(POOL_PAGES * PAGE_SIZE), bytearray(b"\xA5" * (POOL_PAGES * PAGE_SIZE)), anon]
    world = World(host, kvm, vm, spec["cpu"], host.schedstats and not spec["protected"], not spec["protected"],
                  pool, cpus=cpus)
    for i in range(spec["vcpus"]):
        _add_vcpu(world, vm.create_vcpu(i))
    # A VMM's usual start, which the sequence then changes: RAM, and the PV-time granule.
    for slot, (gpa, pages, pool, flags) in enumerate(spec["slots"]):
        world.vm.set_user_memory_region(slot, gpa, pages * PAGE_SIZE, memoryview(world.pool[pool]), flags)
        world.slots[slot] = Slot(gpa, pages * PAGE_SIZE, flags, pool, 0)
    return world


def _add_vcpu(world: World, vcpu: Vcpu) -> None:
    world.vcpus.append(vcpu)
    world.tasks[vcpu.id] = world.host.spawn(f"vcpu{vcpu.id}")


# --- observations ----------------------------------------------------------------------------------

def dump(world: World) -> dict[int, dict[int, int]]:
    """Every register of every vCPU (KVM_GET_REG_LIST + KVM_GET_ONE_REG); ISTATUS left out, as
    the counter computes it."""
    out = {}
    for vcpu in world.vcpus:
        regs = {}
        for reg in vcpu.get_reg_list():
            value = vcpu.get_one_reg(reg)
            regs[reg] = value & ~CTL_ISTATUS if reg in CTL_REGS else value
        out[vcpu.id] = regs
    return out


def memory(world: World) -> list[bytes]:
    return [bytes(b) for b in world.pool]


def expect_errno(call: Callable[[], object], errno: int | None, what: str) -> object:
    """Make the call; it must raise KvmError(errno), or return if `errno` is None."""
    try:
        result = call()
    except KvmError as err:
        assert errno is not None, f"{what}: refused with {err}, expected to be accepted"
        assert err.errno == errno, f"{what}: {err}, expected errno {errno}"
        return err
    assert errno is None, f"{what}: accepted ({result!r}), expected errno {errno}"
    return result


def kvm_call(call: Callable[[], object]) -> tuple[object, KvmError | None]:
    """Make a call whose outcome is not predicted: only a KvmError with a known errno may come out."""
    try:
        return call(), None
    except KvmError as err:
        assert err.errno in ERRNOS, f"unexpected errno {err.errno}: {err}"
        return None, err


# --- the oracles -----------------------------------------------------------------------------------

def memslot_errno(world: World, slot: int, gpa: int, size: int, key: tuple[int, int] | None, flags: int) -> int | None:
    """__kvm_set_memory_region's answer, in its order (then kvm_arch_prepare_memory_region's)."""
    if flags < 0 or flags & ~KVM_MEM_VALID_FLAGS:
        return EINVAL
    if not 0 <= slot < KVM_USER_MEM_SLOTS:
        return EINVAL
    if size < 0 or size % PAGE_SIZE or gpa < 0 or gpa % PAGE_SIZE:
        return EINVAL
    old = world.slots.get(slot)
    if size == 0:
        return None if old is not None else EINVAL
    if key is None or key[1] * PAGE_SIZE + size > POOL_PAGES * PAGE_SIZE:
        return EINVAL  # not a writable buffer of that size (access_ok fails)
    if old is not None:
        if old.key() != key or old.size != size or (old.flags ^ flags) & KVM_MEM_READONLY:
            return EINVAL
        if old.gpa == gpa and old.flags == flags:
            return None  # nothing to change
    if old is None or old.gpa != gpa:  # KVM_MR_CREATE or KVM_MR_MOVE
        for other_id, other in world.slots.items():
            if other_id != slot and gpa < other.end and other.gpa < gpa + size:
                return EEXIST
    if gpa + size > IPA_LIMIT:
        return EFAULT
    return None


def do_memslot(world: World, slot: int, gpa: int, size: int, buf: tuple[Any, ...], flags: int) -> None:
    key: tuple[int, int] | None = None
    if buf[0] == "pool":
        key = (buf[1], buf[2])
        userspace: Any = memoryview(world.pool[buf[1]])[buf[2] * PAGE_SIZE:]
    else:
        userspace = {"none": None, "bytes": bytes(POOL_PAGES * PAGE_SIZE), "int": 0x7F00_0000_0000,
                     "strided": memoryview(world.pool[0])[::2]}.get(buf[0])
        if buf[0] == "released":
            userspace = memoryview(world.pool[0])
            userspace.release()
    errno = memslot_errno(world, slot, gpa, size, key, flags)
    expect_errno(lambda: world.vm.set_user_memory_region(slot, gpa, size, userspace, flags), errno,
                 f"set_user_memory_region({slot}, {gpa:#x}, {size:#x}, {buf}, {flags:#x})")
    if errno is not None:
        return
    old = world.slots.get(slot)
    if size == 0:
        del world.slots[slot]
        world.dirty.pop(slot, None)
        return
    assert key is not None
    world.slots[slot] = Slot(gpa, size, flags, *key)
    keeps_log = old is not None and old.flags & flags & KVM_MEM_LOG_DIRTY_PAGES
    if not keeps_log:  # a new dirty bitmap, or none (kvm_prepare_memory_region)
        world.dirty.pop(slot, None)


def do_dirty_log(world: World, slot: int) -> None:
    s = world.slots.get(slot)
    if not 0 <= slot < KVM_USER_MEM_SLOTS:
        errno: int | None = EINVAL
    elif s is None or not s.flags & KVM_MEM_LOG_DIRTY_PAGES:
        errno = ENOENT
    else:
        errno = None
    bitmap = expect_errno(lambda: world.vm.get_dirty_log(slot), errno, f"get_dirty_log({slot})")
    if errno is not None or s is None:
        return
    assert isinstance(bitmap, bytes)
    npages = s.size // PAGE_SIZE
    assert len(bitmap) == (npages + 63) // 64 * 8, f"dirty log of slot {slot}: {len(bitmap)} bytes for {npages} pages"
    reported = {i for i in range(len(bitmap) * 8) if bitmap[i >> 3] >> (i & 7) & 1}
    assert reported <= set(range(npages)), f"dirty log of slot {slot} reports pages past the slot: {reported}"
    lost = world.dirty.pop(slot, set()) - reported
    assert not lost, f"dirty log of slot {slot} lost pages {sorted(lost)} written while logging"


def do_create_vcpu(world: World, vcpu_id: int) -> None:
    if not 0 <= vcpu_id < KVM_MAX_VCPUS:
        expect_errno(lambda: world.vm.create_vcpu(vcpu_id), EINVAL, f"create_vcpu({vcpu_id})")
    elif any(v.id == vcpu_id for v in world.vcpus):
        expect_errno(lambda: world.vm.create_vcpu(vcpu_id), EEXIST, f"create_vcpu({vcpu_id})")
    else:
        vcpu, err = kvm_call(lambda: world.vm.create_vcpu(vcpu_id))
        if err is None:
            assert isinstance(vcpu, Vcpu) and vcpu.id == vcpu_id
            _add_vcpu(world, vcpu)
        else:  # KVM refuses a vCPU once an in-kernel vGIC is initialised (kvm_vm_ioctl_create_vcpu)
            assert err.errno in (EBUSY, EINVAL) and world.has_run, f"create_vcpu({vcpu_id}): {err}"


TIMER_PPIS = {0: 27, 1: 30, 2: 28, 3: 26}  # Documentation/virt/kvm/devices/vcpu.rst: the defaults


def do_vcpu_attr(world: World, verb: str, vcpu: Vcpu, group: int, attr: int, spec: tuple[Any, ...]) -> None:
    """kvm_arm_pvtime_{set,get,has}_attr (REFERENCE section 3), and kvm_arm_timer_*_attr."""
    unknown = group != KVM_ARM_VCPU_PVTIME_CTRL or not world.supported or attr != KVM_ARM_VCPU_PVTIME_IPA
    what = f"vcpu{vcpu.id}.{verb}_device_attr({group}, {attr}, {spec})"
    if group == KVM_ARM_VCPU_TIMER_CTRL:  # the timers' PPIs: EINVAL to set without a vGIC
        timer = attr in TIMER_PPIS
        call = {"has": lambda: vcpu.has_device_attr(group, attr), "get": lambda: vcpu.get_device_attr(group, attr),
                "set": lambda: vcpu.set_device_attr(group, attr, make_value(spec))}[verb]
        got = expect_errno(call, EINVAL if verb == "set" else None if timer else ENXIO, what)
        assert verb != "get" or not timer or got == TIMER_PPIS[attr], f"{what}: {got!r}"
        return
    current = world.ipa.get(vcpu.id, INVALID_GPA)
    if verb == "has":
        expect_errno(lambda: vcpu.has_device_attr(group, attr), ENXIO if unknown else None, what)
        return
    if verb == "get":
        got = expect_errno(lambda: vcpu.get_device_attr(group, attr), ENXIO if unknown else None, what)
        if not unknown:
            assert got == current, f"{what}: {got!r}, the IPA is {current:#x}"
        return
    value = make_value(spec)
    ipa = readable(value, 8)
    if unknown:
        errno: int | None = ENXIO
    elif ipa is None:
        errno = EFAULT
    elif ipa % 64:
        errno = EINVAL
    elif current != INVALID_GPA:
        errno = EEXIST
    elif not world.writable_page(ipa):
        errno = EINVAL
    else:
        errno = None
    expect_errno(lambda: vcpu.set_device_attr(group, attr, value), errno, what)
    if errno is None:
        assert ipa is not None
        world.ipa[vcpu.id] = ipa


def do_vm_attr(world: World, verb: str, group: int, attr: int, spec: tuple[Any, ...]) -> None:
    """The LPT VM attributes (REFERENCE section 5)."""
    unknown = (group != KVM_ARM_VM_PVTIME_LPT_CTRL or not world.lpt_supported
               or attr not in (KVM_ARM_VM_PVTIME_LPT_IPA, KVM_ARM_VM_PVTIME_LPT_FREQ))
    what = f"vm.{verb}_device_attr({group}, {attr}, {spec})"
    vm = world.vm
    if verb == "has":
        expect_errno(lambda: vm.has_device_attr(group, attr), ENXIO if unknown else None, what)
        return
    if verb == "get":
        got = expect_errno(lambda: vm.get_device_attr(group, attr), ENXIO if unknown else None, what)
        if not unknown:
            assert got == (world.lpt_ipa if attr == KVM_ARM_VM_PVTIME_LPT_IPA else world.lpt_hz), what
        return
    value = make_value(spec)
    errno: int | None
    if unknown:
        errno = ENXIO
    elif attr == KVM_ARM_VM_PVTIME_LPT_IPA:
        ipa = readable(value, 8)
        if ipa is None:
            errno = EFAULT
        elif ipa % 64:
            errno = EINVAL
        elif world.lpt_ipa != INVALID_GPA:
            errno = EEXIST
        elif not world.writable_page(ipa):
            errno = EINVAL
        else:
            errno = None
    else:
        hz = readable(value, 4)
        errno = EFAULT if hz is None else EINVAL if hz == 0 else EEXIST if world.lpt_hz else None
    expect_errno(lambda: vm.set_device_attr(group, attr, value), errno, what)
    if errno is None:
        if attr == KVM_ARM_VM_PVTIME_LPT_IPA:
            world.lpt_ipa = readable(value, 8) or 0
        else:
            world.lpt_hz = readable(value, 4) or 0


def _listed(vcpu: Vcpu, reg_id: int) -> bool:
    return 0 <= reg_id <= U64_MAX and reg_id in vcpu.get_reg_list()


def do_set_reg(world: World, vcpu: Vcpu, reg_id: int, spec: tuple[Any, ...]) -> dict[int, dict[int, int]] | None:
    """KVM_SET_ONE_REG: returns the register dump the call must leave (None: not predicted)."""
    before = dump(world)
    value = make_value(spec)
    what = f"vcpu{vcpu.id}.set_one_reg({reg_id:#x}, {spec})"
    TALLY["calls"] += 1
    _, err = kvm_call(lambda: vcpu.set_one_reg(reg_id, value))
    val = readable(value, reg_size(reg_id)) if 0 <= reg_id <= U64_MAX else None
    if not _listed(vcpu, reg_id):
        # kvm_sys_reg_set_user and kvm_arm_set_fw_reg copy the value before they look the id up:
        # an unknown id with an unreadable value may be EFAULT.
        allowed = (EINVAL, ENOENT) if val is not None else (EINVAL, ENOENT, EFAULT)
        assert err is not None and err.errno in allowed, f"{what}: an unlisted id, {err or 'accepted'}"
        return before
    if val is None:
        assert err is not None and err.errno == EFAULT, f"{what}: unreadable value, {err or 'accepted'}"
        return before
    if reg_id == KVM_REG_ARM_STD_HYP_BMAP:  # kvm_arm_set_fw_reg_bmap
        errno = (EINVAL if val & ~KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED
                 else EBUSY if world.has_run and val != world.bitmap else None)
        assert (err.errno if err else None) == errno, f"{what}: {err or 'accepted'}, expected errno {errno}"
    if err is not None:
        assert err.errno in (EINVAL, EBUSY), f"{what}: {err}"
        return before
    if reg_id == KVM_REG_ARM_STD_HYP_BMAP:
        world.bitmap = val
    expected = val & KEPT_ON_SET.get(reg_id, -1)
    if reg_id in CTL_REGS:
        expected &= ~CTL_ISTATUS
    after = before
    targets = world.vcpus if reg_id in VM_WIDE_REGS else [vcpu]
    for target in targets:
        after[target.id][reg_id] = expected
    if reg_id in COUNTER_REGS or reg_id in (KVM_REG_ARM_TIMER_CVAL, KVM_REG_ARM_PTIMER_CVAL):
        return None  # the timers' state may change with them; the register itself is checked below
    return after


def do_roundtrip(world: World, vcpu: Vcpu, reg_id: int) -> None:
    """Every register the vCPU lists takes back the value it reads, changing nothing."""
    if reg_id not in vcpu.get_reg_list():
        return
    before = dump(world)
    value = vcpu.get_one_reg(reg_id)
    TALLY["calls"] += 2
    expect_errno(lambda: vcpu.set_one_reg(reg_id, value), None, f"vcpu{vcpu.id}: {reg_id:#x} set to the {value:#x} it reads")
    assert dump(world) == before, f"vcpu{vcpu.id}: setting {reg_id:#x} to the value it reads changed registers"


def do_get_reg(vcpu: Vcpu, reg_id: int) -> None:
    listed = _listed(vcpu, reg_id)
    got, err = kvm_call(lambda: vcpu.get_one_reg(reg_id))
    if listed:
        assert err is None, f"vcpu{vcpu.id}.get_one_reg({reg_id:#x}), a listed id: {err}"
        assert isinstance(got, int) and 0 <= got < 1 << (8 * reg_size(reg_id)), f"{reg_id:#x} reads {got!r}"
    else:
        assert err is not None and err.errno in (EINVAL, ENOENT), f"get_one_reg({reg_id:#x}), unlisted: {err or got}"


def do_reg_list(vcpu: Vcpu, n: int | None) -> None:
    regs = vcpu.get_reg_list()
    assert len(set(regs)) == len(regs), "KVM_GET_REG_LIST lists an id twice"
    expect_errno(lambda: vcpu.get_reg_list(n), E2BIG if n is not None and n < len(regs) else None,
                 f"get_reg_list({n})")


def do_mp_state(vcpu: Vcpu, state: int | None) -> None:
    if state is None:
        assert vcpu.get_mp_state() in (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED)
        return
    ok = state in (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED)
    before = vcpu.get_mp_state()
    expect_errno(lambda: vcpu.set_mp_state(state), None if ok else EINVAL, f"set_mp_state({state})")
    assert vcpu.get_mp_state() == (state if ok else before)


def do_check_extension(world: World, where: str, cap: int) -> None:
    answer = (world.vm if where == "vm" else world.kvm).check_extension(cap)
    assert isinstance(answer, int) and answer >= 0
    if cap == KVM_CAP_STEAL_TIME:
        assert answer == int(world.supported if where == "vm" else world.host.schedstats)
        if where == "vm" and world.vcpus:  # it agrees with KVM_HAS_DEVICE_ATTR
            _, err = kvm_call(lambda: world.vcpus[0].has_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA))
            assert (err is None) == bool(answer)


def do_complete_mmio(world: World, vcpu: Vcpu, data: bytes) -> None:
    _, err = kvm_call(lambda: vcpu.complete_mmio(data))
    if vcpu.id not in world.mmio_pending:
        assert err is not None and err.errno == EINVAL, f"complete_mmio with no read pending: {err or 'accepted'}"
    elif err is None:
        world.mmio_pending.discard(vcpu.id)


def do_run(world: World, vcpu: Vcpu, immediate: bool, hold_ns: int, seed: int) -> None:
    """KVM_RUN on the vCPU's thread after `hold_ns` of waiting; a model vCPU's guest code probes
    the memslots. Only the running vCPU's stolen-time field and the LPT record may change besides
    what the probe writes."""
    task = world.tasks[vcpu.id]
    world.host.hold(task, hold_ns)
    before = memory(world)
    first = not world.has_run
    lpt_half = (world.lpt_ipa != INVALID_GPA) != (world.lpt_hz != 0)
    cpu = world.cpus[vcpu.id]
    probe = Probe(world, cpu, seed)
    if isinstance(cpu, ScriptCpu):
        cpu.script.append(probe)
    vcpu.immediate_exit = immediate
    try:
        with world.host.on_cpu(task, 100_000):
            ex, err = kvm_call(vcpu.run)
    finally:
        vcpu.immediate_exit = False
        if isinstance(cpu, ScriptCpu):
            cpu.script.clear()
    if first:
        _check_lpt_start(world, lpt_half, err)
    else:
        assert err is None, f"run: {err}"  # only the VM's start can fail
    if err is not None:
        assert memory(world) == before, "a failed KVM_RUN wrote guest memory"
        return
    world.has_run = True
    assert isinstance(ex, Exit), ex
    if isinstance(ex, MmioExit) and not ex.is_write:
        world.mmio_pending.add(vcpu.id)
    if world.cpu != "model":
        return  # machine code writes what it likes
    assert not probe.errors, probe.errors
    allowed = set(probe.written)
    if not immediate:  # vcpu_load: kvm_update_stolen_time
        ipa = world.ipa.get(vcpu.id)
        if ipa is not None and world.slot_of(ipa + STEAL_TIME_OFFSET, 8) is not None:
            allowed |= _places(world, ipa + STEAL_TIME_OFFSET, 8)
            s = world.slot_of(ipa + STEAL_TIME_OFFSET, 8)
            if s is not None and s.flags & KVM_MEM_LOG_DIRTY_PAGES and not s.flags & KVM_MEM_READONLY:
                world.dirty.setdefault(_slot_id(world, s), set()).add((ipa + STEAL_TIME_OFFSET - s.gpa) // PAGE_SIZE)
    if first and world.lpt_ipa != INVALID_GPA:
        allowed |= _places(world, world.lpt_ipa, LPT_RECORD_SIZE)
    after = memory(world)
    for pool, (old, new) in enumerate(zip(before, after, strict=True)):
        if old != new:
            changed = {(pool, i) for i in range(len(old)) if old[i] != new[i]}
            stray = sorted(changed - allowed)
            assert not stray, f"KVM_RUN wrote buffer {pool} at offsets {[hex(i) for _, i in stray[:8]]}"


def _check_lpt_start(world: World, half: bool, err: KvmError | None) -> None:
    """lpt.vm_start at the first KVM_RUN: EINVAL half configured, EFAULT for a record outside
    writable memory, EINVAL for a record of another PV frequency; else the run goes on."""
    if half:
        assert err is not None and err.errno == EINVAL, f"first run with LPT half configured: {err or 'ran'}"
        return
    if world.lpt_ipa == INVALID_GPA:
        assert err is None, f"first run without LPT: {err}"
        return
    s = world.slot_of(world.lpt_ipa, LPT_RECORD_SIZE)
    if s is None or not world.writable_page(world.lpt_ipa):
        assert err is not None and err.errno == EFAULT, f"first run, LPT record unbacked: {err or 'ran'}"
        return
    record = bytes(world.buffer(s)[world.lpt_ipa - s.gpa:world.lpt_ipa - s.gpa + LPT_RECORD_SIZE])
    sequence, pv_freq = int.from_bytes(record[8:16], "little"), int.from_bytes(record[20:24], "little")
    if sequence == 0:
        assert err is None, f"first run, a fresh LPT record: {err}"
    elif pv_freq != world.lpt_hz:
        assert err is not None and err.errno == EINVAL, f"first run, record of {pv_freq} Hz: {err or 'ran'}"
    else:
        assert err is None or err.errno == EINVAL, f"first run, a migrated record: {err}"


def _slot_id(world: World, slot: Slot) -> int:
    return next(i for i, s in world.slots.items() if s is slot)


def _places(world: World, gpa: int, size: int) -> set[tuple[int, int]]:
    """The (buffer, offset) bytes that back [gpa, gpa+size) through the shadow memslots."""
    s = world.slot_of(gpa, size)
    if s is None:
        return set()
    start = s.offset * PAGE_SIZE + gpa - s.gpa
    return {(s.pool, start + i) for i in range(size)}


class Probe:
    """Guest code of one KVM_RUN: reads each memslot's first and last byte, reads beside it, and
    stores one byte into a slot; records any disagreement with the shadow."""

    def __init__(self, world: World, cpu: Any, seed: int) -> None:
        self.world = world
        self.cpu = cpu
        self.seed = seed
        self.errors: list[str] = []
        self.written: set[tuple[int, int]] = set()

    def __call__(self) -> None:
        world = self.world
        traps = self.cpu.traps  # the hypervisor side of this vCPU, while its guest code runs
        for slot_id, s in sorted(world.slots.items()):
            buf = world.buffer(s)
            for gpa in (s.gpa, s.end - 1):
                got = traps.read_memory(gpa, 1)
                if got != bytes(buf[gpa - s.gpa:gpa - s.gpa + 1]):
                    self.errors.append(f"slot {slot_id}: guest reads {got!r} at {gpa:#x}, the VMM's buffer holds "
                                       f"{bytes(buf[gpa - s.gpa:gpa - s.gpa + 1])!r}")
            below = s.gpa - 1
            if below >= 0 and world.slot_of(below) is None and traps.read_memory(below, 1) is not None:
                self.errors.append(f"guest reads {below:#x}, which no memslot backs")
        if not world.slots:
            return
        ids = sorted(world.slots)
        slot_id = ids[self.seed % len(ids)]
        s = world.slots[slot_id]
        gpa = s.gpa + (self.seed * 97) % s.size
        byte = bytes([self.seed & 0xFF])
        ok = traps.write_memory(gpa, byte)
        readonly = bool(s.flags & KVM_MEM_READONLY)
        if ok == readonly:
            self.errors.append(f"guest store to {gpa:#x} in slot {slot_id} (flags {s.flags}): {'accepted' if ok else 'refused'}")
        if ok:
            self.written.add((s.pool, s.offset * PAGE_SIZE + gpa - s.gpa))
            if world.buffer(s)[gpa - s.gpa] != byte[0]:
                self.errors.append(f"guest store to {gpa:#x} did not reach the VMM's buffer")
            if s.flags & KVM_MEM_LOG_DIRTY_PAGES:
                world.dirty.setdefault(slot_id, set()).add((gpa - s.gpa) // PAGE_SIZE)


def do_poke(world: World, target: str, offset: int, data: bytes) -> None:
    """The VMM stores into the memory it owns, at a record KVM keeps (where a slot backs it)."""
    base = world.lpt_ipa if target == "lpt" else next(iter(world.ipa.values()), INVALID_GPA)
    if base == INVALID_GPA:
        return
    s = world.slot_of(base + offset, len(data))
    if s is not None:
        world.buffer(s)[base + offset - s.gpa:base + offset - s.gpa + len(data)] = data


def do_close(world: World) -> None:
    world.vm.close()
    world.vm.close()  # closing twice does nothing
    probe = world.kvm.create_vm()
    assert probe.name == "vm0", f"the closed VM is still open on its KVM ({probe.name})"
    probe.close()
    world.closed = True


# --- one example -----------------------------------------------------------------------------------

def check_sequence(spec: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    """Run one random call sequence against a fresh VM, checking the invariants after each call."""
    world = make_world(spec)
    regs = dump(world)
    for op in ops:
        if world.closed:
            break
        name = op[0]
        vcpu = world.vcpus[op[1] % len(world.vcpus)] if name in _VCPU_OPS else None
        TALLY["calls"] += 1
        expected: dict[int, dict[int, int]] | None = regs
        try:
            if name == "memslot":
                do_memslot(world, *op[1:])
            elif name == "dirty_log":
                do_dirty_log(world, op[1])
            elif name == "create_vcpu":
                do_create_vcpu(world, op[1])
                expected = None
            elif name == "vcpu_attr":
                do_vcpu_attr(world, op[1], world.vcpus[op[2] % len(world.vcpus)], *op[3:])
            elif name == "vm_attr":
                do_vm_attr(world, *op[1:])
            elif name == "set_reg":
                assert vcpu is not None
                expected = do_set_reg(world, vcpu, op[2], op[3])
            elif name == "get_reg":
                assert vcpu is not None
                do_get_reg(vcpu, op[2])
            elif name == "roundtrip":
                assert vcpu is not None
                do_roundtrip(world, vcpu, op[2])
            elif name == "reg_list":
                assert vcpu is not None
                do_reg_list(vcpu, op[2])
            elif name == "mp_state":
                assert vcpu is not None
                do_mp_state(vcpu, op[2])
            elif name == "init":
                assert vcpu is not None
                vcpu.init(power_off=op[2])
                world.mmio_pending.discard(vcpu.id)
                expected = None
            elif name == "check_extension":
                do_check_extension(world, op[1], op[2])
            elif name == "quirks":
                world.vm.enable_quirks(op[1])
            elif name == "complete_mmio":
                assert vcpu is not None
                do_complete_mmio(world, vcpu, op[2])
                expected = None
            elif name == "run":
                assert vcpu is not None
                do_run(world, vcpu, op[2], op[3], op[4])
                expected = None
            elif name == "poke":
                do_poke(world, *op[1:])
            elif name == "close":
                do_close(world)
                break
        except KvmError as err:
            raise AssertionError(f"{op}: an unpredicted refusal: {err}") from err
        regs_now = dump(world)
        if expected is not None:
            assert regs_now == expected, f"{op}: registers changed: {_diff(expected, regs_now)}"
        regs = regs_now


_VCPU_OPS = frozenset({"set_reg", "get_reg", "roundtrip", "reg_list", "mp_state", "init",
                       "complete_mmio", "run"})


def _diff(want: dict[int, dict[int, int]], got: dict[int, dict[int, int]]) -> str:
    out = []
    for vid, regs in got.items():
        for reg, value in regs.items():
            if want.get(vid, {}).get(reg) != value:
                out.append(f"vcpu{vid} {reg:#x}: {want.get(vid, {}).get(reg)!r} -> {value:#x}")
    return "; ".join(out[:6])


@settings(max_examples=150)
@given(WORLDS, SEQUENCES)
def test_random_uapi_call_sequences_only_fail_with_an_errno_and_change_nothing_when_refused(spec, ops):
    check_sequence(spec, ops)


# --- regressions of what the sequences found -------------------------------------------------------

def _model_world(vcpus: int = 1) -> World:
    return make_world({"cpu": "model", "schedstats": True, "protected": False, "vcpus": vcpus, "slots": []})


def test_a_memslot_set_again_unchanged_keeps_its_dirty_log():
    """kvm_main.c: __kvm_set_memory_region returns 0 at once when nothing changes (dirty bitmap
    kept): a VMM re-registering its RAM during a migration must not lose the pages logged so far."""
    host = Host()
    vm = Kvm(host).create_vm(cpu=ScriptCpu)
    vcpu = vm.create_vcpu(0)
    buf = bytearray(4 * PAGE_SIZE)
    vm.set_user_memory_region(0, 0x4000_0000, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES)
    vcpu.set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, 0x4000_1000)
    with host.on_cpu(host.spawn("t"), 0):
        vcpu.run()  # vcpu_load writes the stolen-time field: page 1 is dirty
    vm.set_user_memory_region(0, 0x4000_0000, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES)
    assert vm.get_dirty_log(0)[0] == 0b10


def test_a_memslot_moved_while_logging_keeps_its_dirty_log():
    """kvm_prepare_memory_region: a KVM_MR_MOVE of a slot that keeps KVM_MEM_LOG_DIRTY_PAGES keeps
    the old dirty bitmap."""
    host = Host()
    vm = Kvm(host).create_vm(cpu=ScriptCpu)
    vcpu = vm.create_vcpu(0)
    buf = bytearray(4 * PAGE_SIZE)
    vm.set_user_memory_region(0, 0x4000_0000, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES)
    vcpu.set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, 0x4000_2000)
    with host.on_cpu(host.spawn("t"), 0):
        vcpu.run()  # vcpu_load writes the stolen-time field: page 2 is dirty
    vm.set_user_memory_region(0, 0x5000_0000, len(buf), buf, KVM_MEM_LOG_DIRTY_PAGES)
    assert vm.get_dirty_log(0)[0] == 0b100


def test_a_memslot_cannot_change_its_userspace_address():
    """__kvm_set_memory_region: an existing slot given another userspace_addr is EINVAL, even one
    inside the same buffer; it keeps its backing."""
    host = Host()
    vm = Kvm(host).create_vm()
    buf = bytearray(8 * PAGE_SIZE)
    buf[PAGE_SIZE] = 0x11
    vm.set_user_memory_region(0, 0x4000_0000, 4 * PAGE_SIZE, buf)
    with pytest.raises(KvmError) as err:
        vm.set_user_memory_region(0, 0x4000_0000, 4 * PAGE_SIZE, memoryview(buf)[PAGE_SIZE:])
    assert err.value.errno == EINVAL
    vm.set_user_memory_region(0, 0x4000_0000, 4 * PAGE_SIZE, memoryview(buf)[:])  # the same address: fine


@pytest.mark.parametrize("userspace", ["strided", "released", "int", "str"])
def test_a_memslot_buffer_that_is_no_usable_memory_is_einval(userspace):
    """access_ok fails for an address that is no writable memory: EINVAL, not a Python TypeError."""
    vm = Kvm(Host()).create_vm()
    buf: Any = {"strided": memoryview(bytearray(2 * PAGE_SIZE))[::2], "int": 0x7F00_0000_0000, "str": "ram",
                "released": memoryview(bytearray(PAGE_SIZE))}[userspace]
    if userspace == "released":
        buf.release()
    with pytest.raises(KvmError) as err:
        vm.set_user_memory_region(0, 0x4000_0000, PAGE_SIZE, buf)
    assert err.value.errno == EINVAL


def test_a_released_view_passed_by_address_is_efault():
    """copy_from_user from an address that is gone: EFAULT (include/linux/uaccess.h)."""
    vm = Kvm(Host()).create_vm()
    view = memoryview(b"\x40" * 8)
    view.release()
    with pytest.raises(KvmError) as err:
        vm.set_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ, view)
    assert err.value.errno == EFAULT


@pytest.mark.parametrize("reg,value", [(KVM_REG_ARM_TIMER_CTL, 0x9), (KVM_REG_ARM_PTIMER_CTL, 1 << 40 | 0x8),
                                       (KVM_REG_ARM_CNTKCTL_EL1, 1 << 40)])
def test_an_accepted_timer_register_reads_back_as_kvm_keeps_it(reg, value):
    """Finding U1. arch_timer.c kvm_arm_timer_set_reg stores a CTL but its ISTATUS in the u32
    cnt_ctl (read_timer_ctl adds ISTATUS back once expired); CNTKCTL_EL1 is a plain sys_reg to
    userspace (sys_regs.c reg_from_user), all 64 bits."""
    vcpu = _model_world().vcpus[0]
    vcpu.set_one_reg(reg, value)
    assert vcpu.get_one_reg(reg) & ~CTL_ISTATUS == value & KEPT_ON_SET.get(reg, U64) & ~CTL_ISTATUS
