"""LPT fixed-point arithmetic: the one home of it, shared by the host and the guest.

The host (KVM side) computes the scale factors it writes into the LPT record once per VM start;
the guest converts every counter read native -> PV and every timer write PV -> native with them
(docs/semantics.md section 5, the 2020 "pvtime LPT" RFC).  Everything here is pure integer arithmetic on
Python ints, masked to the widths a 64-bit guest register holds, so the results are bit-exact with
what a C guest computes using a 128-bit product (``unsigned __int128``).

Notation used in the docstrings and proofs below:

- ``r = pv_hz / native_hz`` (the forward ratio, an exact rational), ``F = fracbits``,
  ``s = scale_mult``; ``G = rfracbits``, ``R = rscale_mult``.
- "wide" means the 128-bit result before truncation to u64: ``(s * t) >> F``.

Only ``pvtime.abi`` may be imported from here (the layer contract in pyproject.toml).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from pvtime.abi.records import LptRecord
from pvtime.abi.widths import U32, U64

__all__ = [
    "U32_MAX",
    "U64_MAX",
    "OverflowHorizon",
    "ScaleFactors",
    "describe",
    "native_to_pv",
    "native_to_pv_error_bound",
    "overflow_horizon",
    "pv_to_native",
    "pv_to_native_deadline",
    "pv_to_native_error_bound",
    "rfc_reverse_early_bound",
    "scale_factors",
]

U64_MAX = U64
# The record's frequency fields are u32 (docs/semantics.md section 5); a width, not a protocol constant.
U32_MAX = U32
# Julian year, the astronomers' convention for "years" of elapsed time.
_SECONDS_PER_YEAR = 31_557_600


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as a plain int in [lo, hi], or ValueError naming ``name``.

    Integer-like objects (numpy integers) are accepted through ``__index__`` and normalised to
    ``int``: mixing a fixed-width numpy integer into a 128-bit product would silently overflow.
    ``bool`` is refused: ``True`` as a frequency or a tick count is always a caller's mistake.
    """
    if type(value) is not int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got bool {value!r}")
        try:
            value = operator.index(value)
        except TypeError:
            raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_ticks(ticks: Any) -> int:
    # Fast path first: conversions sit on every guest counter read.
    if type(ticks) is int and 0 <= ticks <= U64_MAX:
        return ticks
    return _check_int("ticks", ticks, 0, U64_MAX)


