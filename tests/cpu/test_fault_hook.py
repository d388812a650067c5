"""The access-fault hook (`pvtime.cpu.unicorn.fault_hook`, native/access_fault.c): it records what
the engine refused -- kind, address, size, stored value, the PC and the instruction there -- the C
hook on both host architectures (each shipped object run in unicorn) and its Python twin alike."""

from __future__ import annotations

import ctypes

import pytest
from unicorn import (
    UC_HOOK_CODE, UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_PROT_ALL, UC_PROT_EXEC, Uc,
)
from unicorn import arm64_const as A
from unicorn import x86_const as X

from pvtime.abi.uapi import KVM_MEM_READONLY
from pvtime.cpu.unicorn import UnicornCpu
from pvtime.cpu.unicorn.fault_hook import FaultRecord
from pvtime.cpu.unicorn.native import native_hook
from pvtime.kvm import InternalErrorExit, MmioExit
from tests.cpu.asm import assemble
from tests.cpu.rig import RAM_BASE, Rig
from tests.cpu.shipped import ABIS, set_up_call, shipped

BASE, STATE, STACK, STUBS, RET = 0x10_0000, 0x40_0000, 0x50_0000, 0x60_0000, 0x60_1000
REG_READ, VMEM_READ = STUBS, STUBS + 0x100
ENGINE, PC, WORD = 0x1234_5678_9ABC, 0xFFFF_8000_1000_0010, 0xB940_0020
# The fifth and sixth integer arguments of the C calling convention (tests.cpu.shipped has four).
FIFTH_SIXTH = {"aarch64": (A.UC_ARM64_REG_X4, A.UC_ARM64_REG_X5), "x86_64": (X.UC_X86_REG_R8, X.UC_X86_REG_R9)}


def _emulated(arch: str, kind: int, address: int, size: int, value: int, fetch_ok: bool) -> FaultRecord:
    """Run the shipped pvtime_access_fault for `arch` once in unicorn, its uc_reg_read stub
    answering PC and its uc_vmem_read stub WORD (or failing): the record after."""
    entry, segments = shipped("access_fault", arch, "pvtime_access_fault")
    abi = ABIS[arch]
    uc = Uc(abi.engine, abi.mode)
    for base, size_ in ((BASE, 0x10_0000), (STATE, 0x1000), (STACK - 0x1_0000, 0x1_0000), (STUBS, 0x2000)):
        uc.mem_map(base, size_, UC_PROT_ALL)
    for vaddr, data in segments:
        uc.mem_write(BASE + vaddr, data)
    for stub in (REG_READ, VMEM_READ, RET):
        uc.mem_write(stub, abi.ret)
    record = FaultRecord(reg_read=REG_READ, vmem_read=VMEM_READ, pc_id=A.UC_ARM64_REG_PC, exec_prot=UC_PROT_EXEC,
                         count=7, pc=1, word=2, word_ok=1)
    uc.mem_write(STATE, bytes(record))
    set_up_call(uc, abi, (ENGINE, kind, address, size), STACK, RET)
    fifth, sixth = FIFTH_SIXTH[arch]  # the value and the state
    uc.reg_write(fifth, value & (2**64 - 1))
    uc.reg_write(sixth, STATE)
    args, result = abi.args, abi.result

    def reg_read(uc: Uc, *_: object) -> None:  # uc_reg_read(engine, PC, uint64_t *) -> 0
        assert uc.reg_read(args[0]) == ENGINE and uc.reg_read(args[1]) & 0xFFFF_FFFF == A.UC_ARM64_REG_PC
        uc.mem_write(uc.reg_read(args[2]), PC.to_bytes(8, "little"))
        uc.reg_write(result, 0)

    def vmem_read(uc: Uc, *_: object) -> None:  # uc_vmem_read(engine, PC, EXEC, buf, 4) -> 0 or an error
        assert [uc.reg_read(r) for r in (args[0], args[1])] == [ENGINE, PC]
        assert uc.reg_read(args[2]) & 0xFFFF_FFFF == UC_PROT_EXEC
        assert uc.reg_read(fifth) == 4  # the size
        if fetch_ok:
            uc.mem_write(uc.reg_read(args[3]), WORD.to_bytes(4, "little"))
        uc.reg_write(result, 0 if fetch_ok else 6)

    uc.hook_add(UC_HOOK_CODE, reg_read, begin=REG_READ, end=REG_READ)
    uc.hook_add(UC_HOOK_CODE, vmem_read, begin=VMEM_READ, end=VMEM_READ)
    uc.emu_start(BASE + entry, RET)
    assert uc.reg_read(result) & 0xFF == 0  # not handled: the engine stops with the fault
    return FaultRecord.from_buffer_copy(uc.mem_read(STATE, ctypes.sizeof(FaultRecord)))


