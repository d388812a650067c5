"""KVM/arm64 userspace-interface constants: capabilities, attribute groups, register ids, exits.

Values are Linux's (include/uapi/linux/kvm.h, arch/arm64/include/uapi/asm/kvm.h), and the
LPT group from the unmerged 2020 RFC.
"""

from __future__ import annotations

from enum import IntEnum

from pvtime.abi.widths import U64
from pvtime.abi import sysregs

# Capabilities.
KVM_CAP_IRQCHIP = 0  # arm64: an in-kernel vGIC can be created
KVM_CAP_DEVICE_CTRL = 89  # KVM_CREATE_DEVICE and the device attribute ioctls
KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 = 174  # KVM_IRQ_LINE's vcpu2_index field
KVM_CAP_STEAL_TIME = 187
KVM_CAP_NR_VCPUS = 9  # recommended vCPUs: min(host CPUs, KVM_MAX_VCPUS)
KVM_CAP_MAX_VCPUS = 66
KVM_MAX_VCPUS = 512  # arm64 (the GICv3 limit, VGIC_V3_MAX_CPUS)
KVM_CAP_COALESCED_MMIO = 15  # answers KVM_COALESCED_MMIO_PAGE_OFFSET
KVM_CAP_COALESCED_PIO = 162

# Memory-region flags (struct kvm_userspace_memory_region.flags).
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_VALID_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY
KVM_USER_MEM_SLOTS = 512
PAGE_SIZE = 4096

# Coalesced MMIO (virt/kvm/coalesced_mmio.c): the ring (abi.records) is the page at this offset
# of a vCPU's mmap, with room for this many entries of 24 bytes after its 8-byte header.
KVM_COALESCED_MMIO_PAGE_OFFSET = 1  # arm64
KVM_COALESCED_MMIO_MAX = (PAGE_SIZE - 8) // 24  # 170
NR_IOBUS_DEVS = 1000  # devices on one kvm_io_bus (include/linux/kvm_host.h)

# vCPU device attributes.
KVM_ARM_VCPU_PMU_V3_CTRL = 0
KVM_ARM_VCPU_TIMER_CTRL = 1
KVM_ARM_VCPU_TIMER_IRQ_VTIMER = 0
KVM_ARM_VCPU_TIMER_IRQ_PTIMER = 1
KVM_ARM_VCPU_TIMER_IRQ_HVTIMER = 2
KVM_ARM_VCPU_TIMER_IRQ_HPTIMER = 3
# The INTID each timer raises until the VMM says otherwise (Documentation/virt/kvm/devices/vcpu.rst).
KVM_ARM_TIMER_DEFAULT_PPIS = {
    KVM_ARM_VCPU_TIMER_IRQ_VTIMER: 27,
    KVM_ARM_VCPU_TIMER_IRQ_PTIMER: 30,
    KVM_ARM_VCPU_TIMER_IRQ_HVTIMER: 28,
    KVM_ARM_VCPU_TIMER_IRQ_HPTIMER: 26,
}
KVM_ARM_VCPU_PVTIME_CTRL = 2
KVM_ARM_VCPU_PVTIME_IPA = 0

# VM device attributes for Live Physical Time (2020 RFC).
KVM_ARM_VM_PVTIME_LPT_CTRL = 0
KVM_ARM_VM_PVTIME_LPT_IPA = 0
KVM_ARM_VM_PVTIME_LPT_FREQ = 1

INVALID_GPA = U64  # what GET returns when no IPA is set

# KVM_CREATE_DEVICE (struct kvm_create_device) and the vGIC device's attributes
# (Documentation/virt/kvm/devices/arm-vgic.rst).
KVM_CREATE_DEVICE_TEST = 1  # flags: only check that the type can be created
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_ARM_VGIC_ITS = 8
KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_DEV_ARM_VGIC_GRP_DIST_REGS = 1
KVM_DEV_ARM_VGIC_GRP_CPU_REGS = 2
KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
# GRP_DIST_REGS / GRP_CPU_REGS attr: | 63..40 reserved | 39..32 vcpu_index | 31..0 offset |
KVM_DEV_ARM_VGIC_CPUID_SHIFT = 32
KVM_DEV_ARM_VGIC_CPUID_MASK = 0xFF << KVM_DEV_ARM_VGIC_CPUID_SHIFT
KVM_DEV_ARM_VGIC_OFFSET_MASK = 0xFFFF_FFFF
KVM_VGIC_V2_ADDR_TYPE_DIST = 0
KVM_VGIC_V2_ADDR_TYPE_CPU = 1
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3
KVM_VGIC_V2_DIST_SIZE = 0x1000
KVM_VGIC_V2_CPU_SIZE = 0x2000
VGIC_ADDR_UNDEF = U64  # what GRP_ADDR reads before the address is set
VGIC_V2_MAX_CPUS = 8  # a VM with a vGICv2 has at most 8 vCPUs (kvm->max_vcpus)


