"""Linux's own constants that pvtime's host and guest arithmetic follows (not the KVM uAPI).

Values are Linux's on arm64 (include/vdso/time64.h, include/asm-generic/param.h,
include/clocksource/arm_arch_timer.h); the KVM interface constants are in :mod:`pvtime.abi.uapi`.
"""

from __future__ import annotations

from pvtime.abi.widths import U64

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000
USER_HZ = 100  # the unit of /proc/stat's times, on every architecture
ULONG_MAX = U64  # arm64 is LP64
ARCH_TIMER_EVT_STREAM_FREQ = 10_000  # Hz: the arch timer's 100 us event stream

# The kernel command line that puts Linux's console on the PL011 (drivers/tty/serial/amba-pl011.c
# names its ports ttyAMA<n>).
CONSOLE_BOOTARGS = "console=ttyAMA0"
