"""Conversions per second of the LPT fixed-point conversions, against exact Fraction arithmetic.

Run: ``python bench/bench_fixedpoint.py [--n N] [--repeat R] [--native HZ] [--pv HZ]``.
Prints figures only; nothing here asserts on time.  Wall clock (perf_counter) is allowed in
bench/ only.
"""

from __future__ import annotations

import argparse
import random
from fractions import Fraction
from math import ceil, floor

from common import machine_line, rate

from pvtime.fixedpoint import (
    U64_MAX,
    native_to_pv,
    pv_to_native,
    pv_to_native_deadline,
    scale_factors,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="inputs per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("--native", type=int, default=24_000_000, help="native Hz")
    parser.add_argument("--pv", type=int, default=1_000_000_000, help="PV Hz")
    args = parser.parse_args()

    sf = scale_factors(args.native, args.pv)
    fwd, rev = Fraction(args.pv, args.native), Fraction(args.native, args.pv)
    rng = random.Random(0)  # fixed inputs: the same work on every run
    # Native inputs below the PV horizon (no wrap), PV inputs over the whole u64 range.
    native_in = [rng.randrange(U64_MAX // max(1, args.pv // args.native + 1)) for _ in range(args.n)]
    pv_in = [rng.randrange(U64_MAX) for _ in range(args.n)]

    cases = [
        ("native_to_pv", native_in, lambda t: native_to_pv(t, sf), lambda t: floor(t * fwd)),
        ("pv_to_native (RFC)", pv_in, lambda t: pv_to_native(t, sf), lambda t: floor(t * rev)),
        ("pv_to_native_deadline", pv_in, lambda t: pv_to_native_deadline(t, sf),
         lambda t: ceil(t * rev)),
    ]
    print(machine_line())
    print(f"native {args.native} Hz -> pv {args.pv} Hz; {args.n} inputs, best of {args.repeat}")
    print(f"{'conversion':<24}{'fixedpoint/s':>14}{'Fraction/s':>14}{'ratio':>8}")
    for name, inputs, ours, peer in cases:
        ours_rate = rate(ours, inputs, args.repeat)
        peer_rate = rate(peer, inputs, args.repeat)
        print(f"{name:<24}{ours_rate:>14,.0f}{peer_rate:>14,.0f}{ours_rate / peer_rate:>7.1f}x")


if __name__ == "__main__":
    main()
