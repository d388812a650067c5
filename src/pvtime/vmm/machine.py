"""A VM as a VMM builds it: memory, PV-time configuration, vCPUs and their host threads."""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pvtime.abi.records import LPT_RECORD_SIZE, STEAL_TIME_OFFSET, LptRecord
from pvtime.abi.uapi import (
    INVALID_GPA, KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, KVM_ARM_VM_PVTIME_LPT_CTRL,
    KVM_ARM_VM_PVTIME_LPT_FREQ, KVM_ARM_VM_PVTIME_LPT_IPA, KVM_CAP_STEAL_TIME, KVM_ARM_IRQ_TYPE_SPI,
    KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_PTIMER, KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_TYPE_ARM_VGIC_V2,
    KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, VGIC_V2_MAX_CPUS, KVM_REG_ARM_MPIDR_EL1, kvm_arm_irq,
)
from pvtime.cpu import CpuBackend, CpuFactory, CpuKind, create_cpu
from pvtime.cpu.model import ModelCpu
from pvtime.guest.machine import ModelProgram
from pvtime.host.task import Slice, Step, Task, TaskState
from pvtime.kvm import (
    HaltExit, InternalErrorExit, IntrExit, Kvm, KvmError, MmioExit, Quirk, SystemEventExit, Vcpu, VgicV2Device,
    Vm,
)
from pvtime.abi.uapi import REG_PC, reg_x
from pvtime.kvm import SemihostingExit
from pvtime.vmm import devices, semihosting
from pvtime.vmm.coalesced import CoalescedUart
from pvtime.vmm.elf import LoadedImage, load_elf
from pvtime.vmm import linux_boot
from pvtime.vmm.arm64_image import BootLayout
from pvtime.vmm.devicetree import SPI_BASE, DeviceTreeSpec, TimerIntids, virt_device_tree
from pvtime.vmm.layout import QEMU_VIRT, QEMU_VIRT_GIC, Layout
from pvtime.vmm.linux_boot import LinuxBoot
from pvtime.vmm.stop import StopReason

MiB = 1024 * 1024


