"""Load weights from nice values, as Linux's kernel/sched/core.c tables them.

Each nice step changes a task's share of a contended CPU by about 10%: the weights are spaced
by a factor of ~1.25, and nice 0 weighs NICE_0_LOAD = 1024.
"""

from __future__ import annotations

NICE_0_LOAD = 1024
MIN_NICE = -20
MAX_NICE = 19

# sched_prio_to_weight[nice + 20], copied from Linux (kernel/sched/core.c).
SCHED_PRIO_TO_WEIGHT: tuple[int, ...] = (
    88761, 71755, 56483, 46273, 36291,
    29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906,
    3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423,
    335, 272, 215, 172, 137,
    110, 87, 70, 56, 45,
    36, 29, 23, 18, 15,
)


def weight_of(nice: int) -> int:
    """The load weight of a task at `nice` (-20..19)."""
    if not MIN_NICE <= nice <= MAX_NICE:
        raise ValueError(f"nice must be in {MIN_NICE}..{MAX_NICE}, got {nice}")
    return SCHED_PRIO_TO_WEIGHT[nice - MIN_NICE]


def calc_delta_fair(delta_ns: int, weight: int) -> int:
    """Scale wall (virtual) time to vruntime: delta * NICE_0_LOAD / weight.

    Linux does this with a 32-bit inverse weight and a shift; exact integer division keeps the
    model simple and deterministic, and differs from Linux by at most a nanosecond per update.
    """
    if weight == NICE_0_LOAD:
        return delta_ns
    return delta_ns * NICE_0_LOAD // weight
