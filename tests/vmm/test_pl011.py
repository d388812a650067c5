"""The PL011 as Linux's amba-pl011 driver uses it (drivers/tty/serial/amba-pl011.c) and as
the AMBA bus identifies it (drivers/amba/bus.c amba_read_periphid)."""

from pvtime.kvm import MmioExit
from pvtime.vmm.devices import Pl011

BASE = 0x0900_0000


def uart():
    out, levels = bytearray(), []
    dev = Pl011(BASE, 0x1000, out.extend, irq=levels.append)
    return dev, out, levels


def read(dev, off, n=4):
    return int.from_bytes(dev.access(MmioExit(BASE + off, n, bytes(n), False)), "little")


def write(dev, off, value, n=4):
    assert dev.access(MmioExit(BASE + off, n, value.to_bytes(n, "little"), True)) is None


def test_the_amba_bus_reads_the_pl011_and_primecell_ids():
    dev, _, _ = uart()
    pid = sum(read(dev, 0xFE0 + 4 * i) << (8 * i) for i in range(4))
    cid = sum(read(dev, 0xFF0 + 4 * i) << (8 * i) for i in range(4))
    assert (pid & 0x000F_FFFF, cid) == (0x0004_1011, 0xB105_F00D)  # ARM PL011, AMBA_CID


def test_tx_interrupt_raised_by_a_write_masked_by_imsc_cleared_by_icr():
    # pl011_tx_chars fills the FIFO, then unmasks TXIM and waits for UARTTXINTR
    dev, out, levels = uart()
    write(dev, 0x00, ord("A"))
    assert out == b"A" and read(dev, 0x3C) & 0x20 and levels == []  # raw, but masked
    write(dev, 0x38, 0x20)  # IMSC.TXIM
    assert levels == [True] and read(dev, 0x40) == 0x20
    write(dev, 0x44, 0x20)  # ICR: the handler acknowledges
    assert levels == [True, False] and read(dev, 0x40) == 0
    write(dev, 0x00, ord("B"))
    assert levels == [True, False, True] and out == b"AB"


def test_flags_say_idle_transmitter_and_no_input_and_control_registers_read_back():
    dev, _, levels = uart()
    assert read(dev, 0x18) == (1 << 7) | (1 << 4)  # TXFE | RXFE, never BUSY or TXFF
    for off, val in ((0x24, 13), (0x28, 1), (0x2C, 0x70), (0x30, 0x301)):
        write(dev, off, val)
        assert read(dev, off) == val
    assert levels == []


def test_without_an_interrupt_controller_the_level_goes_nowhere():
    out = bytearray()
    dev = Pl011(BASE, 0x1000, out.extend)
    write(dev, 0x38, 0x20)
    write(dev, 0x00, ord("x"))
    assert out == b"x" and read(dev, 0x40) == 0x20
