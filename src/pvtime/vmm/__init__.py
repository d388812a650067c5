"""The VMM: lays out guest memory, configures PV time through the KVM API, runs vCPU threads."""

from pvtime.vmm.builder import Placement, build_machine, start_vcpu_threads
from pvtime.vmm.layout import Layout
from pvtime.vmm.machine import Machine, MachineConfig, VcpuThread
from pvtime.vmm.stop import StopReason, StopReasonKind

__all__ = ["Layout", "Machine", "MachineConfig", "Placement", "StopReason", "StopReasonKind", "VcpuThread",
           "build_machine", "start_vcpu_threads"]
