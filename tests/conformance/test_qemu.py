"""The packaged guests, unchanged, under a second hypervisor: QEMU's TCG (`qemu-system-aarch64 -M virt`).

QEMU TCG boots a bare-metal ELF with its device tree at the start of RAM (hw/arm/boot.c) and an
arm64 Image with the tree in x0; it serves PSCI over HVC, answers unknown HVC calls with -1, has
no SMC conduit (SMC UNDEFs: there is no EL3), offers no SMCCC 1.1 (PSCI_FEATURES(SMCCC_VERSION)
is NOT_SUPPORTED) and so no PV time, and routes the timer through its GIC (v2 by default, v3 with
`gic-version=3`). So the conformance suite must exit 0 with every check QEMU can answer passing
and the others skipped with their reason; `expect-pvtime` on the command line turns the PV-time
skips into failures; the mini kernel runs its tick to the end saying PV time is absent.

These tests need `qemu-system-aarch64`: outside CI (the CI environment variable unset) they skip
when it is missing; in CI they run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest

from pvtime.vmm.images import patch_minikernel

QEMU = shutil.which("qemu-system-aarch64")
INSTALL = "apt-get install --no-install-recommends qemu-system-arm"
pytestmark = pytest.mark.skipif(QEMU is None and not os.environ.get("CI"), reason=INSTALL)

IMAGES = Path(str(files("pvtime") / "images"))
# What QEMU TCG does not offer, as the suite words it.
NO_SMCCC_1_1 = "SMCCC 1.1 not offered: PSCI_FEATURES(SMCCC_VERSION) = -1"
NO_PV_TIME = "PV time not offered: no SMCCC 1.1"
NO_SMC = "smc #0 UNDEFs: not a conduit here"
# Checks QEMU TCG answers: PSCI and unknown function ids through both HVC immediates.
ANSWERED = [
    "psci: PSCI_VERSION >= 0.2",
    "psci: CPU_ON starts every other vCPU (refusals)",
    "psci: every started vCPU reports within 10 s (missing)",
    "psci: CPU_ON passes the context id in x0",
    "psci: MPIDR_EL1 affinity is a cpu node's reg",
    *(f"{c}: unknown {fid}: {what}" for c in ("hvc#0", "hvc#1") for fid in ("0xc5000030", "0x8200abcd")
      for what in ("x0 == -1", "x1..x3 zero or preserved")),
]


def qemu(kernel: Path, *, gic: int | None = None, semihosting: bool = True, append: str | None = None,
         smp: int = 2) -> tuple[int, str]:
    """Boot `kernel` on `-M virt`; (QEMU's exit status, the console)."""
    assert QEMU is not None, f"qemu-system-aarch64 is missing: {INSTALL}"
    machine = "virt" if gic is None else f"virt,gic-version={gic}"
    cmd = [QEMU, "-M", machine, "-cpu", "cortex-a72", "-smp", str(smp), "-m", "128", "-nographic",
           "-nic", "none", "-kernel", str(kernel)]
    if semihosting:
        cmd.append("-semihosting")
    if append is not None:
        cmd += ["-append", append]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=False)
    return done.returncode, done.stdout.decode(errors="replace")


def verdicts(console: str) -> list[tuple[str, str, str]]:
    """(PASS|FAIL|SKIP, check name, parenthesised reason or details) of each check line."""
    out = []
    for m in re.finditer(r"^(PASS|FAIL|SKIP): (.*)$", console, re.M):
        name, why = m[2], ""
        if m[1] != "PASS":
            name, _, why = m[2].rpartition(" (")
            why = why.removesuffix(")")
        out.append((m[1], name, why))
    return out


def summary(console: str) -> tuple[int, int, int]:
    m = re.search(r"^SUMMARY: (\d+) tests, (\d+) unexpected failures, (\d+) skipped$", console, re.M)
    assert m is not None, console
    return int(m[1]), int(m[2]), int(m[3])


