"""What a CPU backend may serve without calling the hypervisor: counter reads and SMCCC calls
whose answers the hypervisor publishes (the unicorn backend serves them in C, `cpu.unicorn.fast_traps`).

A hypervisor that offers this implements `FastPathTraps` beside `VcpuTraps`. The published values
hold from the moment the backend asks for them until the next trap the backend hands to the
hypervisor (an MSR, a hypercall it does not answer itself) or the end of the `execute()`: the
backend asks again after each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CounterParams:
    """The generic counters as the hypervisor computes them at host virtual time `t` ns:
    `count = t * counter_hz // 1e9`, CNTVCT_EL0 = (count - voffset) mod 2^64, CNTPCT_EL0 =
    (count - poffset) mod 2^64; an EL0 read of either traps to EL1 unless CNTKCTL_EL1 (`cntkctl`)
    enables it (EL0VCTEN, EL0PCTEN)."""

    counter_hz: int
    voffset: int
    poffset: int
    cntkctl: int


@dataclass(frozen=True)
class HypercallAnswer:
    """An SMCCC call (HVC) whose answer is fixed: function id `fid` (the low 32 bits of x0) with
    x1's low 32 bits equal to `x1` (None: any x1) sets x0..x3 to `result`, and does nothing else
    but count as a hypercall."""

    fid: int
    x1: int | None
    result: tuple[int, int, int, int]


class FastPathTraps(Protocol):
    """The hypervisor's side of the fast paths (optional for a `VcpuTraps`)."""

    def counter_params(self) -> CounterParams | None:
        """How the counters read now; None when every read must go through `read_sysreg`."""
        ...

    def constant_hypercalls(self) -> tuple[HypercallAnswer, ...]:
        """The calls a backend may answer itself now (empty: all go through `hypercall`)."""
        ...

    def note_hypercalls(self, count: int) -> None:
        """`count` calls of `constant_hypercalls()` were answered by the backend itself."""
        ...
