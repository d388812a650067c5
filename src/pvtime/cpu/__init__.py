"""CPU backends: execute one vCPU's guest code until something the hypervisor must handle.

`model` runs a Python model guest; `unicorn` runs AArch64 machine code. Both call back into the
hypervisor through `VcpuTraps` and report why they stopped with a `Stop`.
"""

from pvtime.cpu.backend import Clock, Conduit, CpuBackend, CpuFactory, Stop, StopKind, VcpuTraps

CPU_KINDS = ("model", "unicorn")


def create_cpu(kind: str, index: int, *, instructions_per_sec: int | None = None) -> CpuBackend:
    """The backend for vCPU `index` of a VM whose CPU kind is `kind` ("model" or "unicorn")."""
    if kind == "model":
        from pvtime.cpu.model import ModelCpu

        return ModelCpu(index)
    if kind == "unicorn":
        from pvtime.cpu.unicorn import DEFAULT_INSTRUCTIONS_PER_SEC, UnicornCpu

        return UnicornCpu(index, instructions_per_sec=instructions_per_sec or DEFAULT_INSTRUCTIONS_PER_SEC)
    raise ValueError(f"CPU backend {kind!r}: expected one of {', '.join(CPU_KINDS)}")


__all__ = ["CPU_KINDS", "Clock", "Conduit", "CpuBackend", "CpuFactory", "Stop", "StopKind", "VcpuTraps", "create_cpu"]