@pytest.mark.parametrize("gic", [None, 3], ids=["gicv2", "gicv3"])
def test_conformance_elf_under_qemu_tcg_passes_with_pv_time_skipped(gic: int | None) -> None:
    status, console = qemu(IMAGES / "conformance.elf", gic=gic)
    assert status == 0, console
    assert "conformance: 2 vCPUs" in console
    assert "device tree at 0x40000000 (start of RAM)" in console  # not QEMU virt's defaults
    assert ("GICv3 at 0x8000000/0x80a0000" if gic == 3 else "GICv2 at 0x8000000/0x8010000") in console
    lines = verdicts(console)
    tests, failures, skipped = summary(console)
    assert (tests, failures) == (len(lines), 0)
    assert skipped == sum(v == "SKIP" for v, _, _ in lines)
    assert [n for v, n, _ in lines if v == "PASS"] == ANSWERED
    for verdict, name, why in lines:
        if verdict == "SKIP":
            assert why in (NO_SMCCC_1_1, NO_PV_TIME, NO_SMC), (name, why)
    # The PV-time checks (through the HVC conduits; smc#0's are skipped as its conduit's) say why.
    pv_time = [n for v, n, w in lines if w == NO_PV_TIME]
    assert len(pv_time) >= 30
    assert all("PV_TIME" in n or "record" in n or n.startswith(("steal:", "pv-time:")) for n in pv_time), pv_time


def test_conformance_image_runs_where_qemu_loads_it_with_the_tree_in_x0() -> None:
    """QEMU loads an arm64 Image at RAM base + text_offset = 0x40000000, not the ELF's 0x40200000:
    the code is position-independent. The checks and their verdicts are the ELF's."""
    status, console = qemu(IMAGES / "conformance.img")
    assert status == 0, console
    assert re.search(r"device tree at 0x[0-9a-f]+ \(x0\)", console), console
    _, elf_console = qemu(IMAGES / "conformance.elf")
    assert verdicts(console) == verdicts(elf_console)


def test_expect_pvtime_on_the_command_line_turns_the_pv_time_skips_into_failures() -> None:
    status, console = qemu(IMAGES / "conformance.elf", append="expect-pvtime")
    assert status == 1, console
    lines = verdicts(console)
    tests, failures, skipped = summary(console)
    failed = [(n, w) for v, n, w in lines if v == "FAIL"]
    assert failures == len(failed) > 0 and tests == len(lines)
    assert all(w == f"cpu0: expect-pvtime, but {NO_PV_TIME}; cpu1: expect-pvtime, but {NO_PV_TIME}"
               or w == f"cpu0: expect-pvtime, but {NO_PV_TIME}" for _, w in failed), failed
    # The checks through a conduit QEMU does not have stay skipped: they are not PV time's fault.
    assert {w for v, _, w in lines if v == "SKIP"} <= {NO_SMC, NO_SMCCC_1_1}
    assert [n for v, n, _ in lines if v == "PASS"] == ANSWERED


def test_without_semihosting_the_guest_prints_its_exit_status_and_powers_off() -> None:
    """HLT #0xF000 UNDEFs without -semihosting: the runtime's vector catches it, prints `EXIT: 0`
    and calls PSCI SYSTEM_OFF, on which QEMU exits 0."""
    status, console = qemu(IMAGES / "conformance.elf", semihosting=False)
    assert status == 0, console
    assert console.rstrip().endswith("EXIT: 0"), console[-500:]
    assert "FATAL" not in console


@pytest.mark.parametrize("gic", [None, 3], ids=["gicv2", "gicv3"])
def test_minikernel_under_qemu_tcg_runs_to_its_end_saying_pv_time_is_absent(gic: int | None,
                                                                             tmp_path: Path) -> None:
    kernel = tmp_path / "minikernel.elf"
    kernel.write_bytes(patch_minikernel((IMAGES / "minikernel.elf").read_bytes(), duration_ms=300))
    status, console = qemu(kernel, gic=gic)
    assert status == 0, console
    assert console.startswith("minikernel: stolen time not available: PSCI_FEATURES(SMCCC_VERSION) not supported")
    assert console.endswith("minikernel: done\n"), console
    # The tick ran on both vCPUs: the timer's interrupts came through the GIC.
    ticks = {int(m[1]): int(m[2]) for m in re.finditer(r"^minikernel: cpu(\d+) ticks (\d+) ", console, re.M)}
    assert sorted(ticks) == [0, 1] and all(n > 0 for n in ticks.values()), console
    steal = {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", console, re.M)}
    assert steal == {0: 0, 1: 0}
    assert "clocksource arch_sys_counter freq 62500000" in console
