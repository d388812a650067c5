"""The vGICv2 device and the attributes around it, errno for errno: Linux's
arch/arm64/kvm/vgic/vgic-kvm-device.c, vgic-init.c (kvm_vgic_create, vgic_init), vgic-v2.c
(vgic_v2_map_resources), arch/arm64/kvm/arch_timer.c (kvm_arm_timer_*_attr, kvm_timer_enable)
and arm.c (kvm_vm_ioctl_irq_line); each test names the function it checks."""

from __future__ import annotations

from pvtime.abi.errno import E2BIG, EBUSY, EEXIST, EFAULT, EINVAL, ENODEV, ENXIO
from pvtime.abi.gic import GICD_IGROUPR, GICD_IIDR, GICD_ISENABLER, GICD_TYPER, GICC_PMR
from pvtime.abi.uapi import (
    KVM_ARM_IRQ_CPU_IRQ, KVM_ARM_IRQ_TYPE_CPU, KVM_ARM_IRQ_TYPE_PPI, KVM_ARM_IRQ_TYPE_SPI,
    KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_HPTIMER, KVM_ARM_VCPU_TIMER_IRQ_HVTIMER,
    KVM_ARM_VCPU_TIMER_IRQ_PTIMER, KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_CAP_ARM_IRQ_LINE_LAYOUT_2,
    KVM_CAP_DEVICE_CTRL, KVM_CAP_IRQCHIP, KVM_CAP_MAX_VCPUS, KVM_CREATE_DEVICE_TEST,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CPU_REGS,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_DEV_TYPE_ARM_VGIC_ITS, KVM_DEV_TYPE_ARM_VGIC_V2, KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_MAX_VCPUS, KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
    VGIC_ADDR_UNDEF, kvm_arm_irq, vgic_reg_attr,
)
from pvtime.host import Host
from pvtime.kvm import Kvm
from tests.kvm.test_vgic_env import CPUIF, DIST, GicVm, errno_of, make_vm

ADDR, NR_IRQS, CTRL = KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_DEV_ARM_VGIC_GRP_CTRL
DIST_REGS, CPU_REGS = KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_CPU_REGS
TIMER, VTIMER, PTIMER = KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER


def first_run(env: GicVm, i: int = 0) -> None:
    """A KVM_RUN of vCPU i whose guest code does nothing."""
    env.guest(i, lambda gic: None)


# --- KVM_CREATE_DEVICE: kvm_ioctl_create_device, kvm_vgic_create ----------------------------

def test_create_device_knows_only_gicv2_and_test_flag_creates_nothing():
    """kvm_ioctl_create_device: a type with no registered ops is ENODEV (GICv3 is not modelled);
    KVM_CREATE_DEVICE_TEST only probes."""
    env = make_vm(2, gic=False)
    for dev_type in (KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_TYPE_ARM_VGIC_ITS, 0, 99):
        assert errno_of(env.vm.create_device, dev_type) == ENODEV
        assert errno_of(env.vm.create_device, dev_type, KVM_CREATE_DEVICE_TEST) == ENODEV
    assert env.vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2, KVM_CREATE_DEVICE_TEST) is None
    assert env.vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2) is not None  # the probe created nothing


def test_second_vgic_is_eexist():
    """kvm_vgic_create: irqchip_in_kernel -> EEXIST."""
    env = make_vm(1)
    assert errno_of(env.vm.create_device, KVM_DEV_TYPE_ARM_VGIC_V2) == EEXIST


def test_vgic_after_a_vcpu_has_run_is_ebusy():
    """kvm_vgic_create: vcpu_has_run_once -> EBUSY."""
    env = make_vm(2, gic=False)
    first_run(env, 1)
    assert errno_of(env.vm.create_device, KVM_DEV_TYPE_ARM_VGIC_V2) == EBUSY