def vgic_reg_attr(vcpu_index: int, offset: int) -> int:
    """The attr of a GRP_DIST_REGS / GRP_CPU_REGS register: `offset` as vCPU `vcpu_index` sees it."""
    return (vcpu_index << KVM_DEV_ARM_VGIC_CPUID_SHIFT) & KVM_DEV_ARM_VGIC_CPUID_MASK | offset & KVM_DEV_ARM_VGIC_OFFSET_MASK


# KVM_IRQ_LINE's irq field on arm64: | 31..28 vcpu2_index | 27..24 irq_type | 23..16 vcpu_index | 15..0 irq_id |
KVM_ARM_IRQ_VCPU2_SHIFT = 28
KVM_ARM_IRQ_VCPU2_MASK = 0xF
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_TYPE_MASK = 0xF
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_VCPU_MASK = 0xFF
KVM_ARM_IRQ_NUM_SHIFT = 0
KVM_ARM_IRQ_NUM_MASK = 0xFFFF
KVM_ARM_IRQ_TYPE_CPU = 0  # no in-kernel GIC: the vCPU's IRQ (irq_id 0) or FIQ (1) input
KVM_ARM_IRQ_TYPE_SPI = 1  # in-kernel GIC: SPI irq_id (32..1019); vcpu_index ignored
KVM_ARM_IRQ_TYPE_PPI = 2  # in-kernel GIC: PPI irq_id (16..31) of vcpu_index
KVM_ARM_IRQ_CPU_IRQ = 0
KVM_ARM_IRQ_CPU_FIQ = 1


def kvm_arm_irq(irq_type: int, vcpu_index: int, irq_id: int) -> int:
    """The irq field of struct kvm_irq_level for KVM_IRQ_LINE (vCPU indices above 255 use vcpu2_index)."""
    return ((vcpu_index >> 8) & KVM_ARM_IRQ_VCPU2_MASK) << KVM_ARM_IRQ_VCPU2_SHIFT \
        | (irq_type & KVM_ARM_IRQ_TYPE_MASK) << KVM_ARM_IRQ_TYPE_SHIFT \
        | (vcpu_index & KVM_ARM_IRQ_VCPU_MASK) << KVM_ARM_IRQ_VCPU_SHIFT \
        | (irq_id & KVM_ARM_IRQ_NUM_MASK) << KVM_ARM_IRQ_NUM_SHIFT

# Register ids: KVM_REG_ARM64 | size | coprocessor | index.
KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00F0_0000_0000_0000
KVM_REG_SIZE_U32 = 0x0020_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
KVM_REG_SIZE_U128 = 0x0040_0000_0000_0000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_COPROC_MASK = 0x0000_0000_0FFF_0000
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_FW = 0x0014 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_FW_FEAT_BMAP = 0x0016 << KVM_REG_ARM_COPROC_SHIFT

KVM_REG_ARM_STD_BMAP = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP | 0
KVM_REG_ARM_STD_HYP_BMAP = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP | 1
KVM_REG_ARM_VENDOR_HYP_BMAP = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP | 2
KVM_REG_ARM_STD_HYP_BIT_PV_TIME = 0
KVM_REG_ARM_STD_HYP_BMAP_SUPPORTED = 1 << KVM_REG_ARM_STD_HYP_BIT_PV_TIME


def reg_size(reg_id: int) -> int:
    """Size in bytes encoded in a register id (KVM_REG_SIZE)."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


def core_reg(u32_index: int) -> int:
    """The id of a 64-bit core register at offsetof(struct kvm_regs, ...) / sizeof(u32)."""
    return KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | u32_index


# struct kvm_regs: user_pt_regs { regs[31], sp, pc, pstate }, then sp_el1, elr_el1, spsr[5].
def reg_x(n: int) -> int:
    """The id of general register xN (0..30)."""
    if not 0 <= n <= 30:
        raise ValueError(f"x{n}: general registers are x0..x30")
    return core_reg(2 * n)


REG_SP = core_reg(2 * 31)  # SP_EL0
REG_PC = core_reg(2 * 32)
REG_PSTATE = core_reg(2 * 33)
REG_SP_EL1 = core_reg(2 * 34)
REG_ELR_EL1 = core_reg(2 * 35)
REG_SPSR_EL1 = core_reg(2 * 36)  # spsr[KVM_SPSR_EL1 = 0]

# struct kvm_regs.fp_regs (struct user_fpsimd_state, 16-byte aligned at byte 336):
# vregs[32] (__uint128_t), then fpsr and fpcr (__u32).
_FP_REGS_U32 = 336 // 4
REG_FPSR = KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE | (_FP_REGS_U32 + 4 * 32)
REG_FPCR = KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE | (_FP_REGS_U32 + 4 * 32 + 1)


def reg_v(n: int) -> int:
    """The id of FP/SIMD register Vn (0..31), a 128-bit core register."""
    if not 0 <= n <= 31:
        raise ValueError(f"v{n}: FP/SIMD registers are v0..v31")
    return KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | (_FP_REGS_U32 + 4 * n)


KVM_REGS_U32 = _FP_REGS_U32 + 4 * 32 + 4  # sizeof(struct kvm_regs) / 4: vregs, fpsr, fpcr, reserved


def core_reg_size(reg_id: int) -> int | None:
    """The size in bytes of the core register at an id's offset, None for no register there."""
    index = reg_id & 0xFFFF
    if index < 2 * 37:  # regs[31], sp, pc, pstate, sp_el1, elr_el1, spsr[0]
        return 8 if index % 2 == 0 else None
    if _FP_REGS_U32 <= index < _FP_REGS_U32 + 4 * 32:
        return 16 if (index - _FP_REGS_U32) % 4 == 0 else None
    if index in (_FP_REGS_U32 + 4 * 32, _FP_REGS_U32 + 4 * 32 + 1):
        return 4
    return None


