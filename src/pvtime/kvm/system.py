"""The /dev/kvm handle: capabilities and VM creation."""

from __future__ import annotations

from pvtime.abi.uapi import KVM_CAP_STEAL_TIME
from pvtime.host.host import Host
from pvtime.kvm.vm import Vm


class Kvm:
    """KVM on one host (open("/dev/kvm"))."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.vms: list[Vm] = []

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        if cap == KVM_CAP_STEAL_TIME:
            return int(self.host.schedstats)
        return 0

    def create_vm(self, name: str | None = None, *, protected: bool = False, cpu: str = "model",
                  instructions_per_sec: int | None = None) -> Vm:
        """KVM_CREATE_VM. `cpu` picks the vCPU backend: "model" (Python model guests) or "unicorn"
        (AArch64 machine code, `instructions_per_sec` of virtual time per guest instruction rate)."""
        vm = Vm(self, name or f"vm{len(self.vms)}", protected=protected, cpu=cpu,
                instructions_per_sec=instructions_per_sec)
        self.vms.append(vm)
        return vm