def test_vgic_while_a_vcpu_is_in_kvm_run_is_ebusy():
    """kvm_vgic_create: lock_all_vcpus fails while a vCPU thread is in KVM_RUN -> EBUSY (a VMM
    thread calls it while vCPU 0's guest code runs)."""
    env = make_vm(2, gic=False)
    assert env.guest(0, lambda gic: errno_of(env.vm.create_device, KVM_DEV_TYPE_ARM_VGIC_V2)) == EBUSY


def test_gicv2_serves_at_most_eight_vcpus():
    """kvm_vgic_create: more online vCPUs than VGIC_V2_MAX_CPUS -> E2BIG; once created,
    kvm->max_vcpus is 8: KVM_CAP_MAX_VCPUS says so and a 9th KVM_CREATE_VCPU is EINVAL."""
    env = make_vm(9, gic=False)
    assert errno_of(env.vm.create_device, KVM_DEV_TYPE_ARM_VGIC_V2) == E2BIG
    assert env.vm.check_extension(KVM_CAP_MAX_VCPUS) == KVM_MAX_VCPUS

    env = make_vm(7)
    assert env.vm.check_extension(KVM_CAP_MAX_VCPUS) == 8
    env.vm.create_vcpu(7)
    assert errno_of(env.vm.create_vcpu, 8) == EINVAL


def test_no_vcpu_once_the_vgic_is_initialised():
    """kvm_arch_vcpu_precreate: a vCPU after vgic_init is EBUSY (before it, one may be added)."""
    env = make_vm(1)
    env.vm.create_vcpu(1)
    assert env.gic is not None
    env.gic.set_device_attr(CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
    assert errno_of(env.vm.create_vcpu, 2) == EBUSY
    assert errno_of(env.vm.create_vcpu, 1) == EBUSY  # before the duplicate-id check, as in Linux


def test_capabilities_of_an_arm64_kvm_with_a_gic():
    """kvm_vm_ioctl_check_extension: IRQCHIP, DEVICE_CTRL and ARM_IRQ_LINE_LAYOUT_2 are 1."""
    kvm = Kvm(Host())
    vm = kvm.create_vm()
    for cap in (KVM_CAP_IRQCHIP, KVM_CAP_DEVICE_CTRL, KVM_CAP_ARM_IRQ_LINE_LAYOUT_2):
        assert kvm.check_extension(cap) == 1 and vm.check_extension(cap) == 1


# --- KVM_DEV_ARM_VGIC_GRP_ADDR: kvm_vgic_addr, vgic_check_iorange ----------------------------

def test_addresses_read_undef_until_set_then_read_back():
    env = make_vm(1, place=False)
    gic = env.gic
    assert gic is not None
    assert gic.get_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST) == VGIC_ADDR_UNDEF
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, (CPUIF).to_bytes(8, "little"))
    assert gic.get_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST) == DIST
    assert gic.get_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU) == CPUIF


def test_address_checks_in_linux_order():
    """vgic_check_iorange: already set EEXIST (before alignment), unaligned EINVAL, wrapping
    EINVAL, past the IPA space E2BIG; kvm_vgic_addr reads the value first (EFAULT) and maps a
    GICv3 or unknown type to ENXIO."""
    env = make_vm(1, place=False)
    gic = env.gic
    assert gic is not None
    dist = KVM_VGIC_V2_ADDR_TYPE_DIST
    assert errno_of(gic.set_device_attr, ADDR, dist, None) == EFAULT
    assert errno_of(gic.set_device_attr, ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, None) == EFAULT  # read first
    assert errno_of(gic.set_device_attr, ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, DIST) == ENXIO
    assert errno_of(gic.set_device_attr, ADDR, 9, DIST) == ENXIO
    assert errno_of(gic.set_device_attr, ADDR, dist, DIST + 0x800) == EINVAL
    assert errno_of(gic.set_device_attr, ADDR, dist, (1 << 64) - 0x1000) == EINVAL  # addr + size wraps
    assert errno_of(gic.set_device_attr, ADDR, dist, 1 << 40) == E2BIG  # the default 40-bit IPA space
    assert errno_of(gic.set_device_attr, ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, (1 << 40) - 0x1000) == E2BIG  # 8 KiB
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, (1 << 40) - 0x2000)  # ends at the last byte
    gic.set_device_attr(ADDR, dist, DIST)
    assert errno_of(gic.set_device_attr, ADDR, dist, DIST) == EEXIST
    assert errno_of(gic.set_device_attr, ADDR, dist, DIST + 0x800) == EEXIST  # EEXIST comes first
    assert gic.get_device_attr(ADDR, dist) == DIST


