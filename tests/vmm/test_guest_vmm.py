"""The VMM side of AArch64 guests: ELF loading, devices, semihosting, and `pvtime guest run`."""

from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner

from pvtime.abi.uapi import KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED
from pvtime.cli import main
from pvtime.cpu import CpuKind
from pvtime.host import Host
from pvtime.kvm import Kvm
from pvtime.vmm import Machine, MachineConfig, StopReason, VcpuThread
from pvtime.vmm.elf import ElfError, elf_layout, load_elf
from pvtime.vmm.semihosting import SYS_EXIT_EXTENDED, SYS_WRITE0, SYS_WRITEC, serve
from tests.cpu.asm import assemble
from tests.cpu.elfwriter import LOAD_ADDR, make_elf
from tests.vmm.helpers import rss_kib

RAM_BASE = 0x4000_0000

HELLO = assemble("""
    adr x1, msg
    mov x0, #4            /* SYS_WRITE0 */
    hlt #0xf000
    adr x1, bang
    mov x0, #3            /* SYS_WRITEC */
    hlt #0xf000
    mov x2, #0x09000000   /* the PL011: "ok" */
    mov w3, #'o'
    str w3, [x2]
    mov w3, #'k'
    str w3, [x2]
    ldr w4, [x2, #0x18]   /* FR: transmitter never full */
    adr x1, block
    mov x0, #0x20         /* SYS_EXIT_EXTENDED, ApplicationExit, 42 */
    hlt #0xf000
    b .
    .balign 8
block: .quad 0x20026, 42
msg: .asciz "hello, "
bang: .ascii "!"
""")

SPIN = assemble("b .")
FAULT = assemble("""
    mov x1, #0x08000000
    ldr w0, [x1, #0x10]
""")


def run_machine(image: bytes, *, name: str = "vm", host: Host | None = None, vcpus: int = 1,
                budget_ns: int = 10_000_000) -> Machine:
    host = host or Host()
    machine = Machine(Kvm(host), MachineConfig(name, vcpus=vcpus, memory_mib=4, cpu=CpuKind.UNICORN))
    machine.load_elf(image)
    task = host.spawn(f"{name}-vcpu0")
    with host.on_cpu(task, budget_ns) as slice_:
        VcpuThread(machine, machine.vcpus[0]).step(slice_)
    return machine


def test_elf_loads_segments_and_starts_vcpu0_at_the_entry() -> None:
    machine = run_machine(make_elf(HELLO))
    assert machine.console == b"hello, !ok"
    assert machine.exit_status == 42 and machine.stopped == StopReason.guest_exit(42)
    assert machine.ram[LOAD_ADDR - RAM_BASE:LOAD_ADDR - RAM_BASE + 8] == HELLO[:8]


def test_guest_ram_is_allocated_lazily() -> None:
    """A 4 GiB VM that runs a small guest costs host memory for the pages it touches, as with
    QEMU's anonymous-mmap RAM: `guest run --memory 4096` once took 4.2 GB (measured +4096 MiB
    RSS with eager buffers, +10 MiB with mmap)."""
    host = Host()
    before = rss_kib()
    machine = Machine(Kvm(host), MachineConfig("big", memory_mib=4096, cpu=CpuKind.UNICORN))
    machine.load_elf(make_elf(HELLO))
    task = host.spawn("big-vcpu0")
    with host.on_cpu(task, 10_000_000) as slice_:
        VcpuThread(machine, machine.vcpus[0]).step(slice_)
    grown_mib = (rss_kib() - before) // 1024
    assert machine.console == b"hello, !ok" and machine.exit_status == 42
    assert len(machine.ram) == 4096 << 20
    assert machine.ram[LOAD_ADDR - RAM_BASE:LOAD_ADDR - RAM_BASE + 8] == HELLO[:8]
    assert grown_mib < 256, f"a 4 GiB VM made RSS grow by {grown_mib} MiB"


def test_other_vcpus_start_powered_off() -> None:
    host = Host()
    machine = Machine(Kvm(host), MachineConfig("vm", vcpus=2, memory_mib=4, cpu=CpuKind.UNICORN))
    machine.load_elf(make_elf(SPIN))
    assert [v.get_mp_state() for v in machine.vcpus] == [KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED]


