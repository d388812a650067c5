"""The hypervisor, in the shape of the KVM/arm64 userspace API (rust-vmm kvm-ioctls style)."""

from pvtime.kvm.errors import KvmError
from pvtime.kvm.exits import (
    Exit, HaltExit, InternalErrorExit, IntrExit, MmioExit, SemihostingExit, SystemEventExit,
)
from pvtime.kvm.quirks import Quirk
from pvtime.kvm.system import Kvm
from pvtime.kvm.trace import HypercallEvent, HypercallObserver
from pvtime.kvm.vcpu import Vcpu
from pvtime.kvm.vgic import VgicV2Device
from pvtime.kvm.vm import Vm

__all__ = [
    "Exit", "HaltExit", "HypercallEvent", "HypercallObserver", "InternalErrorExit", "IntrExit", "Kvm", "KvmError",
    "MmioExit", "Quirk", "SemihostingExit", "SystemEventExit", "Vcpu", "VgicV2Device", "Vm",
]
