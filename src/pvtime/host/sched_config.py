"""How a host's scheduler is configured: the fair policy, HZ, the preemption mode and tunables.

These are the knobs of a real Linux host that change `run_delay`, and so steal:

- `policy`: ``"eevdf"`` (Linux >= 6.6, modelled on v6.18) or ``"cfs"`` (Linux <= 6.5).
- `hz`: CONFIG_HZ, the scheduler tick rate (100, 250, 300 or 1000).
- `preempt`: the preemption model (``preempt=`` on the kernel command line with
  PREEMPT_DYNAMIC). For tasks that run in user mode -- which vCPU threads in guest mode and CPU
  hogs are -- ``none``, ``voluntary`` and ``full`` act alike: a wake-up preemption sets
  TIF_NEED_RESCHED and, on a remote CPU, sends an IPI, so it takes effect at once. ``lazy``
  makes the fair class's wake-up preemption set TIF_NEED_RESCHED_LAZY instead
  (`resched_curr_lazy`), which sends no IPI: a remote CPU acts on it at its next tick.
- each policy's own tunables, before Linux scales them by 1 + ilog2(min(ncpus, 8))
  (SCHED_TUNABLESCALING_LOG, `get_update_sysctl_factor` in kernel/sched/fair.c).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pvtime.abi.linux import NSEC_PER_MSEC, NSEC_PER_SEC

Policy = Literal["eevdf", "cfs"]
Preempt = Literal["none", "voluntary", "full", "lazy"]
POLICIES: tuple[Policy, ...] = ("eevdf", "cfs")
PREEMPT_MODES: tuple[Preempt, ...] = ("none", "voluntary", "full", "lazy")
HZ_VALUES = (100, 250, 300, 1000)


def tunable_factor(ncpus: int) -> int:
    """get_update_sysctl_factor with SCHED_TUNABLESCALING_LOG: 1 + ilog2(min(ncpus, 8))."""
    return 1 + (min(max(ncpus, 1), 8).bit_length() - 1)


@dataclass(frozen=True)
class EevdfTunables:
    """EEVDF's one tunable: sysctl_sched_base_slice before CPU-count scaling (0.7 ms since
    Linux 6.12's "Reduce the default slice to avoid tasks getting an extra tick"; 0.75 ms in
    6.6 to 6.11)."""

    base_slice_ns: int = 700_000

    def __post_init__(self) -> None:
        if self.base_slice_ns <= 0:
            raise ValueError(f"base_slice_ns must be positive, got {self.base_slice_ns}")

    def scaled(self, ncpus: int) -> EevdfTunables:
        """The value Linux uses on `ncpus` CPUs."""
        return EevdfTunables(self.base_slice_ns * tunable_factor(ncpus))


@dataclass(frozen=True)
class CfsTunables:
    """sysctl_sched_{latency,min_granularity,wakeup_granularity} of CFS, before scaling."""

    latency_ns: int = 6 * NSEC_PER_MSEC
    min_granularity_ns: int = 750_000
    wakeup_granularity_ns: int = 1 * NSEC_PER_MSEC

    def __post_init__(self) -> None:
        for name in ("latency_ns", "min_granularity_ns", "wakeup_granularity_ns"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def scaled(self, ncpus: int) -> CfsTunables:
        """The values Linux uses on `ncpus` CPUs: each times 1 + ilog2(min(ncpus, 8))."""
        f = tunable_factor(ncpus)
        return CfsTunables(self.latency_ns * f, self.min_granularity_ns * f, self.wakeup_granularity_ns * f)


@dataclass(frozen=True)
class SchedConfig:
    """A host scheduler: policy, HZ, preemption mode, and the chosen policy's tunables."""

    policy: Policy = "eevdf"
    hz: int = 250
    preempt: Preempt = "voluntary"
    eevdf: EevdfTunables = field(default_factory=EevdfTunables)
    cfs: CfsTunables = field(default_factory=CfsTunables)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.hz not in HZ_VALUES:
            raise ValueError(f"hz must be one of {', '.join(map(str, HZ_VALUES))}, got {self.hz}")
        if self.preempt not in PREEMPT_MODES:
            raise ValueError(f"preempt must be one of {', '.join(PREEMPT_MODES)}, got {self.preempt!r}")
        if self.policy == "cfs" and self.preempt == "lazy":
            raise ValueError("lazy preemption came with Linux 6.13; CFS is Linux <= 6.5")

    @property
    def tick_ns(self) -> int:
        """TICK_NSEC: the scheduler tick period, rounded as Linux rounds it."""
        return (NSEC_PER_SEC + self.hz // 2) // self.hz

    @property
    def lazy(self) -> bool:
        """dynamic_preempt_lazy(): fair wake-up preemption waits for the tick on a remote CPU."""
        return self.preempt == "lazy"

    def describe(self) -> str:
        """One line for captions and summaries, e.g. ``eevdf, HZ=250, preempt=none``."""
        return f"{self.policy}, HZ={self.hz}, preempt={self.preempt}"