def test_has_attr_for_the_address_types():
    """vgic_v2_has_attr: GRP_ADDR has DIST and CPU only."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    gic.has_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST)
    gic.has_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU)
    assert errno_of(gic.has_device_attr, ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST) == ENXIO
    assert errno_of(gic.get_device_attr, ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST) == ENXIO


def test_first_run_needs_both_frames_and_apart():
    """vgic_v2_map_resources at the first KVM_RUN: a frame unset is ENXIO, overlapping frames
    EINVAL; the failure destroys the vGIC's setup (kvm_vgic_destroy), so the VMM places it anew."""
    env = make_vm(1, place=False)
    gic = env.gic
    assert gic is not None
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)
    assert errno_of(first_run, env) == ENXIO
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)  # forgotten: settable again
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, DIST - 0x1000)  # its 8 KiB cover DIST
    assert errno_of(first_run, env) == EINVAL
    assert gic.get_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU) == VGIC_ADDR_UNDEF
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, DIST)
    gic.set_device_attr(ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, DIST + 0x1000)  # adjacent is fine
    first_run(env)
    assert errno_of(env.vm.create_device, KVM_DEV_TYPE_ARM_VGIC_V2) == EEXIST


# --- KVM_DEV_ARM_VGIC_GRP_NR_IRQS and GRP_CTRL -----------------------------------------------

def test_nr_irqs_range_and_once_only():
    """vgic_set_common_attr GRP_NR_IRQS: 64..1023 in multiples of 32 (so 992 is the most: 1024
    exceeds VGIC_MAX_RESERVED), EFAULT unreadable, EBUSY once set; reads nr_spis + 32."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    assert gic.get_device_attr(NR_IRQS, 0) == 32  # nothing frozen yet
    for bad in (0, 32, 63, 96 + 1, 1024, 1 << 20):
        assert errno_of(gic.set_device_attr, NR_IRQS, 0, bad) == EINVAL, bad
    assert errno_of(gic.set_device_attr, NR_IRQS, 0, b"\x40") == EFAULT
    gic.set_device_attr(NR_IRQS, 0, 992)
    assert gic.get_device_attr(NR_IRQS, 0) == 992
    assert errno_of(gic.set_device_attr, NR_IRQS, 0, 64) == EBUSY
    gic.has_device_attr(NR_IRQS, 12345)


def test_init_freezes_the_default_number_of_interrupts():
    """vgic_init: without GRP_NR_IRQS a vGIC has 256 interrupts, after which NR_IRQS is EBUSY;
    CTRL_INIT twice is fine; other CTRL attributes are ENXIO, and CTRL cannot be read."""
    env = make_vm(2)
    gic = env.gic
    assert gic is not None
    gic.set_device_attr(CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
    gic.set_device_attr(CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
    assert gic.get_device_attr(NR_IRQS, 0) == 256
    assert errno_of(gic.set_device_attr, NR_IRQS, 0, 128) == EBUSY
    assert errno_of(gic.set_device_attr, CTRL, 1) == ENXIO
    assert errno_of(gic.get_device_attr, CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT) == ENXIO
    gic.has_device_attr(CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
    assert errno_of(gic.has_device_attr, CTRL, 1) == ENXIO
    # GICD_TYPER: ITLinesNumber (256 / 32 - 1) and CPUNumber (2 - 1).
    assert gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_TYPER)) == 7 | 1 << 5


def test_unknown_group_is_enxio():
    """vgic_v2_{set,get,has}_attr: a group the device does not have -> ENXIO."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    for group in (5, 6, 7, 99):
        assert errno_of(gic.set_device_attr, group, 0, 0) == ENXIO
        assert errno_of(gic.get_device_attr, group, 0) == ENXIO
        assert errno_of(gic.has_device_attr, group, 0) == ENXIO


