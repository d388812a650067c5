"""Linux's own constants, checked against Linux's values (not the KVM uAPI)."""

from pvtime.abi import linux


def test_time_units_are_linuxs():
    assert (linux.NSEC_PER_SEC, linux.NSEC_PER_MSEC) == (10**9, 10**6)
    assert linux.NSEC_PER_SEC // linux.USER_HZ == 10_000_000  # /proc/stat counts 10 ms ticks
    assert linux.ULONG_MAX == 2**64 - 1  # arm64 is LP64


def test_event_stream_is_100_us():
    assert linux.NSEC_PER_SEC // linux.ARCH_TIMER_EVT_STREAM_FREQ == 100_000
