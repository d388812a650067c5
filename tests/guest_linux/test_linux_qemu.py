"""The shipped kernel boots under QEMU TCG (`virt`, cortex-a72, 2 CPUs) to the shipped /init, which
runs its busy phase, prints /proc/stat before and after, and powers off through PSCI SYSTEM_OFF.

QEMU TCG offers no PV time (it answers the SMCCC discovery calls NOT_SUPPORTED), so Linux
accounts no steal there: arch/arm64/kernel/paravirt.c: pv_time_init finds no stolen time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pvtime.vmm.images import PROC_STAT_STEAL, ConsoleProcStat
from tests.guest_linux.shipped import initramfs, kernel_image, manifest

INSTALL = "apt-get install --no-install-recommends qemu-system-arm"
QEMU = shutil.which("qemu-system-aarch64")
if QEMU is None and not os.environ.get("CI"):
    pytest.skip(INSTALL, allow_module_level=True)

CPUS = 2
BUSY_MS = 500
GROWTH = re.compile(r"^pvtime-init: cpu(\d+) steal \+(\d+) user \+(\d+) system \+(\d+) idle \+(\d+) of \+(\d+)", re.M)


def boot(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None, f"CI must provide qemu-system-aarch64: {INSTALL}"
    (tmp_path / "Image").write_bytes(kernel_image())
    (tmp_path / "initramfs.cpio").write_bytes(initramfs())
    cmd = [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-smp", str(CPUS), "-m", "256", "-nographic",
           "-nic", "none", "-no-reboot", "-kernel", "Image", "-initrd", "initramfs.cpio",
           "-append", f"console=ttyAMA0 pvtime.busy_ms={BUSY_MS}"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def test_kernel_boots_to_init_and_powers_off(tmp_path: Path) -> None:
    result = boot(tmp_path)
    console = result.stdout
    assert result.returncode == 0, console + result.stderr
    assert manifest()["kernel"]["banner"] in console
    assert "psci: PSCIv" in console
    assert f"smp: Brought up 1 node, {CPUS} CPUs" in console
    assert "Run /init as init process" in console
    assert f"pvtime-init: {CPUS} CPUs online, each busy for {BUSY_MS} ms" in console
    assert console.index("/proc/stat before") < console.index("/proc/stat after")
    assert re.search(r"pvtime-init: 2 busy processes done in \d+\.\d{3} ms \(0 failed\)", console)
    assert "reboot: Power down" in console, "init's reboot(RB_POWER_OFF) must reach PSCI SYSTEM_OFF"

    growth = {int(m[1]): tuple(int(x) for x in m.groups()[1:]) for m in GROWTH.finditer(console)}
    assert sorted(growth) == list(range(CPUS))
    for cpu, (steal, user, _system, _idle, _total) in growth.items():
        assert steal == 0, f"cpu{cpu}: steal without PV time"
        assert user > 0, f"cpu{cpu}: its pinned busy process did not run there"

    # pvtime reads a guest's steal off its console with the /proc/stat parser (the last report wins)
    stat = ConsoleProcStat.parse(console)
    assert sorted(stat.cpus) == list(range(CPUS))
    assert all(stat.cpus[cpu][PROC_STAT_STEAL] == 0 for cpu in range(CPUS))