# --- GRP_DIST_REGS / GRP_CPU_REGS: vgic_v2_attr_regs_access, vgic_v2_has_attr_regs -----------

def test_register_of_a_vcpu_that_does_not_exist_is_einval():
    """vgic_v2_parse_attr: attr[39:32] names no vCPU -> EINVAL, for set, get and has."""
    env = make_vm(2)
    gic = env.gic
    assert gic is not None
    attr = vgic_reg_attr(2, GICD_TYPER)
    assert errno_of(gic.get_device_attr, DIST_REGS, attr) == EINVAL
    assert errno_of(gic.set_device_attr, DIST_REGS, attr, 0) == EINVAL
    assert errno_of(gic.has_device_attr, CPU_REGS, vgic_reg_attr(7, GICC_PMR)) == EINVAL
    assert errno_of(gic.set_device_attr, DIST_REGS, attr, None) == EINVAL  # before the value is read


def test_has_attr_regs_knows_the_register_map():
    """vgic_v2_has_attr_regs: aligned 32-bit registers of the v2 tables only; a per-interrupt
    register past the last interrupt does not exist."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    gic.set_device_attr(NR_IRQS, 0, 64)
    for offset in (0x000, 0x004, 0x008, 0x080, 0x104, 0x400, 0x43C, 0x800, 0xC0C, 0xF00, 0xF1C, 0xF2C):
        gic.has_device_attr(DIST_REGS, vgic_reg_attr(0, offset))
    for offset in (0x00C, 0x002, 0x108, 0x440, 0xC10, 0xF04, 0xF30, 0xFE8, 0x1000):
        assert errno_of(gic.has_device_attr, DIST_REGS, vgic_reg_attr(0, offset)) == ENXIO, hex(offset)
    for offset in (0x00, 0x04, 0x08, 0x1C, 0xD0, 0xDC, 0xFC):
        gic.has_device_attr(CPU_REGS, vgic_reg_attr(0, offset))
    for offset in (0x0C, 0x10, 0x14, 0x18, 0x20, 0xE0, 0x1000, 0x06):  # IAR/EOIR... are the guest's only
        assert errno_of(gic.has_device_attr, CPU_REGS, vgic_reg_attr(0, offset)) == ENXIO, hex(offset)


def test_register_access_initialises_and_reads_unknown_offsets_as_zero():
    """vgic_v2_attr_regs_access calls vgic_init (no vCPU can be added afterwards);
    vgic_uaccess_read/write: an offset no register takes reads 0 and ignores the write."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    assert gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, 0xFE8)) == 0
    gic.set_device_attr(DIST_REGS, vgic_reg_attr(0, 0xFE8), 0xFFFF)
    assert errno_of(env.vm.create_vcpu, 1) == EBUSY
    assert errno_of(gic.set_device_attr, DIST_REGS, vgic_reg_attr(0, GICD_ISENABLER), b"\x01\x02") == EFAULT


def test_register_access_while_a_vcpu_runs_is_ebusy():
    """vgic_v2_attr_regs_access: lock_all_vcpus fails while a vCPU is in KVM_RUN -> EBUSY."""
    env = make_vm(2)
    gic = env.gic
    assert gic is not None
    busy = env.guest(1, lambda _: errno_of(gic.get_device_attr, CPU_REGS, vgic_reg_attr(0, GICC_PMR)))
    assert busy == EBUSY
    assert gic.get_device_attr(CPU_REGS, vgic_reg_attr(0, GICC_PMR)) == 0


