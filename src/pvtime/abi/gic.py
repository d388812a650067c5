"""The GICv2 programmers' model (Arm IHI 0048B) that the vGIC and its guests share: interrupt IDs,
distributor (GICD_*) and CPU-interface (GICC_*) register offsets and fields.

Offsets are from the region's base. Registers with one bit (or field) per interrupt are arrays:
interrupt n's bit is bit n % 32 of the word at offset + 4 * (n // 32) (8 bits per interrupt:
byte n at offset + n; 2 bits: bits 2 * (n % 16) of word offset + 4 * (n // 16)).
"""

from __future__ import annotations

# Interrupt IDs: SGIs 0-15 and PPIs 16-31 are banked per CPU, SPIs 32-1019 are shared.
NR_SGIS = 16
NR_PRIVATE_IRQS = 32
MAX_SPI = 1019
SPURIOUS_GROUP1 = 1022  # GICC_IAR: the highest pending interrupt is Group 1 and AckCtl is 0
SPURIOUS = 1023  # GICC_IAR/HPPIR: nothing to acknowledge
INTID_MASK = 0x3FF  # GICC_IAR/EOIR bits [9:0]
CPUID_SHIFT = 10  # GICC_IAR/EOIR bits [12:10]: an SGI's source CPU
MAX_CPUS = 8  # GICv2 addresses CPUs with an 8-bit target list

# Distributor.
GICD_CTLR = 0x000
GICD_TYPER = 0x004
GICD_IIDR = 0x008
GICD_IGROUPR = 0x080
GICD_ISENABLER = 0x100
GICD_ICENABLER = 0x180
GICD_ISPENDR = 0x200
GICD_ICPENDR = 0x280
GICD_ISACTIVER = 0x300
GICD_ICACTIVER = 0x380
GICD_IPRIORITYR = 0x400
GICD_ITARGETSR = 0x800
GICD_ICFGR = 0xC00
GICD_SGIR = 0xF00
GICD_CPENDSGIR = 0xF10
GICD_SPENDSGIR = 0xF20

GICD_CTLR_ENABLE = 1 << 0
GICD_TYPER_CPUS_SHIFT = 5  # CPUNumber: CPUs - 1
GICD_SGIR_TARGET_SHIFT = 16  # CPUTargetList, 8 bits
GICD_SGIR_FILTER_SHIFT = 24  # TargetListFilter, 2 bits
SGIR_FILTER_LIST = 0  # the CPUs in CPUTargetList
SGIR_FILTER_OTHERS = 1  # every CPU but the requester
SGIR_FILTER_SELF = 2  # the requester only
ICFGR_EDGE = 0b10  # Int_config[1]: edge-triggered (0: level-sensitive)

# CPU interface.
GICC_CTLR = 0x00
GICC_PMR = 0x04
GICC_BPR = 0x08
GICC_IAR = 0x0C
GICC_EOIR = 0x10
GICC_RPR = 0x14
GICC_HPPIR = 0x18
GICC_ABPR = 0x1C
GICC_AIAR = 0x20
GICC_AEOIR = 0x24
GICC_AHPPIR = 0x28
GICC_APR0 = 0xD0  # APR0..APR3
GICC_NSAPR0 = 0xE0  # NSAPR0..NSAPR3
GICC_IIDR = 0xFC
GICC_DIR = 0x1000

GICC_CTLR_ENABLE_GRP0 = 1 << 0
GICC_CTLR_ENABLE_GRP1 = 1 << 1
GICC_CTLR_ACKCTL = 1 << 2
GICC_CTLR_FIQEN = 1 << 3
GICC_CTLR_CBPR = 1 << 4
GICC_CTLR_EOIMODE = 1 << 9
IDLE_PRIORITY = 0xFF  # GICC_RPR with no interrupt active
