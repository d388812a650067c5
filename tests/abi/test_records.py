"""Record layouts: the 64-byte stolen-time record and the 48-byte LPT record."""

import struct

import pytest
from hypothesis import given, strategies as st

from pvtime.abi.records import LptRecord, RecordError, StolenTimeRecord

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def test_stolen_time_layout_is_little_endian_at_the_spec_offsets():
    raw = StolenTimeRecord(revision=1, attributes=2, stolen_time=0x0102030405060708).pack()
    assert len(raw) == 64
    assert raw[0:4] == b"\x01\0\0\0" and raw[4:8] == b"\x02\0\0\0"
    assert raw[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert raw[16:] == bytes(48)


@given(u32, u32, u64)
def test_stolen_time_round_trip(rev, attr, steal):
    rec = StolenTimeRecord(rev, attr, steal)
    assert StolenTimeRecord.unpack(rec.pack()) == rec


def test_stolen_time_validation_names_the_field():
    StolenTimeRecord().validate()
    with pytest.raises(RecordError, match="revision"):
        StolenTimeRecord(revision=1).validate()
    with pytest.raises(RecordError, match="attributes"):
        StolenTimeRecord(attributes=1).validate()
    with pytest.raises(RecordError, match="64 bytes"):
        StolenTimeRecord.unpack(bytes(63))


def test_lpt_layout_matches_the_rfc_offsets():
    rec = LptRecord(0, 0, 2, 25_000_000, 100_000_000, 2**63, 2**61, 61, 63)
    raw = rec.pack()
    assert len(raw) == 48
    assert struct.unpack_from("<Q", raw, 8)[0] == 2
    assert struct.unpack_from("<II", raw, 16) == (25_000_000, 100_000_000)
    assert struct.unpack_from("<QQ", raw, 24) == (2**63, 2**61)
    assert struct.unpack_from("<II", raw, 40) == (61, 63)
    assert LptRecord.unpack(raw) == rec
    rec.validate()


def test_lpt_validation():
    good = LptRecord(0, 0, 2, 25_000_000, 100_000_000, 2**63, 2**61, 61, 63)
    for bad, field in [(dict(sequence_number=3), "sequence_number"), (dict(revision=1), "revision"),
                       (dict(pv_freq=0), "pv_freq"), (dict(fracbits=64), "fracbits")]:
        with pytest.raises(RecordError, match=field):
            LptRecord(**{**good.__dict__, **bad}).validate()
