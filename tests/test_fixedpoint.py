"""LPT fixed-point arithmetic against exact rational arithmetic (docs/semantics.md section 5)."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import ceil, floor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvtime.abi.records import LptRecord
from pvtime.fixedpoint import (
    U32_MAX,
    U64_MAX,
    ScaleFactors,
    describe,
    native_to_pv,
    native_to_pv_error_bound,
    overflow_horizon,
    pv_to_native,
    pv_to_native_deadline,
    pv_to_native_error_bound,
    rfc_reverse_early_bound,
    scale_factors,
)

MHZ = 1_000_000
FREQS = [24 * MHZ, 25 * MHZ, 100 * MHZ, 1000 * MHZ, 19_200_000, 1, U32_MAX]
PAIRS = list(itertools.product(FREQS, repeat=2))
PAIR_IDS = [f"{n}->{p}" for n, p in PAIRS]

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

freqs = st.one_of(st.sampled_from(FREQS), st.integers(1, U32_MAX), st.integers(1, 64))
ticks = st.one_of(
    st.integers(0, U64_MAX),
    st.integers(0, 1 << 20),
    st.sampled_from([0, 1, 2, U64_MAX, U64_MAX - 1, 1 << 63, (1 << 63) - 1, 1 << 32]),
)


# ----- independent oracles: written from docs/semantics.md, not from the module ---------------

def oracle_intbits(ratio: Fraction) -> int:
    """ilog2(floor(ratio)) + 1, at least 1, by counting (no bit tricks)."""
    q = floor(ratio)
    bits = 1
    while (1 << bits) <= q:
        bits += 1
    return bits


def oracle_factors(native: int, pv: int) -> tuple[int, int, int, int]:
    fwd, rev = Fraction(pv, native), Fraction(native, pv)
    fracbits = 64 - oracle_intbits(fwd)
    rfracbits = 64 - oracle_intbits(rev)
    return floor(fwd * 2**fracbits), fracbits, floor(rev * 2**rfracbits), rfracbits


def wide_fwd(n: int, sf: ScaleFactors) -> int:
    """The forward conversion before truncation to u64 (the 128-bit product, shifted)."""
    return (sf.scale_mult * n) >> sf.fracbits


def wide_rev(t: int, sf: ScaleFactors) -> int:
    return (sf.rscale_mult * t) >> sf.rfracbits


def exact_deadline(t: int, sf: ScaleFactors) -> int:
    """Smallest n with floor(s*n / 2^F) >= t, from Fractions."""
    return ceil(Fraction(t * 2**sf.fracbits, sf.scale_mult))


# ----- the worked example and the frequency matrix ---------------------------------------------

def test_worked_example() -> None:
    sf = scale_factors(25 * MHZ, 100 * MHZ)
    assert (sf.fracbits, sf.scale_mult) == (61, 2**63)
    assert (sf.rfracbits, sf.rscale_mult) == (63, 2**61)
    assert native_to_pv(1000, sf) == 4000
    assert pv_to_native(4000, sf) == 1000
    assert pv_to_native_deadline(4000, sf) == 1000
    assert pv_to_native_deadline(4001, sf) == 1001  # 1000 reads PV 4000 < 4001
    assert native_to_pv_error_bound(sf) == 1  # exact scale: only the final shift truncates
    assert rfc_reverse_early_bound(sf) == 1


@pytest.mark.parametrize(("native", "pv"), PAIRS, ids=PAIR_IDS)
def test_matrix_factors(native: int, pv: int) -> None:
    sf = scale_factors(native, pv)
    assert (sf.scale_mult, sf.fracbits, sf.rscale_mult, sf.rfracbits) == oracle_factors(native, pv)
    # Both multipliers fit in u64, and are never uselessly small.
    assert 2**31 <= sf.scale_mult <= U64_MAX
    assert 2**31 <= sf.rscale_mult <= U64_MAX
    assert 32 <= sf.fracbits <= 63 and 32 <= sf.rfracbits <= 63
    if pv >= native:  # a ratio >= 1 uses the full 64 bits
        assert sf.scale_mult >> 63 == 1
    if native >= pv:
        assert sf.rscale_mult >> 63 == 1
    assert sf.is_canonical()
    LptRecord(sequence_number=2, **sf.record_fields()).validate()


@pytest.mark.parametrize(("native", "pv"), PAIRS, ids=PAIR_IDS)
def test_matrix_edges(native: int, pv: int) -> None:
    """Bounds, horizon and deadline exactness at the edge tick values of every pairing."""
    sf = scale_factors(native, pv)
    horizon = overflow_horizon(sf)
    edges = {0, 1, 2, 3, native, pv, U64_MAX, U64_MAX - 1, 1 << 63, horizon.monotonic_until - 1}
    fwd_bound, rev_bound = native_to_pv_error_bound(sf), pv_to_native_error_bound(sf)
    for t in edges:
        check_forward(t, sf, fwd_bound, horizon.monotonic_until)
        assert 0 <= Fraction(t * native, pv) - wide_rev(t, sf) <= rev_bound
        check_deadline(t, sf)
    if horizon.pv_wrap_at is not None:
        assert native_to_pv(horizon.pv_wrap_at - 1, sf) == wide_fwd(horizon.pv_wrap_at - 1, sf)
        assert wide_fwd(horizon.pv_wrap_at, sf) >= 2**64
        # The wrap is a step backwards: exactly what the horizon warns about.
        assert native_to_pv(horizon.pv_wrap_at, sf) < native_to_pv(horizon.pv_wrap_at - 1, sf)


def test_horizon_none_when_pv_not_faster() -> None:
    for native, pv in PAIRS:
        horizon = overflow_horizon(scale_factors(native, pv))
        if pv <= native:
            assert horizon.pv_wrap_at is None and horizon.pv_wrap_seconds is None
            assert horizon.monotonic_until == 2**64
        else:
            assert horizon.pv_wrap_at is not None
            # Wraps after about 2^64 PV ticks: within one second's worth of native ticks of that.
            assert abs(horizon.pv_wrap_at - Fraction(2**64 * native, pv)) <= native + 1


def test_horizon_start_and_seconds() -> None:
    sf = scale_factors(24 * MHZ, 1000 * MHZ)
    h0 = overflow_horizon(sf)
    assert h0.pv_wrap_at is not None
    assert h0.pv_wrap_seconds == pytest.approx(2**64 / 1e9, rel=1e-6)  # ~584.5 years
    h = overflow_horizon(sf, start_native=1000)
    assert h.pv_wrap_ticks == h0.pv_wrap_at - 1000
    assert h.native_wrap_ticks == 2**64 - 1000
    assert overflow_horizon(sf, start_native=U64_MAX).pv_wrap_ticks == 0  # already past
    assert h0.native_wrap_seconds == pytest.approx(2**64 / 24e6)


# ----- properties over all u32 frequency pairs and the whole u64 tick range -----------------

def check_forward(t: int, sf: ScaleFactors, bound: int, monotonic_until: int) -> None:
    wide = wide_fwd(t, sf)
    assert native_to_pv(t, sf) == wide & U64_MAX  # a 64-bit register's truncation
    err = Fraction(t * sf.pv_hz, sf.native_hz) - wide
    assert 0 <= err <= bound, (t, err, bound)  # never ahead of exact time, within the bound
    if t < monotonic_until:
        assert wide <= U64_MAX  # no result exceeds u64 before the horizon


def check_deadline(t: int, sf: ScaleFactors) -> None:
    n = pv_to_native_deadline(t, sf)
    if wide_fwd(U64_MAX, sf) >= t:  # the deadline is representable
        assert n == exact_deadline(t, sf)
        assert wide_fwd(n, sf) >= t
        assert n == 0 or wide_fwd(n - 1, sf) < t
        if n < overflow_horizon(sf).monotonic_until:
            assert native_to_pv(n, sf) >= t
        # The RFC conversion is never late, and early by at most its stated bound.
        assert 0 <= n - wide_rev(t, sf) <= rfc_reverse_early_bound(sf)
    else:  # no native count reaches t before the native counter wraps
        assert sf.pv_hz < sf.native_hz
        assert n == U64_MAX


@SETTINGS
@given(native=freqs, pv=freqs)
def test_multipliers_fit_u64(native: int, pv: int) -> None:
    sf = scale_factors(native, pv)
    assert (sf.scale_mult, sf.fracbits, sf.rscale_mult, sf.rfracbits) == oracle_factors(native, pv)
    assert 0 < sf.scale_mult <= U64_MAX and 0 < sf.rscale_mult <= U64_MAX


@SETTINGS
@given(native=freqs, pv=freqs, t=ticks)
def test_forward_error_bound(native: int, pv: int, t: int) -> None:
    sf = scale_factors(native, pv)
    check_forward(t, sf, native_to_pv_error_bound(sf), overflow_horizon(sf).monotonic_until)


@SETTINGS
@given(native=freqs, pv=freqs, t=ticks)
def test_reverse_error_bound(native: int, pv: int, t: int) -> None:
    sf = scale_factors(native, pv)
    wide = wide_rev(t, sf)
    assert pv_to_native(t, sf) == wide & U64_MAX
    err = Fraction(t * native, pv) - wide
    assert 0 <= err <= pv_to_native_error_bound(sf)


@SETTINGS
@given(native=freqs, pv=freqs, a=ticks, b=ticks)
def test_forward_monotonic_before_horizon(native: int, pv: int, a: int, b: int) -> None:
    sf = scale_factors(native, pv)
    until = overflow_horizon(sf).monotonic_until
    a, b = sorted((a % until, b % until))
    assert native_to_pv(a, sf) <= native_to_pv(b, sf)
    if b + 1 < until:
        assert native_to_pv(b, sf) <= native_to_pv(b + 1, sf)


@SETTINGS
@given(native=freqs, pv=freqs, t=ticks)
def test_deadline_exactly_minimal(native: int, pv: int, t: int) -> None:
    check_deadline(t, scale_factors(native, pv))


@SETTINGS
@given(native=freqs, pv=freqs, n=ticks, delta=st.integers(-2, 2))
def test_deadline_at_step_boundaries(native: int, pv: int, n: int, delta: int) -> None:
    """PV deadlines right at (and around) values the PV counter takes: where off-by-one lives."""
    sf = scale_factors(native, pv)
    t = wide_fwd(n, sf) + delta
    if 0 <= t <= U64_MAX:
        check_deadline(t, sf)


@SETTINGS
@given(native=freqs, pv=freqs, start=ticks)
def test_horizon_is_exact(native: int, pv: int, start: int) -> None:
    sf = scale_factors(native, pv)
    h = overflow_horizon(sf, start_native=start)
    if h.pv_wrap_at is None:
        assert wide_fwd(U64_MAX, sf) <= U64_MAX
    else:
        assert wide_fwd(h.pv_wrap_at - 1, sf) <= U64_MAX < wide_fwd(h.pv_wrap_at, sf)
        assert h.pv_wrap_ticks == max(h.pv_wrap_at - start, 0)


# ----- the RFC's defect, kept and named ------------------------------------------------------

def test_rfc_defect_reverse_conversion_truncates() -> None:
    """RFC defect: reverse conversion truncates, so a PV deadline can fire before the PV counter
    reaches it; pv_to_native_deadline does not."""
    # 75 MHz native, 25 MHz PV: the reverse scale is exact (3), the forward one is floored below
    # 1/3, so native 3*t reads PV t - 1: the RFC timer fires one native tick early.
    sf = scale_factors(75 * MHZ, 25 * MHZ)
    t = 1000
    rfc = pv_to_native(t, sf)
    assert rfc == 3000
    assert native_to_pv(rfc, sf) == t - 1 < t  # fired early
    assert pv_to_native_deadline(t, sf) == 3001
    assert native_to_pv(3001, sf) == t
    # Even an exact power-of-two pair is early when t/r is fractional.
    sf = scale_factors(25 * MHZ, 100 * MHZ)
    assert native_to_pv(pv_to_native(1, sf), sf) == 0 < 1
    # And "up to one native tick" understates it: 1 GHz native, 19.2 MHz PV allows 55.
    assert rfc_reverse_early_bound(scale_factors(1000 * MHZ, 19_200_000)) == 55


def test_rfc_defect_found_by_search() -> None:
    """RFC defect: reverse conversion truncates -- an early firing among small deadlines exists for
    every pairing of distinct listed frequencies except 100 -> 25 MHz, where native/pv = 4 makes
    both conversions exact (native 4t reads PV t)."""
    for native, pv in PAIRS:
        if native == pv:
            continue
        sf = scale_factors(native, pv)
        early = next((t for t in range(1, 5000) if native_to_pv(pv_to_native(t, sf), sf) < t), None)
        if (native, pv) == (100 * MHZ, 25 * MHZ):
            assert early is None
            continue
        assert early is not None, (native, pv)
        assert native_to_pv(pv_to_native_deadline(early, sf), sf) >= early


def test_rfc_reverse_wraps_past_native_wrap() -> None:
    """The RFC conversion of a PV deadline beyond the native counter's range wraps to a small
    native value (the timer fires at once); the deadline conversion saturates instead."""
    sf = scale_factors(100 * MHZ, 25 * MHZ)
    assert pv_to_native(2**62, sf) == 0
    assert pv_to_native_deadline(2**62, sf) == U64_MAX


def test_identity_pair_is_exact() -> None:
    sf = scale_factors(100 * MHZ, 100 * MHZ)
    for t in (0, 1, 12345, U64_MAX):
        assert native_to_pv(t, sf) == pv_to_native(t, sf) == pv_to_native_deadline(t, sf) == t
    assert rfc_reverse_early_bound(sf) == 0


def test_deadline_saturates_past_native_wrap() -> None:
    sf = scale_factors(1000 * MHZ, 1)  # PV reaches only ~18.4e9 before native wraps
    last = native_to_pv(U64_MAX, sf)
    assert pv_to_native_deadline(last, sf) <= U64_MAX
    assert pv_to_native_deadline(last + 1, sf) == U64_MAX
    assert pv_to_native_deadline(U64_MAX, sf) == U64_MAX


# ----- records, describe, bad inputs ---------------------------------------------------------

def test_record_round_trip() -> None:
    sf = scale_factors(19_200_000, 1000 * MHZ)
    record = LptRecord.unpack(LptRecord(sequence_number=2, **sf.record_fields()).pack())
    assert ScaleFactors.from_record(record) == sf


def test_describe() -> None:
    d = describe(25 * MHZ, 100 * MHZ)
    assert {k: d[k] for k in ("native_freq", "pv_freq", "scale_mult", "rscale_mult", "fracbits",
                              "rfracbits")} == {
        "native_freq": 25 * MHZ, "pv_freq": 100 * MHZ, "scale_mult": 2**63,
        "rscale_mult": 2**61, "fracbits": 61, "rfracbits": 63,
    }
    assert d["native_to_pv_error_pv_ticks"] == 1 and d["pv_to_native_error_native_ticks"] == 1
    assert d["pv_wrap_native_ticks"] == 2**62
    assert d["pv_wrap_years"] == pytest.approx(2**64 / 1e8 / 31_557_600)
    assert d["native_wrap_ticks"] == 2**64
    assert d["native_wrap_years"] == pytest.approx(2**64 / 25e6 / 31_557_600)
    slow = describe(100 * MHZ, 25 * MHZ)
    assert slow["pv_wrap_native_ticks"] is None and slow["pv_wrap_years"] is None


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5, "25000000", True, None])
@pytest.mark.parametrize("arg", ["native_hz", "pv_hz"])
def test_bad_frequency(arg: str, bad: object) -> None:
    kwargs: dict[str, object] = {"native_hz": 25 * MHZ, "pv_hz": 100 * MHZ, arg: bad}
    with pytest.raises(ValueError, match=arg):
        scale_factors(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=arg):
        describe(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2**64, 0.5, True])
@pytest.mark.parametrize("fn", [native_to_pv, pv_to_native, pv_to_native_deadline])
def test_bad_ticks(fn: object, bad: object) -> None:
    sf = scale_factors(24 * MHZ, 25 * MHZ)
    with pytest.raises(ValueError, match="ticks"):
        fn(bad, sf)  # type: ignore[operator]


def test_bad_start_native_and_fields() -> None:
    sf = scale_factors(24 * MHZ, 25 * MHZ)
    with pytest.raises(ValueError, match="start_native"):
        overflow_horizon(sf, start_native=2**64)
    fields = dict(native_hz=1, pv_hz=1, scale_mult=2**63, fracbits=63, rscale_mult=2**63,
                  rfracbits=63)
    for name, bad in [("fracbits", 0), ("rfracbits", 64), ("scale_mult", 0),
                      ("rscale_mult", 2**64), ("pv_hz", 0), ("native_hz", 2**32)]:
        with pytest.raises(ValueError, match=name):
            ScaleFactors(**{**fields, name: bad})


def test_integer_like_inputs_are_normalised() -> None:
    np = pytest.importorskip("numpy")
    sf = scale_factors(np.uint32(25 * MHZ), np.uint32(100 * MHZ))
    assert type(sf.native_hz) is int and sf == scale_factors(25 * MHZ, 100 * MHZ)
    assert native_to_pv(np.uint64(U64_MAX), sf) == native_to_pv(U64_MAX, sf)