# Every KVM_REG_ARM_CORE register a pvtime vCPU has, in struct kvm_regs order. (KVM also lists
# spsr[1..4], the AArch32 banked SPSRs; a pvtime vCPU has no AArch32 EL1, so they are absent.)
CORE_REG_IDS: tuple[int, ...] = (
    *(reg_x(n) for n in range(31)), REG_SP, REG_PC, REG_PSTATE, REG_SP_EL1, REG_ELR_EL1, REG_SPSR_EL1,
    *(reg_v(n) for n in range(32)), REG_FPSR, REG_FPCR,
)


def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The id of a system register (KVM_REG_ARM64_SYSREG encoding)."""
    return (
        KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_SYSREG
        | (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
    )


# Timer registers KVM exposes through ONE_REG (arch/arm64/include/uapi/asm/kvm.h).
KVM_REG_ARM_TIMER_CTL = sysreg(3, 3, 14, 3, 1)
KVM_REG_ARM_TIMER_CNT = sysreg(3, 3, 14, 3, 2)  # encodes CNTVCT through a quirk of history
KVM_REG_ARM_TIMER_CVAL = sysreg(3, 3, 14, 0, 2)  # likewise swapped with CNT
KVM_REG_ARM_PTIMER_CTL = sysreg(3, 3, 14, 2, 1)
KVM_REG_ARM_PTIMER_CVAL = sysreg(3, 3, 14, 2, 2)
KVM_REG_ARM_PTIMER_CNT = sysreg(3, 3, 14, 0, 1)
KVM_REG_ARM_CNTKCTL_EL1 = sysreg(3, 0, 14, 1, 0)  # EL0 counter access and the event stream
KVM_REG_ARM_MPIDR_EL1 = sysreg(3, 0, 0, 0, 5)  # the vCPU's affinity: reset_mpidr, then as the VMM sets it

# The EL1 system registers a guest kernel holds (KVM's sys_reg_descs with user access), by
# their KVM_REG_ARM64_SYSREG ids, sorted as KVM_GET_REG_LIST sorts them.
EL1_SYSREGS: tuple[sysregs.SysReg, ...] = (
    sysregs.SCTLR_EL1, sysregs.CPACR_EL1, sysregs.TTBR0_EL1, sysregs.TTBR1_EL1, sysregs.TCR_EL1,
    sysregs.AFSR0_EL1, sysregs.AFSR1_EL1, sysregs.ESR_EL1, sysregs.FAR_EL1, sysregs.PAR_EL1,
    sysregs.MAIR_EL1, sysregs.AMAIR_EL1, sysregs.VBAR_EL1, sysregs.CONTEXTIDR_EL1, sysregs.TPIDR_EL1,
    sysregs.TPIDR_EL0, sysregs.TPIDRRO_EL0,
)
EL1_SYSREG_IDS: dict[int, sysregs.SysReg] = {sysreg(*r): r for r in sorted(EL1_SYSREGS, key=lambda r: sysreg(*r))}
# Their values after a vCPU reset (KVM's reset_val): zero, but SCTLR_EL1's RES1 bits.
EL1_SYSREG_RESET: dict[int, int] = {
    reg_id: 0x00C5_0078 if reg == sysregs.SCTLR_EL1 else 0 for reg_id, reg in EL1_SYSREG_IDS.items()
}


class ExitReason(IntEnum):
    """struct kvm_run.exit_reason values pvtime returns."""

    DEBUG = 4  # pvtime: an Arm semihosting call for the VMM (KVM_EXIT_DEBUG)
    HLT = 5  # the vCPU halted (WFI/WFE): its thread blocks until the next timer event
    MMIO = 6
    SHUTDOWN = 8
    INTR = 10  # the host ended the thread's time slice; re-entering run() is the schedule-in
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24


KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_INTERNAL_ERROR_EMULATION = 1

# struct kvm_mp_state.mp_state (KVM_{GET,SET}_MP_STATE). arm64 uses RUNNABLE, STOPPED (powered
# off: KVM_ARM_VCPU_POWER_OFF, PSCI CPU_OFF) and SUSPENDED (PSCI SYSTEM_SUSPEND).
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_SUSPENDED = 10
