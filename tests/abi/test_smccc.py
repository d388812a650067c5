"""SMCCC function ids and return codes (docs/semantics.md section 1)."""

from hypothesis import given, strategies as st

from pvtime.abi import smccc
from pvtime.abi.widths import s64


def test_known_ids_have_the_spec_values():
    assert smccc.SMCCC_VERSION == 0x80000000
    assert smccc.SMCCC_ARCH_FEATURES == 0x80000001
    assert smccc.PV_TIME_FEATURES == 0xC5000020
    assert smccc.PV_TIME_ST == 0xC5000021
    assert smccc.PV_TIME_LPT == 0xC5000022


def test_decode_names_the_fields():
    f = smccc.decode(0xC5000021)
    assert (f.fast, f.smc64, f.owner, f.number) == (True, True, smccc.Owner.STANDARD_HYP, 0x21)
    assert smccc.decode(0x85000021).smc64 is False


@given(st.integers(0, 2**32 - 1))
def test_decode_then_encode_keeps_every_field(fid):
    # Bits 23:16 are not part of any field (must be zero), so they do not survive the trip.
    assert smccc.decode(fid).encode() == fid & ~0x00FF_0000


def test_decode_uses_only_the_low_32_bits_of_x0():
    assert smccc.decode(0xFFFF_FFFF_0000_0000 | smccc.PV_TIME_ST) == smccc.decode(smccc.PV_TIME_ST)


def test_return_codes_travel_as_u64():
    assert smccc.to_u64(smccc.NOT_SUPPORTED) == 0xFFFF_FFFF_FFFF_FFFF
    assert smccc.to_u64(smccc.INVALID_PARAMETER) == 0xFFFF_FFFF_FFFF_FFFD
    assert s64(0xFFFF_FFFF_FFFF_FFFE) == smccc.NOT_REQUIRED
    assert s64(5) == 5