def _intbits(num: int, den: int) -> int:
    """``ilog2(floor(num/den)) + 1``, at least 1: the integer bits the ratio ``num/den`` needs.

    ``int.bit_length(q)`` is ``ilog2(q) + 1`` for ``q >= 1`` and 0 for ``q == 0``; the RFC clamps
    the latter (a ratio below 1) to 1 rather than using negative integer bits.
    """
    return max(1, (num // den).bit_length())


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


@dataclass(frozen=True)
class ScaleFactors:
    """The six LPT record fields that define the conversions, in the record's units.

    Build canonical factors with :func:`scale_factors` (what the host writes) or read them from a
    record with :meth:`from_record` (what the guest trusts).  Construction validates the field
    widths: frequencies are non-zero u32, multipliers non-zero u64, shifts in 1..63 (the range
    ``LptRecord.validate`` accepts).  The multipliers may be zero only in a broken record, and a
    zero ``scale_mult`` would freeze the PV counter and make deadlines undefined, so it is refused.
    """

    native_hz: int
    pv_hz: int
    scale_mult: int
    fracbits: int
    rscale_mult: int
    rfracbits: int

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("native_hz", 1, U32_MAX),
            ("pv_hz", 1, U32_MAX),
            ("scale_mult", 1, U64_MAX),
            ("fracbits", 1, 63),
            ("rscale_mult", 1, U64_MAX),
            ("rfracbits", 1, 63),
        ):
            # object.__setattr__ because the dataclass is frozen; normalises numpy ints to int.
            object.__setattr__(self, name, _check_int(name, getattr(self, name), lo, hi))

    @classmethod
    def from_record(cls, record: LptRecord) -> ScaleFactors:
        """The factors a guest reads from an LPT record (ValueError naming a bad field)."""
        return cls(
            native_hz=record.native_freq,
            pv_hz=record.pv_freq,
            scale_mult=record.scale_mult,
            fracbits=record.fracbits,
            rscale_mult=record.rscale_mult,
            rfracbits=record.rfracbits,
        )

    def record_fields(self) -> dict[str, int]:
        """The fields under their LPT record names: ``LptRecord(sequence_number=n, **fields)``."""
        return {
            "native_freq": self.native_hz,
            "pv_freq": self.pv_hz,
            "scale_mult": self.scale_mult,
            "rscale_mult": self.rscale_mult,
            "fracbits": self.fracbits,
            "rfracbits": self.rfracbits,
        }

    def is_canonical(self) -> bool:
        """True when these are exactly the factors :func:`scale_factors` derives (a sane record)."""
        return self == scale_factors(self.native_hz, self.pv_hz)


def scale_factors(native_hz: int, pv_hz: int) -> ScaleFactors:
    """The LPT scale factors for a host counter at ``native_hz`` presenting ``pv_hz`` to the guest.

    Exactly docs/semantics.md section 5: for each direction ``intbits = ilog2(floor(ratio)) + 1`` (at
    least 1), ``fracbits = 64 - intbits_fwd``, ``scale_mult = floor(2^fracbits * pv / native)``,
    ``rfracbits = 64 - intbits_rev``, ``rscale_mult = floor(2^rfracbits * native / pv)``.
    Example: native 25 MHz, pv 100 MHz -> fracbits 61, scale_mult 2^63, rfracbits 63,
    rscale_mult 2^61.

    Both multipliers fit in u64.  Proof, for a ratio ``x = num/den`` with ``q = floor(x)``:

    - ``q == 0``: intbits = 1, so ``mult = floor(2^63 * x) < 2^63`` because ``x < 1``.
    - ``q >= 1``: intbits = ``bit_length(q)`` so ``q <= 2^intbits - 1``, hence
      ``x < q + 1 <= 2^intbits`` and ``mult = floor(2^(64-intbits) * x) < 2^64``.  Also
      ``x >= q >= 2^(intbits-1)``, so ``mult >= 2^63``: the top bit is set, full 64-bit precision.

    With u32 frequencies, ``q <= 2^32 - 1`` so intbits is in 1..32 and both shifts are in 32..63.
    A ratio below 1 keeps intbits = 1 (the RFC does not use negative integer bits), so its
    multiplier has only ``63 - ceil(log2(1/x))`` significant bits, at worst 32 (2^31 <=
    floor(2^63 / (2^32 - 1))): the coarse forward scale is why the reverse conversion's errors
    grow with ``native/pv`` (see :func:`rfc_reverse_early_bound`).
    """
    native_hz = _check_int("native_hz", native_hz, 1, U32_MAX)
    pv_hz = _check_int("pv_hz", pv_hz, 1, U32_MAX)
    fracbits = 64 - _intbits(pv_hz, native_hz)
    rfracbits = 64 - _intbits(native_hz, pv_hz)
    return ScaleFactors(
        native_hz=native_hz,
        pv_hz=pv_hz,
        scale_mult=(pv_hz << fracbits) // native_hz,
        fracbits=fracbits,
        rscale_mult=(native_hz << rfracbits) // pv_hz,
        rfracbits=rfracbits,
    )


def native_to_pv(ticks: int, sf: ScaleFactors) -> int:
    """A native counter value as the guest sees it: ``(scale_mult * ticks) >> fracbits``.

    The product is 128-bit (never loses bits: both factors are u64); the shifted result is
    truncated to u64 exactly as a guest's 64-bit register holds it.  It wraps (the true value is
    ``>= 2^64``) only when ``pv_hz > native_hz`` and ``ticks`` reaches the horizon
    ``ceil(2^(64+fracbits) / scale_mult)`` (:func:`overflow_horizon`), about ``2^64 / pv_hz``
    seconds of native time after 0; below it the result is non-decreasing in ``ticks`` and never
    exceeds the exact ``ticks * pv / native`` (error: :func:`native_to_pv_error_bound`).
    """
    ticks = _check_ticks(ticks)
    return (sf.scale_mult * ticks >> sf.fracbits) & U64_MAX


def pv_to_native(ticks: int, sf: ScaleFactors) -> int:
    """The RFC's reverse conversion: ``(rscale_mult * ticks) >> rfracbits``, truncated to u64.

    Kept as the RFC specifies it, defect included: it truncates, so a timer whose PV deadline is
    converted this way can fire before the guest's PV counter (:func:`native_to_pv`) reaches the
    deadline (docs/semantics.md section 5: "up to one native tick early"; in fact by up to
    :func:`rfc_reverse_early_bound` native ticks, which exceeds one for most frequency pairs).
    It is never late.  The wide result exceeds u64 (and wraps to a small, long-past native value)
    only when ``native_hz > pv_hz`` and ``ticks`` is a PV value the native counter reaches only
    after its own wrap.  Use :func:`pv_to_native_deadline` to program timers.
    """
    ticks = _check_ticks(ticks)
    return (sf.rscale_mult * ticks >> sf.rfracbits) & U64_MAX


def pv_to_native_deadline(ticks: int, sf: ScaleFactors) -> int:
    """The smallest native count ``n`` with ``native_to_pv(n) >= ticks``: a timer never fires early.

    Derivation (exact, O(1): one 128-by-64-bit division): ``ticks`` is an integer, so
    ``floor(s*n / 2^F) >= ticks  <=>  s*n / 2^F >= ticks  <=>  n >= ticks * 2^F / s``, and the
    smallest such integer is ``ceil(ticks * 2^F / s)``.

    Why not the rounded-up reverse product ``ceil(R * ticks / 2^G)`` plus a few correction steps:
    the reverse and forward multipliers are each floored independently, and the forward result
    can lag exact time by up to :func:`native_to_pv_error_bound` PV ticks (up to 3 when
    ``pv < native``), i.e. a few times ``native/pv`` native ticks.  For ``pv < native`` that is no
    small constant (1 GHz native, 1 Hz PV: ~1.7e9 steps, see :func:`rfc_reverse_early_bound`),
    so a stepping correction is not O(1); the division is, and it is what a guest with 128-bit
    arithmetic (``__udivti3``) can run too.

    Saturation: if no u64 native count reaches ``ticks`` (only possible when ``pv < native``,
    for ``ticks > native_to_pv(2^64 - 1)``), the result is ``2^64 - 1``: the last value of the
    native counter before it wraps, i.e. "as late as the hardware can express" (the same ``~0``
    convention KVM uses for a disarmed timer).  Outside that case the result is exactly minimal,
    and ``native_to_pv(result) >= ticks`` holds unless ``result`` is the PV overflow horizon itself
    (the PV counter then passes ``ticks`` by wrapping past ``2^64``).
    """
    ticks = _check_ticks(ticks)
    n = _ceil_div(ticks << sf.fracbits, sf.scale_mult)
    return n if n <= U64_MAX else U64_MAX


def _error_bound(mult: int, shift: int, num: int, den: int) -> int:
    """Ceil of the max |t*num/den - floor(mult*t / 2^shift)| over integer t in [0, 2^64)."""
    # Write mult = num*2^shift/den - d/den, i.e. d = num*2^shift - mult*den (d >= 0 when mult is
    # the floor).  For each t:
    #   e(t) = t*num/den - floor(mult*t/2^shift)
    #        = t*d / (den*2^shift)  +  frac(mult*t / 2^shift)
    # The first term lies between 0 and (2^64-1)*d / (den*2^shift); the second in
    # [0, (2^shift - 1)/2^shift] because mult*t is an integer.  Sum the extremes and take the ceil.
    tmax = U64_MAX
    scale = den << shift
    d = (num << shift) - mult * den
    frac_max = (1 << shift) - 1  # in units of 2^-shift
    if d >= 0:
        return _ceil_div(tmax * d + frac_max * den, scale)
    # A non-canonical (over-rounded) multiplier: the linear term is negative, so the worst
    # magnitude is the larger of the two one-sided extremes.
    return max(_ceil_div(tmax * -d, scale), 1 if frac_max else 0)


def native_to_pv_error_bound(sf: ScaleFactors) -> int:
    """Max |error| in PV ticks of :func:`native_to_pv` against exact ``ticks * pv / native``.

    Holds for every ``ticks`` in ``[0, 2^64)`` for the wide (128-bit, untruncated) result, which
    is what :func:`native_to_pv` returns below the overflow horizon.

    Derivation.  ``s = floor(2^F * r)`` loses ``delta = frac(2^F * r) < 1`` unit of ``2^-F``, so

        exact - approx = ticks * delta / 2^F  +  frac(s * ticks / 2^F)

    where the first term is the multiplier's truncation scaled by ``ticks < 2^64`` and the second
    the final shift's truncation, ``<= 1 - 2^-F``.  Hence ``0 <= exact - approx <
    (2^64 - 1) * delta / 2^F + 1`` -- the conversion never runs ahead of exact time -- and the
    returned integer is the ceiling of that sum computed with the exact ``delta``.  Generic form:
    ``delta < 1`` and ``F = 64 - intbits`` give ``< 2^intbits + 1``, i.e. at most about
    ``2 * max(1, pv/native) + 1`` PV ticks; when ``2^F * pv / native`` is an integer (``delta =
    0``, e.g. 25 MHz -> 100 MHz) the bound is 1.
    """
    return _error_bound(sf.scale_mult, sf.fracbits, sf.pv_hz, sf.native_hz)


def pv_to_native_error_bound(sf: ScaleFactors) -> int:
    """Max |error| in native ticks of :func:`pv_to_native` against exact ``ticks * native / pv``.

    Same derivation as :func:`native_to_pv_error_bound` with ``R``, ``G`` and the reverse ratio:
    ``0 <= exact - approx < (2^64 - 1) * frac(2^G * native / pv) / 2^G + 1``, returned as the
    ceiling, for every PV ``ticks`` in ``[0, 2^64)`` (wide result).  This is error against the
    exact rational, not against the forward conversion: for the timer-relevant error (firing
    before the guest's PV counter reaches the deadline) see :func:`rfc_reverse_early_bound`.
    """
    return _error_bound(sf.rscale_mult, sf.rfracbits, sf.native_hz, sf.pv_hz)


def rfc_reverse_early_bound(sf: ScaleFactors) -> int:
    """Max native ticks by which :func:`pv_to_native` precedes :func:`pv_to_native_deadline`.

    Over every PV deadline ``t`` whose exact deadline ``n* = ceil(t * 2^F / s)`` is representable
    (``t <= native_to_pv(2^64 - 1)`` wide).  With ``n_rfc = floor(R * t / 2^G)``:

        0 <= n* - n_rfc < t * 2^F / s + 1 - (R * t / 2^G - 1) = t * c + 2,
        c = 2^F / s - R / 2^G = (2^(F+G) - R*s) / (s * 2^G)  >= 0

    (``c >= 0`` because ``s <= 2^F r`` and ``R <= 2^G / r``; the left inequality because
    ``n_rfc <= t/r <= t * 2^F / s <= n*``, so the RFC conversion is never late).  ``n* - n_rfc``
    is an integer strictly below ``tmax * c + 2``, so it is at most ``ceil(tmax * c + 2) - 1``,
    which is returned.  It is at least 1 unless ``pv == native``: even an exact power-of-two pair
    (25 -> 100 MHz) is early by one tick whenever ``t/r`` is not an integer (``t = 1``: ``n_rfc =
    0`` but ``native_to_pv(0) = 0 < 1``), which is the "one native tick" the RFC review saw.
    """
    F, G, s, R = sf.fracbits, sf.rfracbits, sf.scale_mult, sf.rscale_mult
    if s == 1 << F and R == 1 << G:
        # Both conversions are the identity (pv == native): n_rfc = t = n*.
        return 0
    tmax = min(s * U64_MAX >> F, U64_MAX)
    c_num = (1 << (F + G)) - R * s
    if c_num < 0:
        # Only a non-canonical (over-rounded) record gets here: the premise c >= 0 fails.
        raise ValueError("scale_mult * rscale_mult exceeds 2^(fracbits+rfracbits): not canonical")
    scale = s << G
    return _ceil_div(tmax * c_num + 2 * scale, scale) - 1


@dataclass(frozen=True)
class OverflowHorizon:
    """How long the guest-facing conversions stay in range from ``start_native``.

    ``pv_wrap_at`` is the first native count at which :func:`native_to_pv` wraps (its true value
    reaches 2^64), or None when that never happens before the native counter itself wraps (always
    the case for ``pv_hz <= native_hz``).  Below ``monotonic_until`` the guest's PV counter is
    non-decreasing: no conversion result is ever smaller than an earlier one.
    """

    native_hz: int
    start_native: int
    pv_wrap_at: int | None
    native_wrap_at: int = 1 << 64

    @property
    def pv_wrap_ticks(self) -> int | None:
        """Native ticks from ``start_native`` until the PV value wraps (0 if already past)."""
        if self.pv_wrap_at is None:
            return None
        return max(self.pv_wrap_at - self.start_native, 0)

    @property
    def native_wrap_ticks(self) -> int:
        """Native ticks from ``start_native`` until the 64-bit native counter wraps."""
        return self.native_wrap_at - self.start_native

    @property
    def monotonic_until(self) -> int:
        """The first native count at which the guest's PV counter can step backwards."""
        return self.native_wrap_at if self.pv_wrap_at is None else self.pv_wrap_at

    @property
    def pv_wrap_seconds(self) -> float | None:
        """``pv_wrap_ticks`` in seconds at ``native_hz`` (None: never)."""
        ticks = self.pv_wrap_ticks
        return None if ticks is None else ticks / self.native_hz

    @property
    def native_wrap_seconds(self) -> float:
        """``native_wrap_ticks`` in seconds at ``native_hz``."""
        return self.native_wrap_ticks / self.native_hz


def overflow_horizon(sf: ScaleFactors, start_native: int = 0) -> OverflowHorizon:
    """When :func:`native_to_pv` stops fitting u64, counted from native count ``start_native``.

    ``native_to_pv(n)`` wide is ``floor(s*n / 2^F)``, which reaches ``2^64`` exactly when
    ``s*n >= 2^(64+F)``, i.e. from ``n = ceil(2^(64+F) / s)``.  Because the canonical ``s`` is
    below ``2^F * r``, this is at or after ``2^64 / r``; for ``r <= 1`` it is ``>= 2^64``, past the
    native counter's own wrap, and reported as None.  Seconds are at ``native_hz``.
    """
    start_native = _check_int("start_native", start_native, 0, U64_MAX)
    wrap = _ceil_div(1 << (64 + sf.fracbits), sf.scale_mult)
    return OverflowHorizon(
        native_hz=sf.native_hz,
        start_native=start_native,
        pv_wrap_at=wrap if wrap <= U64_MAX else None,
    )


def _years(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / _SECONDS_PER_YEAR


def describe(native_hz: int, pv_hz: int) -> dict[str, int | float | None]:
    """Everything about an LPT configuration, for ``pvtime lpt --native HZ --pv HZ``.

    Keys: the record fields (``native_freq``, ``pv_freq``, ``scale_mult``, ``rscale_mult``,
    ``fracbits``, ``rfracbits``); ``native_to_pv_error_pv_ticks`` and
    ``pv_to_native_error_native_ticks`` (the error bounds); ``rfc_reverse_early_native_ticks``;
    the PV overflow horizon from native 0 (``pv_wrap_native_ticks``, ``pv_wrap_seconds``,
    ``pv_wrap_years``; None when it never wraps before the native counter does) and the native
    counter's own (``native_wrap_ticks``, ``native_wrap_seconds``, ``native_wrap_years``).
    Years are Julian (365.25 days).  Raises ValueError naming a bad frequency.
    """
    sf = scale_factors(native_hz, pv_hz)
    horizon = overflow_horizon(sf)
    return {
        **sf.record_fields(),
        "native_to_pv_error_pv_ticks": native_to_pv_error_bound(sf),
        "pv_to_native_error_native_ticks": pv_to_native_error_bound(sf),
        "rfc_reverse_early_native_ticks": rfc_reverse_early_bound(sf),
        "pv_wrap_native_ticks": horizon.pv_wrap_ticks,
        "pv_wrap_seconds": horizon.pv_wrap_seconds,
        "pv_wrap_years": _years(horizon.pv_wrap_seconds),
        "native_wrap_ticks": horizon.native_wrap_ticks,
        "native_wrap_seconds": horizon.native_wrap_seconds,
        "native_wrap_years": _years(horizon.native_wrap_seconds),
    }


# --- migration between native frequencies, and the event stream ---------------------------


def rescale_count(count: int, old: ScaleFactors, new: ScaleFactors) -> int:
    """A guest counter value ``count`` of the old host, as the new host's counter must read it.

    Used by the host at a migrated VM's first run (docs/semantics.md section 5: ``cntvct' = cntvct *
    f_new / f_old``), for the virtual and the physical counter.  Two requirements, both met:

    - accuracy: the result is ``ceil(count * f_new / f_old)`` (exact rational, rounded up) unless
      the second requirement needs more, so the PV clock loses nothing to rounding;
    - monotonicity as the guest sees it: ``native_to_pv(result, new) >= native_to_pv(count, old)``,
      i.e. the guest's PV counter never steps back across the migration (the multipliers are
      floored independently, so the exact ceiling alone can read one PV tick low).

    ``old.pv_hz`` must equal ``new.pv_hz`` (ValueError otherwise: the PV frequency is the VM's,
    it does not change across hosts).  A count past the old PV horizon (the PV value has wrapped)
    is rescaled by the exact ratio only.  The result saturates at ``2^64 - 1``.
    """
    count = _check_ticks(count)
    _check_same_pv(old, new)
    exact = _ceil_div(count * new.native_hz, old.native_hz)
    horizon = overflow_horizon(old).pv_wrap_at
    if horizon is None or count < horizon:
        exact = max(exact, pv_to_native_deadline(native_to_pv(count, old), new))
    return min(exact, U64_MAX)


def rescale_deadline(cval: int, old: ScaleFactors, new: ScaleFactors) -> int:
    """A timer compare value of the old host, as the new host must hold it: never early.

    The old CVAL fires when the guest's PV counter reaches ``D = native_to_pv(cval, old)`` (the
    first PV value the guest would have seen at or past its deadline); the new CVAL is the
    smallest new count whose PV value reaches ``D``: :func:`pv_to_native_deadline`.  No
    truncation to 32 bits anywhere (the RFC held the pending delta in a u32), and no delta at
    all: an absolute PV deadline is mapped, so an expired timer (``cval <= count``) stays
    expired against :func:`rescale_count` of that count (``D <= native_to_pv(count, old) <=
    native_to_pv(rescale_count(count), new)``).  A CVAL at or past the old PV horizon (a
    deadline the PV counter cannot express, e.g. the ``~0`` "never" value with ``pv > native``)
    maps to ``2^64 - 1``.
    """
    cval = _check_ticks(cval)
    _check_same_pv(old, new)
    horizon = overflow_horizon(old).pv_wrap_at
    if horizon is not None and cval >= horizon:
        return U64_MAX
    return pv_to_native_deadline(native_to_pv(cval, old), new)


def _check_same_pv(old: ScaleFactors, new: ScaleFactors) -> None:
    if old.pv_hz != new.pv_hz:
        raise ValueError(f"pv_hz changes across the migration ({old.pv_hz} -> {new.pv_hz} Hz): "
                         "the PV frequency belongs to the VM")


EVNTI_MAX = 15  # CNTKCTL_EL1.EVNTI is 4 bits


def evnti_shift(sf: ScaleFactors) -> int:
    """The nearest integer to ``log2(native_hz / pv_hz)``: how far the event-stream bit moves.

    The event stream fires on transitions of counter bit EVNTI; a guest picks EVNTI for its
    (PV) frequency, so on the native counter the same period is ``log2(native/pv)`` bits further
    up.  Exact integer arithmetic: with ``x = max/min`` of the two frequencies and ``k =
    floor(log2 x)``, round up iff ``x^2 >= 2^(2k+1)``; there are no ties (``x^2 = 2^(2k+1)``
    would make ``sqrt(2)`` rational).
    """
    hi, lo = (sf.native_hz, sf.pv_hz) if sf.native_hz >= sf.pv_hz else (sf.pv_hz, sf.native_hz)
    k = (hi // lo).bit_length() - 1
    if hi * hi >= lo * lo << (2 * k + 1):
        k += 1
    return k if sf.native_hz >= sf.pv_hz else -k


def translate_evnti(evnti: int, sf: ScaleFactors) -> int:
    """A guest's EVNTI (chosen for ``pv_hz``) for the native counter, clamped to 0..15."""
    evnti = _check_int("evnti", evnti, 0, EVNTI_MAX)
    return min(EVNTI_MAX, max(0, evnti + evnti_shift(sf)))
