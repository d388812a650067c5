"""The guest physical memory map, as QEMU's `virt` machine lays it out (hw/arm/virt.c).

The stolen-time records get their own 64 KiB granule (vCPU i at base + 64*i), sharing it with
no RAM and no MMIO, as DEN0057A and QEMU advise. The VM's LPT record takes the last 64 bytes of
that granule (so it holds one stolen-time record fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvtime.abi.records import LPT_RECORD_ALIGN, STEAL_RECORD_SIZE

GRANULE = 64 * 1024


@dataclass(frozen=True)
class Layout:
    """Addresses of the machine's regions."""

    ram_base: int = 0x4000_0000
    uart_base: int = 0x0900_0000
    uart_size: int = 0x1000
    pvtime_base: int = 0x090A_0000
    pvtime_size: int = GRANULE

    def steal_record(self, vcpu_index: int) -> int:
        """The IPA of vCPU `vcpu_index`'s stolen-time record."""
        if not 0 <= vcpu_index < self.max_vcpus():
            raise ValueError(f"vCPU {vcpu_index}: the PV-time region holds {self.max_vcpus()} records")
        return self.pvtime_base + STEAL_RECORD_SIZE * vcpu_index

    def max_vcpus(self) -> int:
        """How many stolen-time records fit in the PV-time region beside the LPT record."""
        return (self.pvtime_size - LPT_RECORD_ALIGN) // STEAL_RECORD_SIZE

    def lpt_record(self) -> int:
        """The IPA of the VM's LPT record: the last 64 bytes of the first PV-time granule."""
        return self.pvtime_base + GRANULE - LPT_RECORD_ALIGN

    def pvtime_region_size(self, nvcpus: int) -> int:
        """Size of the region for `nvcpus` records, rounded up to whole 64 KiB granules."""
        need = nvcpus * STEAL_RECORD_SIZE
        return max(GRANULE, -(-need // GRANULE) * GRANULE)


QEMU_VIRT = Layout()


@dataclass(frozen=True)
class GicV2Layout:
    """Where a vGICv2's distributor and CPU interface sit, as on QEMU `virt` (VIRT_GIC_DIST,
    VIRT_GIC_CPU), and the SPI of the UART (VIRT_UART: SPI 1, INTID 33)."""

    dist_base: int = 0x0800_0000
    dist_size: int = 0x1_0000
    cpu_base: int = 0x0801_0000
    cpu_size: int = 0x1_0000
    uart_spi: int = 1


QEMU_VIRT_GIC = GicV2Layout()
