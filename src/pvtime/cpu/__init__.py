"""CPU backends: execute one vCPU's guest code until something the hypervisor must handle.

`model` runs a Python model guest; `unicorn` runs AArch64 machine code. Both call back into the
hypervisor through `VcpuTraps` and report why they stopped with a `Stop`.
"""

from pvtime.cpu.backend import Clock, Conduit, Stop, StopKind, VcpuTraps

__all__ = ["Clock", "Conduit", "Stop", "StopKind", "VcpuTraps"]