BAD_IMAGES = [
    (lambda d: b"MZ" + d[2:], "not an ELF file"),
    (lambda d: d[:18] + struct.pack("<H", 62) + d[20:], "EM_X86_64, not EM_AARCH64"),
    (lambda d: d[:16] + struct.pack("<H", 3) + d[18:], "ET_DYN"),
    (lambda d: d[:4] + b"\x01" + d[5:], "ELF32"),
    (lambda d: d[:130], "past the end of the file"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_IMAGES)
def test_bad_images_are_refused_with_the_problem_named(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ElfError, match=message):
        load_elf(mutate(make_elf(HELLO)), bytearray(1 << 20), RAM_BASE)


def test_segment_outside_ram_and_bad_entry_are_refused() -> None:
    with pytest.raises(ElfError, match=r"outside guest RAM \[0x40000000, 0x40100000\)"):
        load_elf(make_elf(HELLO, bss=1 << 20), bytearray(1 << 20), RAM_BASE)
    with pytest.raises(ElfError, match="entry point 0x10 is not inside"):
        load_elf(make_elf(HELLO, entry=0x10), bytearray(1 << 20), RAM_BASE)


@pytest.mark.parametrize("image", [make_elf(HELLO, bss=1 << 20), make_elf(HELLO, entry=0x10),
                                   *(mutate(make_elf(HELLO)) for mutate, _ in BAD_IMAGES)])
def test_elf_layout_refuses_what_load_elf_refuses_and_a_refused_load_writes_nothing(image: bytes) -> None:
    ram = bytearray(1 << 20)
    with pytest.raises(ElfError) as loading:
        load_elf(image, ram, RAM_BASE)
    with pytest.raises(ElfError) as layout:
        elf_layout(image, RAM_BASE, len(ram))
    assert str(layout.value) == str(loading.value)
    assert not any(ram)


def test_elf_layout_is_where_load_elf_puts_the_image() -> None:
    image = make_elf(HELLO, bss=0x100)
    ram = bytearray(1 << 20)
    loaded = load_elf(image, ram, RAM_BASE)
    assert elf_layout(image, RAM_BASE, len(ram)) == loaded
    (seg,) = loaded.segments
    assert (seg.gpa, seg.file_size, seg.mem_size, seg.flags) == (LOAD_ADDR, len(HELLO), len(HELLO) + 0x100, "rwx")
    off = seg.gpa - RAM_BASE
    assert ram[off:off + seg.file_size] == HELLO


def test_access_to_nothing_stops_only_that_vm_with_a_diagnostic() -> None:
    host = Host()
    bad = run_machine(make_elf(FAULT), name="bad", host=host)
    good = run_machine(make_elf(HELLO), name="good", host=host)
    assert len(bad.errors) == 1
    err = bad.errors[0]
    assert err.pc == LOAD_ADDR + 4 and err.instruction == "ldr w0, [x1, #0x10]"
    assert "load of 4 bytes from 0x8000010: no RAM and no device there" in err.detail
    assert bad.stopped is not None and "pc=0x40080004" in str(bad.stopped)
    assert good.exit_status == 42  # the other VM on the host is unaffected


def test_semihosting_calls() -> None:
    mem = {0x100 + i: b for i, b in enumerate(b"abc\0")}
    mem.update({0x200 + i: b for i, b in enumerate(struct.pack("<QQ", 0x20026, 3))})
    mem.update({0x300 + i: b for i, b in enumerate(struct.pack("<QQ", 0x20023, 0))})  # RunTimeErrorUnknown

    def read(gpa: int, size: int) -> bytes | None:
        try:
            return bytes(mem[gpa + i] for i in range(size))
        except KeyError:
            return None

    assert serve(SYS_WRITE0, 0x100, read).console == b"abc"
    assert serve(SYS_WRITEC, 0x101, read).console == b"b"
    assert serve(SYS_EXIT_EXTENDED, 0x200, read).exit_status == 3
    assert serve(SYS_EXIT_EXTENDED, 0x300, read).exit_status == 1
    assert serve(0x99, 0, read).x0 == 2**64 - 1
    assert "no guest memory" in (serve(SYS_WRITEC, 0x999, read).error or "")


def test_cli_guest_run_exits_with_the_guest_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "hello.elf"
    image.write_bytes(make_elf(HELLO))
    result = CliRunner().invoke(main, ["guest", "run", str(image), "--vcpus", "2", "--host-cpus", "1"])
    assert result.exit_code == 42, result.output
    assert result.stdout == "hello, !ok"


def test_cli_guest_run_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an elf")
    result = runner.invoke(main, ["guest", "run", str(bad)])
    assert result.exit_code == 125 and "not an ELF file" in result.output  # pvtime cannot load it
    spin = tmp_path / "spin.elf"
    spin.write_bytes(make_elf(SPIN))
    result = runner.invoke(main, ["guest", "run", str(spin), "--time-limit", "0.002"])
    assert result.exit_code == 124 and "time limit" in result.stderr
    fault = tmp_path / "fault.elf"
    fault.write_bytes(make_elf(FAULT))
    result = runner.invoke(main, ["guest", "run", str(fault)])
    assert result.exit_code == 126  # the VM stopped without an exit status
    assert "pc=0x40080004 (ldr w0, [x1, #0x10])" in result.stderr and "no RAM and no device" in result.stderr


def test_cli_guest_run_configures_lpt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pvtime.vmm.images import packaged_image, patch_minikernel

    image = tmp_path / "mk.elf"
    image.write_bytes(patch_minikernel(packaged_image("minikernel").read_bytes(), duration_ms=40))
    args = ["guest", "run", str(image), "--counter-hz", "25000000"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0 and "CNTFRQ_EL0 = 25000000 Hz" in plain.stdout
    lpt = CliRunner().invoke(main, args + ["--lpt-pv-hz", "1000000000"])
    assert lpt.exit_code == 0, lpt.output
    assert "CNTFRQ_EL0 = 1000000000 Hz" in lpt.stdout
    assert "lpt pv_freq 1000000000 native_freq 25000000 seq 2" in lpt.stdout
    assert CliRunner().invoke(main, args + ["--lpt-pv-hz", "0"]).exit_code == 2  # click names the option


def test_a_model_program_on_a_machine_code_vm_is_refused() -> None:
    from pvtime.guest.kernel import ModelKernel

    machine = Machine(Kvm(Host()), MachineConfig("m", memory_mib=1, cpu=CpuKind.UNICORN))
    with pytest.raises(ValueError, match="runs machine code from guest RAM"):
        machine.load_model_guest(ModelKernel())
