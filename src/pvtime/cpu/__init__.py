"""CPU backends: execute one vCPU's guest code until something the hypervisor must handle.

`model` runs a Python model guest; `unicorn` runs AArch64 machine code. Both call back into the
hypervisor through `VcpuTraps` and report why they stopped with a `Stop`.
"""

from __future__ import annotations

from enum import Enum

from pvtime.cpu.backend import Clock, Conduit, CpuBackend, CpuFactory, Stop, StopKind, VcpuTraps


class CpuKind(Enum):
    """The engine a VM's vCPUs execute on; the value is its name in migration streams."""

    MODEL = "model"  # a Python model guest program
    UNICORN = "unicorn"  # AArch64 machine code in guest RAM

    @classmethod
    def _missing_(cls, value: object) -> CpuKind:
        raise ValueError(f"CPU backend {value!r}: expected one of {', '.join(k.value for k in cls)}")


def create_cpu(kind: CpuKind | str, index: int, *, instructions_per_sec: int | None = None) -> CpuBackend:
    """The backend for vCPU `index` of a VM whose CPU kind is `kind` (a `CpuKind` or its name)."""
    kind = CpuKind(kind)
    if kind is CpuKind.MODEL:
        from pvtime.cpu.model import ModelCpu

        return ModelCpu(index)
    from pvtime.cpu.unicorn import DEFAULT_INSTRUCTIONS_PER_SEC, UnicornCpu

    return UnicornCpu(index, instructions_per_sec=instructions_per_sec or DEFAULT_INSTRUCTIONS_PER_SEC)


__all__ = ["Clock", "Conduit", "CpuBackend", "CpuFactory", "CpuKind", "Stop", "StopKind", "VcpuTraps", "create_cpu"]
