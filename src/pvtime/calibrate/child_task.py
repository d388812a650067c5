"""The program each real task of a calibration runs, in its own child process.

Run as ``python -S child_task.py PARENT_PID KIND WORK_NS PERIOD_NS NICE CPUS`` (CPUS: ``0`` or
``0,1``). Standard library only, and never imported by the rest of pvtime, so that it starts fast
and carries nothing else into the measurement.

It dies with its parent (PR_SET_PDEATHSIG), pins itself (sched_setaffinity), sets its nice level,
prints ``ready``, and waits for one line on stdin: the CLOCK_MONOTONIC time (ns) at which to start.
Then a ``hog`` spins forever, and a ``periodic`` task runs `pvtime.host.PeriodicTask`'s loop:
released at start + k * PERIOD_NS, it works WORK_NS of its own CPU time (CLOCK_THREAD_CPUTIME_ID),
then sleeps until the first release after that work ended (clock_nanosleep, TIMER_ABSTIME):
missed releases are skipped, not replayed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
TIMER_ABSTIME = 1
EINTR = 4


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.clock_nanosleep.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec), ctypes.POINTER(_Timespec)]


def sleep_until(monotonic_ns: int) -> None:
    """clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, monotonic_ns), retried when interrupted."""
    ts = _Timespec(monotonic_ns // 1_000_000_000, monotonic_ns % 1_000_000_000)
    while True:
        err = _libc.clock_nanosleep(time.CLOCK_MONOTONIC, TIMER_ABSTIME, ctypes.byref(ts), None)
        if err != EINTR:
            if err:
                raise OSError(err, os.strerror(err))
            return


def hog() -> None:
    """Spin in user mode forever."""
    while True:
        pass


def periodic(start_ns: int, work_ns: int, period_ns: int) -> None:
    """Work `work_ns` of CPU time per release; skip the releases that passed meanwhile."""
    cputime = time.clock_gettime_ns
    thread = time.CLOCK_THREAD_CPUTIME_ID
    release = start_ns
    while True:
        sleep_until(release)
        until = cputime(thread) + work_ns
        while cputime(thread) < until:
            pass
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        release += period_ns
        if release <= now:
            release += ((now - release) // period_ns + 1) * period_ns


def main(argv: list[str]) -> int:
    """Set up as the parent asked, report ready, wait for the start time, run."""
    parent, kind, work_ns, period_ns, nice, cpus = argv
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        return 1
    os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
    os.setpriority(os.PRIO_PROCESS, 0, int(nice))
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent gave up
    start_ns = int(line)
    sleep_until(start_ns)
    if kind == "hog":
        hog()
    periodic(start_ns, int(work_ns), int(period_ns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
