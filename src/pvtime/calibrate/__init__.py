"""`pvtime calibrate`: the host simulator against the kernel it runs on.

A built-in set of workloads (`workloads`) runs as real pinned processes on the running kernel
(`real`, measured with /proc/<pid>/schedstat: `schedstat`), then -- after them, never beside them --
in pvtime's host scheduler configured like that kernel (`kernel`, `simulated`). `recording` keeps
the kernel side (JSON, so a recorded host can be compared later), `compare` sets the two side by
side against the target, and `table` prints it.
"""

from pvtime.calibrate.compare import Calibration, Row, compare
from pvtime.calibrate.kernel import KernelInfo, KernelReadError, read_kernel
from pvtime.calibrate.real import RealRunError
from pvtime.calibrate.recording import SCHEMA, Recording, RecordingError, Settings, load, record
from pvtime.calibrate.table import render
from pvtime.calibrate.workloads import BUILTIN, TaskKind, TaskSpec, Workload

__all__ = ["BUILTIN", "SCHEMA", "Calibration", "KernelInfo", "KernelReadError", "RealRunError", "Recording",
           "RecordingError", "Row", "Settings", "TaskKind", "TaskSpec", "Workload", "compare", "load",
           "read_kernel", "record", "render"]
