"""The VMM's coalesced UART: DR stores made while the transmit interrupt is masked complete in KVM
(virt/kvm/coalesced_mmio.c) and reach the PL011 before the VMM handles the next exit (QEMU's
kvm_flush_coalesced_mmio_buffer, called before an access to a coalescing region); the console,
the device state and what the guest reads are what they are when every store exits, with fewer
exits."""

from __future__ import annotations

import pytest

from pvtime.abi.uapi import reg_x
from pvtime.cpu import CpuKind
from pvtime.host import Host
from pvtime.kvm import Kvm, MmioExit
from pvtime.vmm import Machine, MachineConfig
from pvtime.vmm.coalesced import CoalescedUart
from pvtime.vmm.migration import restore, save
from tests.cpu.asm import assemble
from tests.cpu.elfwriter import make_elf
from tests.vmm.test_guest_vmm import run_machine

UART = 0x0900_0000

# 'a' 'b' (masked), '!' through semihosting, TXIM on, 'c' (unmasked), RIS read, ICR, TXIM off,
# 'd' 'e' (masked), RIS read into x6, then exit 0.
PRINTS = assemble(f"""
    mov x2, #{UART:#x}
    mov w3, #'a'
    str w3, [x2]
    mov w3, #'b'
    str w3, [x2]
    adr x1, bang
    mov x0, #3            /* SYS_WRITEC */
    hlt #0xf000
    mov w3, #0x20
    str w3, [x2, #0x38]   /* IMSC.TXIM */
    mov w3, #'c'
    str w3, [x2]
    ldr w5, [x2, #0x3c]   /* RIS */
    mov w3, #0x20
    str w3, [x2, #0x44]   /* ICR: clear TX */
    str wzr, [x2, #0x38]  /* IMSC: all masked */
    mov w3, #'d'
    str w3, [x2]
    mov w3, #'e'
    str w3, [x2]
    ldr w6, [x2, #0x3c]   /* RIS: TX again, from the coalesced stores */
    adr x1, block
    mov x0, #0x20         /* SYS_EXIT_EXTENDED */
    hlt #0xf000
    b .
    .balign 8
block: .quad 0x20026, 0
bang: .ascii "!"
""")


def run(*, coalesce: bool, monkeypatch: pytest.MonkeyPatch) -> Machine:
    if not coalesce:  # a VMM that never registers the zone: every store exits
        monkeypatch.setattr(CoalescedUart, "sync", lambda self: None)
    try:
        return run_machine(make_elf(PRINTS), name="c")
    finally:
        monkeypatch.undo()


def test_console_and_uart_state_are_those_of_a_store_per_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = run(coalesce=False, monkeypatch=monkeypatch)
    coalesced = run(coalesce=True, monkeypatch=monkeypatch)
    assert plain.exit_status == coalesced.exit_status == 0
    assert bytes(coalesced.console) == bytes(plain.console) == b"ab!cde"  # in program order
    assert coalesced.uart.save_state() == plain.uart.save_state()
    assert coalesced.uart.raw & 0x20  # RIS.TX set by the coalesced 'd' and 'e'
    for m in (plain, coalesced):  # what the guest read: RIS.TX after 'c', and after 'd' 'e'
        assert [m.vcpus[0].get_one_reg(reg_x(r)) for r in (5, 6)] == [0x20, 0x20]
    # The four DR stores made while TXIM was masked did not exit; 'c' did.
    assert plain.vcpus[0].stats.runs - coalesced.vcpus[0].stats.runs == 4
    assert coalesced.coalesced is not None and coalesced.coalesced.registered  # masked at the end


def test_the_zone_follows_the_interrupt_mask_and_a_migration() -> None:
    m = Machine(Kvm(Host(25_000_000)), MachineConfig("m", memory_mib=1, cpu=CpuKind.UNICORN, vgic=True))
    assert m.coalesced is not None and m.coalesced.registered  # reset: every interrupt masked
    m.handle_mmio(m.vcpus[0], MmioExit(UART + 0x38, 4, (0x20).to_bytes(4, "little"), True))
    assert not m.coalesced.registered  # a DR store now raises the UART's interrupt: it must exit
    dst = restore(Kvm(Host(25_000_000)), save(m, now_ns=0), now_ns=0)
    assert dst.coalesced is not None and not dst.coalesced.registered
    m.handle_mmio(m.vcpus[0], MmioExit(UART + 0x38, 4, bytes(4), True))
    assert m.coalesced.registered


def test_model_guests_have_no_zone() -> None:
    assert Machine(Kvm(Host()), MachineConfig("p", memory_mib=1)).coalesced is None


def test_stores_still_in_the_ring_reach_the_uart_before_a_migration_saves_it() -> None:
    """A VMM that drives KVM_RUN itself may save right after a run: the saved UART state includes
    the coalesced stores (the VMM drains the ring before it saves the device)."""
    host = Host(25_000_000)
    m = Machine(Kvm(host), MachineConfig("m", memory_mib=4, cpu=CpuKind.UNICORN, vgic=True))
    m.load_elf(make_elf(assemble(f"mov x2, #{UART:#x}\n mov w3, #'z'\n str w3, [x2]\n wfi")))
    with host.on_cpu(host.spawn("m-vcpu0"), 10_000_000):
        m.vcpus[0].run()  # no VcpuThread: nothing drained the ring yet
    assert bytes(m.console) == b""
    dst = restore(Kvm(Host(25_000_000)), save(m, now_ns=0), now_ns=0)
    assert bytes(m.console) == b"z" and dst.uart.raw & 0x20