def test_iidr_is_written_back_as_read_and_unlocks_the_groups():
    """vgic_mmio_uaccess_write_v2_misc: GICD_IIDR accepts only its own value (else EINVAL) and
    then lets userspace restore GICD_IGROUPR (vgic_mmio_uaccess_write_v2_group ignores it before)."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    iidr = gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_IIDR))
    assert iidr == 0x4B << 24 | 3 << 12 | 0x43B  # KVM, revision 3, Arm
    group1 = vgic_reg_attr(0, GICD_IGROUPR + 4)
    gic.set_device_attr(DIST_REGS, group1, 0xF0)
    assert gic.get_device_attr(DIST_REGS, group1) == 0  # ignored: IIDR not written yet
    assert errno_of(gic.set_device_attr, DIST_REGS, vgic_reg_attr(0, GICD_IIDR), iidr ^ 1 << 12) == EINVAL
    gic.set_device_attr(DIST_REGS, vgic_reg_attr(0, GICD_IIDR), iidr)
    gic.set_device_attr(DIST_REGS, group1, 0xF0)
    assert gic.get_device_attr(DIST_REGS, group1) == 0xF0


def test_cpu_registers_use_the_vmcr_format():
    """vgic_mmio_{read,write}_vcpuif: GICC_PMR travels as GICH_VMCR.VMPriMask (priority >> 3)."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    pmr = vgic_reg_attr(0, GICC_PMR)
    gic.set_device_attr(CPU_REGS, pmr, 0x1E)
    assert gic.get_device_attr(CPU_REGS, pmr) == 0x1E
    first_run(env)
    assert env.guest(0, lambda g: g.cpu(GICC_PMR)) == 0xF0  # the guest sees 0x1E << 3


# --- KVM_ARM_VCPU_TIMER_CTRL: kvm_arm_timer_{set,get,has}_attr, kvm_timer_enable --------------

def test_timer_ppis_default_and_read_without_a_vgic():
    """kvm_arm_timer_get_attr: 27, 30, 28, 26 (Documentation/virt/kvm/devices/vcpu.rst); set
    without an in-kernel vGIC is EINVAL, before the value is even read."""
    env = make_vm(1, gic=False)
    vcpu = env.vcpus[0]
    expected = {VTIMER: 27, PTIMER: 30, KVM_ARM_VCPU_TIMER_IRQ_HVTIMER: 28, KVM_ARM_VCPU_TIMER_IRQ_HPTIMER: 26}
    for attr, ppi in expected.items():
        vcpu.has_device_attr(TIMER, attr)
        assert vcpu.get_device_attr(TIMER, attr) == ppi
    assert errno_of(vcpu.set_device_attr, TIMER, VTIMER, 20) == EINVAL
    assert errno_of(vcpu.set_device_attr, TIMER, VTIMER, None) == EINVAL
    assert errno_of(vcpu.get_device_attr, TIMER, 4) == ENXIO
    assert errno_of(vcpu.has_device_attr, TIMER, 4) == ENXIO


def test_timer_ppi_checks_in_linux_order():
    """kvm_arm_timer_set_attr: EFAULT unreadable, EINVAL not a PPI (before ENXIO for an unknown
    attribute), and the value is the VM's: set on one vCPU, every vCPU reads it."""
    env = make_vm(2)
    vcpu0, vcpu1 = env.vcpus
    assert errno_of(vcpu0.set_device_attr, TIMER, VTIMER, None) == EFAULT
    for bad in (15, 32, -1, 1023):
        assert errno_of(vcpu0.set_device_attr, TIMER, VTIMER, bad) == EINVAL, bad
    assert errno_of(vcpu0.set_device_attr, TIMER, 4, 99) == EINVAL
    assert errno_of(vcpu0.set_device_attr, TIMER, 4, 20) == ENXIO
    vcpu0.set_device_attr(TIMER, VTIMER, 20)
    vcpu1.set_device_attr(TIMER, PTIMER, (21).to_bytes(4, "little"))
    assert [v.get_device_attr(TIMER, a) for v in (vcpu0, vcpu1) for a in (VTIMER, PTIMER)] == [20, 21, 20, 21]


