"""Named Linux behaviours that pvtime fixes by default and can reproduce on request.

As KVM names its own quirks, each known defect of docs/semantics.md section 6 that lives in the host has
a name here. A VM opts in with `Vm.enable_quirks`.
"""

from __future__ import annotations

from enum import Flag, auto


class Quirk(Flag):
    """Host-side Linux defects a VM may reproduce."""

    NONE = 0
    # `last_steal` not taken from the loading task: on a vCPU's first load Linux adds the
    # thread's whole run_delay (last_steal starts at 0), and when the vCPU moved to another host
    # thread it computes `now - last_steal` across two tasks, which mixes them and can wrap.
    # pvtime's default re-baselines on the loading task in both cases.
    STEAL_ACROSS_TASKS = auto()
    # Before Linux 5.9 the host kept steal in its own state and wrote it over the guest's record,
    # so a restored VM restarted from the new host's value (0). pvtime re-reads guest RAM.
    STEAL_CACHED_IN_HOST = auto()
    # Defects of the 2020 LPT RFC (never merged, so not Linux; reproducible the same way).
    # The RFC rescaled a pending timer through its delta to the counter held in a u32: deltas
    # >= 2^32 ticks wrap, and an expired timer (negative delta) becomes one 2^32 ticks away.
    LPT_U32_PENDING_DELTA = auto()
    # The RFC rescaled only CNTVOFF and the virtual timer: the physical counter (and CNTP_CVAL)
    # jumps at a migration between hosts of different frequencies.
    LPT_VTIMER_ONLY = auto()
    # The RFC answered PV_TIME_FEATURES(PV_TIME_ST) = NOT_SUPPORTED when LPT was not configured.
    LPT_ST_NEEDS_LPT = auto()
