"""CPU sets as Python integers (bit i = CPU i), as Linux keeps them in `struct cpumask`.

A host of thousands of CPUs is a few dozen machine words: intersecting a task's affinity with
the idle CPUs (`cpumask_and`) or finding the next set bit after a CPU (`cpumask_next_wrap`) is
one C-level operation on the integer instead of a Python loop over CPUs.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator

Key = tuple[int, ...]


def mask_of(cpus: Iterable[int]) -> int:
    """The set of `cpus` as a mask."""
    mask = 0
    for c in cpus:
        mask |= 1 << c
    return mask


def lowest(mask: int) -> int:
    """The lowest CPU of a non-empty mask (cpumask_first)."""
    return (mask & -mask).bit_length() - 1


def next_wrap(mask: int, start: int) -> int:
    """The first CPU of a non-empty mask at or after `start`, wrapping to the lowest
    (cpumask_next_wrap: the order select_idle_cpu and build_sched_groups walk CPUs in)."""
    above = mask >> start
    if above:
        return start + lowest(above)
    return lowest(mask)


def count_between(mask: int, lo: int, hi: int) -> int:
    """CPUs of `mask` in lo..hi, both included (0 when hi < lo)."""
    if hi < lo:
        return 0
    return ((mask >> lo) & ((1 << (hi - lo + 1)) - 1)).bit_count()


def cpus_of(mask: int) -> Iterator[int]:
    """The CPUs of `mask`, lowest first (for_each_cpu)."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class KeyedMasks:
    """CPUs grouped under a key, a tuple of integers (one mask per key), to find the CPUs with the least or
    greatest key within an affinity mask without visiting every CPU.

    There are few distinct keys (loads are sums of a few weights, a handful of task counts), so
    the keys are a sorted list and the search walks them from one end.
    """

    def __init__(self) -> None:
        self._keys: list[Key] = []  # sorted
        self._masks: dict[Key, int] = {}

    def add(self, key: Key, bit: int) -> None:
        """Put the CPU of mask `bit` under `key`."""
        mask = self._masks.get(key)
        if mask is None:
            insort(self._keys, key)
            self._masks[key] = bit
        else:
            self._masks[key] = mask | bit

    def remove(self, key: Key, bit: int) -> None:
        """Take the CPU of mask `bit` from `key` (it must be there)."""
        mask = self._masks[key] & ~bit
        if mask:
            self._masks[key] = mask
        else:
            del self._masks[key]
            del self._keys[bisect_left(self._keys, key)]

    def move(self, keys: list[Key | None], cpu: int, key: Key) -> None:
        """Put `cpu` under `key`, taking it from the key it had; `keys[cpu]` records each CPU's key
        (None: not placed yet)."""
        old = keys[cpu]
        if old != key:
            if old is not None:
                self.remove(old, 1 << cpu)
            self.add(key, 1 << cpu)
            keys[cpu] = key

    def least(self, within: int) -> tuple[Key, int] | None:
        """The least key holding a CPU of `within`, and those CPUs (None: no CPU of it)."""
        masks = self._masks
        for key in self._keys:
            mask = masks[key] & within
            if mask:
                return key, mask
        return None

    def greatest(self, within: int) -> tuple[Key, int] | None:
        """The greatest key holding a CPU of `within`, and those CPUs (None: no CPU of it)."""
        masks = self._masks
        for key in reversed(self._keys):
            mask = masks[key] & within
            if mask:
                return key, mask
        return None

    def items(self) -> list[tuple[Key, int]]:
        """(key, mask) pairs in key order (for checks)."""
        return [(k, self._masks[k]) for k in self._keys]