def test_timer_ppis_are_fixed_once_a_vcpu_has_run():
    """kvm_timer_enable sets KVM_ARCH_FLAG_TIMER_PPIS_IMMUTABLE: then set is EBUSY (a valid PPI)."""
    env = make_vm(2)
    first_run(env, 1)
    assert errno_of(env.vcpus[0].set_device_attr, TIMER, VTIMER, 20) == EBUSY
    assert errno_of(env.vcpus[0].set_device_attr, TIMER, VTIMER, 40) == EINVAL  # the PPI check first


def test_both_timers_on_one_ppi_fails_the_first_run():
    """timer_irqs_are_valid: the virtual and physical timers on the same PPI make KVM_RUN EINVAL
    (and the PPIs stay settable, so the VMM can fix them)."""
    env = make_vm(1)
    env.vcpus[0].set_device_attr(TIMER, PTIMER, 27)
    assert errno_of(first_run, env) == EINVAL
    env.vcpus[0].set_device_attr(TIMER, PTIMER, 30)
    first_run(env)


# --- KVM_IRQ_LINE: kvm_vm_ioctl_irq_line, kvm_vgic_inject_irq ------------------------------

def test_irq_line_errnos():
    """kvm_vm_ioctl_irq_line: SPI/PPI need the vGIC (ENXIO), the CPU line must not have one
    (ENXIO); vCPU index or interrupt out of range, or an unknown type, EINVAL; vgic_get_irq:
    an SPI past the vGIC's last is EINVAL."""
    plain = make_vm(2, gic=False)
    assert errno_of(plain.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 40), 1) == ENXIO
    assert errno_of(plain.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 0, 20), 1) == ENXIO
    assert errno_of(plain.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 2, 0), 1) == EINVAL
    assert errno_of(plain.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 0, 2), 1) == EINVAL
    assert errno_of(plain.vm.irq_line, kvm_arm_irq(3, 0, 40), 1) == EINVAL
    assert errno_of(plain.vm.irq_line, -1, 1) == EFAULT

    env = make_vm(2)
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 0, 0), 1) == ENXIO
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 31), 1) == EINVAL
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 256), 1) == EINVAL
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 2, 20), 1) == EINVAL
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 256, 20), 1) == EINVAL  # vcpu2_index
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 0, 15), 1) == EINVAL
    assert errno_of(env.vm.irq_line, kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 0, 32), 1) == EINVAL
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 255), 1)
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_PPI, 1, 20), 1)


def test_irq_line_initialises_the_vgic():
    """kvm_vgic_inject_irq -> vgic_lazy_init: after an injection the vGIC's size is frozen."""
    env = make_vm(1)
    gic = env.gic
    assert gic is not None
    env.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, 33), 1)
    assert errno_of(gic.set_device_attr, NR_IRQS, 0, 64) == EBUSY
    assert gic.get_device_attr(DIST_REGS, vgic_reg_attr(0, 0x204)) == 0b10  # GICD_ISPENDR1: SPI 33


def test_cpu_irq_line_without_a_vgic_is_the_vcpus_irq_input():
    """vcpu_interrupt_line: KVM_ARM_IRQ_TYPE_CPU drives the vCPU's IRQ while the level is set."""
    env = make_vm(1, gic=False)
    traps = env.cpus[0]
    line = kvm_arm_irq(KVM_ARM_IRQ_TYPE_CPU, 0, KVM_ARM_IRQ_CPU_IRQ)
    assert env.guest(0, lambda _: traps.traps.irq_pending()) is False
    env.vm.irq_line(line, 1)
    assert env.guest(0, lambda _: traps.traps.irq_pending()) is True
    env.vm.irq_line(line, 0)
    assert env.guest(0, lambda _: traps.traps.irq_pending()) is False