def _fields(r: FaultRecord) -> tuple[int, ...]:
    return (r.count, r.type, r.address, r.size, r.value, r.pc, r.word, r.word_ok)


@pytest.mark.parametrize("arch", sorted(ABIS))
def test_the_shipped_hook_records_the_refused_access(arch: str) -> None:
    r = _emulated(arch, UC_MEM_WRITE_UNMAPPED, 0x0900_0000, 4, -2, fetch_ok=True)
    assert _fields(r) == (8, UC_MEM_WRITE_UNMAPPED, 0x0900_0000, 4, 2**64 - 2, PC, WORD, 1)
    r = _emulated(arch, UC_MEM_READ_UNMAPPED, 2**64 - 8, 8, 0, fetch_ok=False)
    assert _fields(r) == (8, UC_MEM_READ_UNMAPPED, 2**64 - 8, 8, 0, PC, 0, 0)  # nothing to fetch at the PC


def _records(native: bool | None) -> list[tuple[object, ...]]:
    """A load and a store to MMIO, a store to a read-only slot, and a load by an instruction KVM
    cannot emulate, on a real engine: each exit and the record behind it."""
    program = assemble("""
        movz x1, #0x0900, lsl #16
        ldr w2, [x1, #0x18]
        mvn x3, xzr
        strh w3, [x1, #2]
        movz x4, #0x4010, lsl #16
        str x3, [x4]
        ldp x5, x6, [x1]
    """)
    rig = Rig(program, cpu=lambda i: UnicornCpu(i, native=native))
    rig.vm.set_user_memory_region(1, 0x4010_0000, 0x1000, bytearray(0x1000), flags=KVM_MEM_READONLY)
    seen: list[tuple[object, ...]] = []
    faults = rig.cpus[0]._memory._faults  # noqa: SLF001 - what the hook recorded
    for _ in range(4):
        ex = rig.run()
        seen.append((ex, _fields(faults.record)))
        if isinstance(ex, MmioExit) and not ex.is_write:
            rig.vcpus[0].complete_mmio(bytes(ex.len))
    return seen


def test_native_and_python_hooks_record_the_same_accesses() -> None:
    if native_hook("access_fault") is None:
        pytest.skip("no native access-fault hook for this host: both runs would use the Python hook")
    native = _records(True)
    assert [type(ex).__name__ for ex, _ in native] == ["MmioExit", "MmioExit", "MmioExit", "InternalErrorExit"]
    ex, (count, kind, address, size, value, pc, word, ok) = native[1]
    assert ex == MmioExit(0x0900_0002, 2, b"\xff\xff", True)
    assert (count, kind, address, size, value & 0xFFFF, pc, ok) == (2, UC_MEM_WRITE_UNMAPPED, 0x0900_0002, 2,
                                                                  0xFFFF, RAM_BASE + 12, 1)
    assert word == int.from_bytes(assemble("strh w3, [x1, #2]"), "little")
    assert native[2][1][1] == UC_MEM_WRITE_PROT and native[2][0] == MmioExit(0x4010_0000, 8, b"\xff" * 8, True)
    assert isinstance(native[3][0], InternalErrorExit)
    assert _records(False) == native


def test_a_vcpu_without_memslots_faults_at_its_first_fetch() -> None:
    """The hook covers every address from the start: before any memslot exists, the first fetch
    is a fault that says no memslot backs the PC (not unicorn's own error)."""
    from pvtime.abi.uapi import REG_PC
    from pvtime.cpu import create_cpu
    from pvtime.host import Host
    from pvtime.kvm import Kvm

    host = Host(25_000_000)
    cpus = [create_cpu("unicorn", 0)]
    vcpu = Kvm(host).create_vm("t", cpu=cpus.__getitem__).create_vcpu(0)
    vcpu.init()
    vcpu.set_one_reg(REG_PC, 0x4000_0000)
    with host.on_cpu(host.spawn("t-vcpu0"), 1_000_000):
        ex = vcpu.run()
    assert isinstance(ex, InternalErrorExit)
    assert ex.detail == "instruction fetch from 0x40000000, which no memslot backs"
