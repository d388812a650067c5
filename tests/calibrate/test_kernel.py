"""Reading the running kernel's scheduler settings, and /proc/stat, from a fake /proc."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pvtime.calibrate.kernel import CpuTimes, policy_for_release, read_kernel


def _proc(tmp_path: Path, release: str = "6.18.0", config: str = "CONFIG_HZ=250\nCONFIG_PREEMPT_NONE=y\n",
          cmdline: str = "console=ttyS0") -> Path:
    proc = tmp_path / "proc"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text(release + "\n")
    (proc / "config.gz").write_bytes(gzip.compress(config.encode()))
    (proc / "cmdline").write_text(cmdline + "\n")
    return proc


def test_hz_and_the_config_default_preemption_mode(tmp_path: Path) -> None:
    k = read_kernel(proc=_proc(tmp_path), sys_debug=tmp_path / "none")
    assert (k.release, k.policy, k.hz, k.preempt) == ("6.18.0", "eevdf", 250, "none")
    assert k.sources["preempt"] == "CONFIG_PREEMPT_NONE=y"


def test_preempt_on_the_command_line_wins_over_the_config(tmp_path: Path) -> None:
    k = read_kernel(proc=_proc(tmp_path, cmdline="quiet preempt=full"), sys_debug=tmp_path / "none")
    assert k.preempt == "full" and "cmdline" in k.sources["preempt"]


def test_debugfs_wins_over_the_command_line(tmp_path: Path) -> None:
    debug = tmp_path / "preempt"
    debug.write_text("none voluntary full (lazy)\n")
    k = read_kernel(proc=_proc(tmp_path, cmdline="preempt=full"), sys_debug=debug)
    assert k.preempt == "lazy"


def test_linux_before_6_6_runs_cfs() -> None:
    assert policy_for_release("6.5.13-generic") == "cfs"
    assert policy_for_release("6.6.0") == "eevdf"
    assert policy_for_release("5.15.0") == "cfs"


def test_every_field_can_be_given_instead(tmp_path: Path) -> None:
    k = read_kernel({"hz": 1000, "preempt": "voluntary", "policy": None}, proc=_proc(tmp_path),
                    sys_debug=tmp_path / "none")
    assert (k.hz, k.preempt, k.policy) == (1000, "voluntary", "eevdf")
    assert k.sources["hz"] == k.sources["preempt"] == "override"
    assert k.sources["policy"] != "override"
    later = k.overridden({"release": "6.1.0", "cpus": 4})
    assert (later.policy, later.cpus, later.sources["cpus"]) == ("cfs", 4, "override")


def test_without_a_config_hz_must_be_given(tmp_path: Path) -> None:
    proc = _proc(tmp_path)
    (proc / "config.gz").unlink()
    with pytest.raises(Exception, match="--hz"):
        read_kernel(proc=proc, sys_debug=tmp_path / "none")
    assert read_kernel({"hz": 100, "preempt": "none"}, proc=proc, sys_debug=tmp_path / "none").hz == 100


def test_proc_stat_steal_is_in_user_hz_ticks(tmp_path: Path) -> None:
    def stat(steal0: int, user0: int) -> CpuTimes:
        (tmp_path / "stat").write_text(
            f"cpu  {user0 + 5} 0 0 100 0 0 0 {steal0 + 1} 0 0\n"
            f"cpu0 {user0} 0 0 50 0 0 0 {steal0} 0 0\ncpu1 5 0 0 50 0 0 0 1 0 0\nintr 0\n")
        return CpuTimes.sample(tmp_path)

    a, b = stat(0, 10), stat(3, 40)
    assert b.steal_since(a) == 30_000_000  # 3 ticks of 10 ms
    assert b.steal_since(a, [0]) == 30_000_000 and b.steal_since(a, [1]) == 0
    assert b.busy_since(a, [0]) == 300_000_000