def guest_memory(size: int) -> memoryview:
    """`size` bytes of guest memory as a VMM allocates it: a private anonymous mapping (QEMU's
    memory-backend-ram), so a page costs host memory only once the guest or the VMM touches it."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))


@dataclass
class MachineConfig:
    """What a VMM is asked to build."""

    name: str
    vcpus: int = 1
    memory_mib: int = 64
    pvtime: bool = True
    quirks: Quirk = Quirk.NONE
    layout: Layout = field(default_factory=lambda: QEMU_VIRT)
    cpu: CpuKind = CpuKind.MODEL  # the vCPU backend: Python model guests, or AArch64 code (unicorn)
    instructions_per_sec: int | None = None  # unicorn: guest instructions per virtual second
    lpt_pv_hz: int | None = None  # Live Physical Time at this PV frequency (None: not configured)
    vgic: bool = False  # an in-kernel GICv2 (KVM's vGIC), as Linux guests need; else a line-level timer

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.vcpus < 1:
            raise ValueError(f"{self.name}: vcpus must be >= 1, got {self.vcpus}")
        if self.pvtime and self.vcpus > self.layout.max_vcpus():
            raise ValueError(f"{self.name}: vcpus {self.vcpus} exceeds the PV-time region "
                             f"({self.layout.max_vcpus()} records)")
        if self.memory_mib < 1:
            raise ValueError(f"{self.name}: memory_mib must be >= 1, got {self.memory_mib}")
        if self.lpt_pv_hz is not None and not 1 <= self.lpt_pv_hz <= 0xFFFF_FFFF:
            raise ValueError(f"{self.name}: lpt_pv_hz must be in 1..2^32-1 Hz, got {self.lpt_pv_hz}")
        if self.vgic and self.vcpus > VGIC_V2_MAX_CPUS:
            raise ValueError(f"{self.name}: a GICv2 serves at most {VGIC_V2_MAX_CPUS} vCPUs, got {self.vcpus} "
                             "(pvtime does not model a GICv3)")


class Machine:
    """One VM, and the buffers and CPU engines the VMM owns for it.

    `cpus` makes the engine of each vCPU (default: `config.cpu`'s, `pvtime.cpu.create_cpu`); the
    VMM keeps them in `self.cpus`, to install a model guest program on them.
    """

    RAM_SLOT = 0
    PVTIME_SLOT = 1

    def __init__(self, kvm: Kvm, config: MachineConfig, *, cpus: CpuFactory | None = None) -> None:
        config.validate()
        self.config = config
        self.kvm = kvm
        make = cpus or partial(create_cpu, config.cpu, instructions_per_sec=config.instructions_per_sec)
        self.cpus: list[CpuBackend] = [make(i) for i in range(config.vcpus)]
        self.vm: Vm = kvm.create_vm(config.name, cpu=self.cpus.__getitem__)
        self.vm.enable_quirks(config.quirks)
        layout = config.layout
        self.ram = guest_memory(config.memory_mib * MiB)
        self.vm.set_user_memory_region(self.RAM_SLOT, layout.ram_base, len(self.ram), self.ram)
        self.pvtime_mem: memoryview | None = None
        self.vcpus: list[Vcpu] = [self.vm.create_vcpu(i) for i in range(config.vcpus)]
        self.gic: VgicV2Device | None = self._create_vgic() if config.vgic else None
        if config.pvtime:
            self._configure_pvtime()
        if config.lpt_pv_hz is not None:
            self.configure_lpt(config.lpt_pv_hz)
        self.console = bytearray()
        self.console_sink: Callable[[bytes], None] | None = None  # also gets console output as it comes
        self.exit_status: int | None = None  # the guest's semihosting exit status, once it exits
        self.uart = devices.uart_for(layout, self._emit, None if self.gic is None else self._uart_irq)
        # Machine code prints through the UART: its DR stores are coalesced while they may be.
        self.coalesced: CoalescedUart | None = None
        if config.cpu is not CpuKind.MODEL and self.vcpus:
            self.coalesced = CoalescedUart(self.vm, self.vcpus[0], self.uart)
        self.stopped: StopReason | None = None  # why the VM stopped, once it has
        self.paused = False  # vCPU threads block until resume() (migration's stop-and-copy)
        self.started = False  # a vCPU thread has entered KVM_RUN
        self.model_program: ModelProgram | None = None
        self.errors: list[InternalErrorExit] = []
        self._steal_fields: dict[int, memoryview] = {}  # vCPU -> its stolen_time bytes (stolen_time)

    def _create_vgic(self) -> VgicV2Device:
        """KVM's in-kernel GICv2 at QEMU virt's addresses, initialised once the vCPUs exist (as QEMU's
        kvm_arm_gicv2 does: create, place the distributor and CPU interface, then CTRL_INIT)."""
        gic = self.vm.create_device(KVM_DEV_TYPE_ARM_VGIC_V2)
        assert gic is not None  # None only for KVM_CREATE_DEVICE_TEST
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_DIST, QEMU_VIRT_GIC.dist_base)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V2_ADDR_TYPE_CPU, QEMU_VIRT_GIC.cpu_base)
        gic.set_device_attr(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT)
        return gic

    def _uart_irq(self, level: bool) -> None:
        """The UART's interrupt output, wired to its SPI (KVM_IRQ_LINE)."""
        self.vm.irq_line(kvm_arm_irq(KVM_ARM_IRQ_TYPE_SPI, 0, SPI_BASE + QEMU_VIRT_GIC.uart_spi), int(level))

    def _configure_pvtime(self) -> None:
        """Reserve the records' granule(s) and give each vCPU its IPA, as QEMU's kvm-steal-time."""
        layout = self.config.layout
        if not self.vm.check_extension(KVM_CAP_STEAL_TIME):
            raise RuntimeError(f"{self.config.name}: the host does not support KVM_CAP_STEAL_TIME")
        self.add_pvtime_region()
        for vcpu in self.vcpus:
            vcpu.set_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA, layout.steal_record(vcpu.id))

    def add_pvtime_region(self) -> memoryview:
        """The PV-time granule(s) as a memslot (once): stolen-time records and the LPT record."""
        if self.pvtime_mem is None:
            layout = self.config.layout
            self.pvtime_mem = guest_memory(layout.pvtime_region_size(len(self.vcpus)))
            self.vm.set_user_memory_region(self.PVTIME_SLOT, layout.pvtime_base, len(self.pvtime_mem),
                                           self.pvtime_mem)
        return self.pvtime_mem

    def configure_lpt(self, pv_hz: int, ipa: int | None = None) -> None:
        """LPT: the record in the PV-time granule, and the PV frequency (the RFC's VM attributes)."""
        self.add_pvtime_region()
        ipa = self.config.layout.lpt_record() if ipa is None else ipa
        self.vm.set_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA, ipa)
        self.vm.set_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_FREQ, pv_hz)

    def pause(self) -> None:
        """Stop entering the guest (vCPU threads block at their next step); state stays intact."""
        self.paused = True

    def resume(self) -> None:
        """Undo `pause`; the caller wakes the vCPU threads (the scheduler owns them)."""
        self.paused = False

    def load_model_guest(self, program: ModelProgram) -> None:
        """Boot the model guest on every vCPU: install it on their model CPUs (ValueError for a
        machine-code CPU, which runs what guest RAM holds: load an image and set the PC)."""
        models = [cpu for cpu in self.cpus if isinstance(cpu, ModelCpu)]
        if len(models) != len(self.cpus):
            raise ValueError(f"{self.config.name}: a {self.config.cpu.value} vCPU runs machine code from "
                             "guest RAM, not a model program (load an image and set the PC)")
        self.model_program = program
        for cpu in models:
            cpu.load(program)

    def stop(self, why: StopReason) -> None:
        """Stop every vCPU of this VM (the other VMs go on)."""
        if self.stopped is None:
            self.stopped = why

    def _emit(self, data: bytes) -> None:
        self.console += data
        if self.console_sink is not None:
            self.console_sink(data)

    def load_elf(self, image: bytes | Path | str, *, bootargs: str = "") -> LoadedImage:
        """Place an AArch64 ELF in RAM, and the device tree at the start of RAM when it fits below
        the image (where QEMU puts it for a bare-metal ELF: hw/arm/boot.c, arm_setup_direct_kernel_boot);
        vCPU 0 starts at the ELF's entry with x0 = 0, the others powered off (PSCI). `bootargs` is
        /chosen/bootargs."""
        layout = self.config.layout
        loaded = load_elf(image, self.ram, layout.ram_base)
        for vcpu in self.vcpus:
            vcpu.init(power_off=vcpu.id != 0)
        dtb = virt_device_tree(self.device_tree(bootargs))
        if layout.ram_base + len(dtb) <= min(s.gpa for s in loaded.segments):
            self.ram[:len(dtb)] = dtb
        self.vcpus[0].set_one_reg(REG_PC, loaded.entry)
        return loaded

    def device_tree(self, bootargs: str = "", initrd: tuple[int, int] | None = None) -> DeviceTreeSpec:
        """What the machine's device tree describes: its RAM, its vCPUs by the MPIDR each reads
        through KVM_GET_ONE_REG (as QEMU and kvmtool build their cpu nodes), PSCI over HVC, the
        timer PPIs the vCPU timer attributes name, the PL011, and the GIC only with a vGIC (else
        the timer interrupt is line-level)."""
        vcpu0 = self.vcpus[0]
        timers = TimerIntids(vtimer=vcpu0.get_device_attr(KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER),
                           ptimer=vcpu0.get_device_attr(KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_PTIMER))
        mpidrs = tuple(vcpu.get_one_reg(KVM_REG_ARM_MPIDR_EL1) for vcpu in self.vcpus)
        return DeviceTreeSpec(mpidrs=mpidrs, ram_size=len(self.ram), layout=self.config.layout,
                              gic=QEMU_VIRT_GIC if self.gic is not None else None, timers=timers,
                              bootargs=bootargs, initrd=initrd)

    def load_linux(self, boot: LinuxBoot) -> BootLayout:
        """Boot a Linux kernel: the Image, its initramfs and this machine's device tree in RAM;
        vCPU 0 at the kernel's entry with x0 = the tree, the others off for PSCI."""
        return linux_boot.load_linux(self.ram, self.vcpus, boot, self.device_tree)

    def regions(self) -> list[tuple[int, int, memoryview]]:
        """(slot, guest address, buffer) of every memory region the VMM owns for this VM."""
        layout = self.config.layout
        out = [(self.RAM_SLOT, layout.ram_base, self.ram)]
        if self.pvtime_mem is not None:
            out.append((self.PVTIME_SLOT, layout.pvtime_base, self.pvtime_mem))
        return out

    def read_guest(self, gpa: int, size: int) -> bytes | None:
        """Guest memory as the VMM sees it (RAM and the PV-time region), None elsewhere."""
        for _, base, buf in self.regions():
            if base <= gpa and gpa + size <= base + len(buf):
                return bytes(buf[gpa - base:gpa - base + size])
        return None

    def stolen_time(self, vcpu_id: int) -> int | None:
        """A vCPU's stolen_time as its record in guest memory holds it (None without a record)."""
        field = self.stolen_time_field(vcpu_id)
        return None if field is None else int.from_bytes(field, "little")

    def stolen_time_field(self, vcpu_id: int) -> memoryview | None:
        """The 8 bytes of a vCPU's stolen_time in the VMM's buffers (little-endian), once its IPA
        is set and backed; None before. It stays valid: an IPA cannot change once set, and the
        buffers are the machine's for good."""
        field = self._steal_fields.get(vcpu_id)
        if field is not None:
            return field
        try:
            ipa = self.vcpus[vcpu_id].get_device_attr(KVM_ARM_VCPU_PVTIME_CTRL, KVM_ARM_VCPU_PVTIME_IPA)
        except KvmError:
            return None  # PV time not supported on this host or VM
        if ipa == INVALID_GPA:
            return None
        gpa = ipa + STEAL_TIME_OFFSET
        for _, base, buf in self.regions():
            if base <= gpa and gpa + 8 <= base + len(buf):
                field = self._steal_fields[vcpu_id] = buf[gpa - base:gpa - base + 8]
                return field
        return None

    def lpt_record(self) -> LptRecord | None:
        """The VM's LPT record as guest memory holds it (None without LPT)."""
        try:
            ipa = self.vm.get_device_attr(KVM_ARM_VM_PVTIME_LPT_CTRL, KVM_ARM_VM_PVTIME_LPT_IPA)
        except KvmError:
            return None
        raw = self.read_guest(ipa, LPT_RECORD_SIZE) if ipa != INVALID_GPA else None
        return None if raw is None else LptRecord.unpack(raw)

    def handle_semihosting(self, vcpu: Vcpu, ex: SemihostingExit) -> None:
        """Serve an Arm semihosting call (console output, exit status)."""
        result = semihosting.serve(ex.op, ex.param, self.read_guest)
        if result.console:
            self._emit(result.console)
        if result.x0 is not None:
            vcpu.set_one_reg(reg_x(0), result.x0)
        if result.error is not None:
            self.stop(StopReason.semihosting_error(vcpu.id, result.error))
        elif result.exit_status is not None:
            self.exit_status = result.exit_status
            self.stop(StopReason.guest_exit(result.exit_status))

    def handle_mmio(self, vcpu: Vcpu, ex: MmioExit) -> None:
        """The VMM's devices: the PL011 data register; other addresses read as zero."""
        layout = self.config.layout
        if self.config.cpu is not CpuKind.MODEL:  # machine code: a PL011, and nothing where nothing is
            if self.uart.contains(ex.phys_addr):
                data = self.uart.access(ex)
                if data is not None:
                    vcpu.complete_mmio(data)
                elif self.coalesced is not None:
                    self.coalesced.sync()  # the store may have changed the interrupt mask
                return
            error = devices.unassigned_access(vcpu, ex, self.read_guest)
            self.errors.append(error)
            self.stop(StopReason.internal_error(vcpu.id, error))
            return
        if ex.is_write and ex.phys_addr == layout.uart_base:
            self.console += ex.data[:1]
        elif not ex.is_write:
            vcpu.complete_mmio(bytes(ex.len))


