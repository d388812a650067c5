"""The /dev/kvm handle: capabilities and VM creation."""

from __future__ import annotations

from pvtime.abi.uapi import KVM_CAP_STEAL_TIME
from pvtime.cpu.backend import CpuFactory
from pvtime.host.host import Host
from pvtime.kvm.vm import Vm, vcpu_limits


class Kvm:
    """KVM on one host (open("/dev/kvm"))."""

    def __init__(self, host: Host) -> None:
        self.host = host  # the machine KVM runs on (and its VMM with it)
        self._vms: list[Vm] = []

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        if cap == KVM_CAP_STEAL_TIME:
            return int(self.host.schedstats)
        return vcpu_limits(cap, self.host.ncpus)

    def create_vm(self, name: str | None = None, *, protected: bool = False, cpu: CpuFactory | None = None) -> Vm:
        """KVM_CREATE_VM. `cpu(index)` makes the engine that executes vCPU `index`'s guest code
        (`pvtime.cpu.create_cpu`; the VMM keeps it to install a model program): by default a
        model CPU. An unnamed VM is "vmN", N the number of VMs open on this KVM."""
        vm = Vm(self.host, name or f"vm{len(self._vms)}", protected=protected, cpu=cpu, release=self._destroy)
        self._vms.append(vm)
        return vm

    def _destroy(self, vm: Vm) -> None:
        """kvm_destroy_vm, when the VMM closes the VM fd."""
        if vm in self._vms:
            self._vms.remove(vm)