class VcpuThread:
    """The VMM thread of one vCPU: `while True: exit = vcpu.run(); handle(exit)`."""

    def __init__(self, machine: Machine, vcpu: Vcpu) -> None:
        self.machine = machine
        self.vcpu = vcpu
        self.task: Task | None = None
        # run_delay when the vCPU first entered the guest: a guest that calls PV_TIME_ST in its
        # first slice counts steal from this value, so host truth is measured from it.
        self.first_run_delay_ns: int | None = None
        # The furthest virtual time this thread has executed to: a segment is simulated ahead of
        # the event loop, so a migration saves the counters no earlier than this.
        self.last_ns = 0

    def step(self, slice_: Slice) -> Step:
        """Run the vCPU until its slice ends, it halts, or the VM stops."""
        try:
            return self._step(slice_)
        finally:
            if slice_.now_ns > self.last_ns:
                self.last_ns = slice_.now_ns

    def _step(self, slice_: Slice) -> Step:
        if self.first_run_delay_ns is None:
            self.first_run_delay_ns = slice_.task.run_delay_ns
        while True:
            if self.machine.stopped is not None:
                return Step(TaskState.EXITED)
            if self.machine.paused:
                return Step(TaskState.SLEEPING)  # until the VMM resumes and wakes the thread
            self.machine.started = True
            try:
                ex = self.vcpu.run()
            except KvmError as err:  # KVM_RUN failed (e.g. LPT half configured): this VM stops
                self.machine.stop(StopReason.kvm_run_failed(self.vcpu.id, err))
                return Step(TaskState.EXITED)
            if self.machine.coalesced is not None:
                self.machine.coalesced.flush()  # the devices see earlier stores before this exit
            if isinstance(ex, IntrExit):
                return _QUEUED
            if isinstance(ex, HaltExit):
                return Step(TaskState.SLEEPING, ex.wake_at_ns)
            if isinstance(ex, MmioExit):
                self.machine.handle_mmio(self.vcpu, ex)
                continue
            if isinstance(ex, SemihostingExit):
                self.machine.handle_semihosting(self.vcpu, ex)
                continue
            if isinstance(ex, SystemEventExit):
                self.machine.stop(StopReason.system_event(ex.type))
                return Step(TaskState.EXITED)
            if isinstance(ex, InternalErrorExit):
                self.machine.errors.append(ex)
                self.machine.stop(StopReason.internal_error(self.vcpu.id, ex))
                return Step(TaskState.EXITED)
            raise RuntimeError(f"unexpected exit {ex!r}")


_QUEUED = Step(TaskState.QUEUED)  # a Step is immutable: one serves every preempted run
