"""ELF guests in scenarios: real AArch64 code (the packaged minikernel, or a file) on the unicorn
CPU, under the same scheduler as the model guests.

- under contention the stolen-time record equals the host's truth (run_delay growth since the
  vCPU's PV_TIME_ST, up to its last guest entry) exactly, and the minikernel's own /proc/stat
  steal, parsed from its console, agrees with it as it prints it;
- a guest fault or a semihosting exit stops only that VM, and a non-zero status is reported;
- the same seed gives byte-identical results, console included.
"""

from __future__ import annotations

import csv
import json
import re
import struct
from functools import cache
from pathlib import Path

from pvtime.abi.linux import NSEC_PER_SEC, USER_HZ
from pvtime.report import summary_table, write_results
from pvtime.sim import scenario
from pvtime.sim.results import MigrationStatus
from pvtime.sim.runner import RunResult, run
from pvtime.vmm import StopReason, StopReasonKind
from tests.cpu.elfwriter import make_elf

MS = 1_000_000
TICK_NS = 4 * MS  # the minikernel's 250 Hz tick
USER_HZ_NS = NSEC_PER_SEC // USER_HZ

# Two minikernel vCPUs and a busy model VM on one host CPU with a hog: every vCPU waits.
CONTENDED = """
name = "elf-contended"
duration_ms = 400
seed = 7
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "mk"
host = "h"
vcpus = 2
memory_mib = 16
guest = { kind = "elf", image = "minikernel", duration_ms = 250, busy_ms = 30, idle_ms = 20, instructions_per_sec = 50_000_000 }
[[vm]]
name = "model"
host = "h"
guest = { kind = "model", busy_us = [3000, 3000], idle_us = [0, 1000] }
[[noise]]
name = "hog"
host = "h"
duty = 0.5
period_us = 8000
"""


@cache
def contended() -> RunResult:
    return run(scenario.parse(CONTENDED, "contended.toml"))


def test_elf_vm_under_contention_record_equals_truth_and_the_guest_prints_it() -> None:
    r = contended()
    mk = next(v for v in r.vms if v.name == "mk")
    assert mk.guest == "elf:minikernel" and mk.exit_status == 0 and mk.stopped is not None
    assert mk.stopped_ns is not None and 250 * MS < mk.stopped_ns < 400 * MS
    printed = {int(m[1]): int(m[2]) for m in re.finditer(r"^steal_ns cpu(\d+) (\d+)$", mk.console, re.M)}
    stat = {int(m[1]): [int(x) for x in m[2].split()]
            for m in re.finditer(r"^cpu(\d+) ([\d ]+)$", mk.console, re.M)}
    rows = [row for row in r.vcpus if row.vm == "mk"]
    assert [row.vcpu for row in rows] == sorted(printed) == sorted(stat) == [0, 1]
    for row in rows:
        assert row.host_run_delay_ns > 20 * MS  # it waited, and ...
        assert row.record_steal_ns == row.host_run_delay_ns  # ... the record says so, to the ns
        # The guest's own steal, as it printed it: ns from its steal_ns line, USER_HZ from its
        # /proc/stat line (the 8th number), which is the same time cut to 10 ms units.
        assert row.guest_steal_ns == printed[row.vcpu]
        assert row.proc_stat_steal == stat[row.vcpu][7] == printed[row.vcpu] // USER_HZ_NS
        assert row.proc_stat_total == sum(stat[row.vcpu]) and row.guest_note is None
        # The guest reads its steal clock at its ticks; the record at its last tick is the
        # truth at some entry, so it can only lag the truth by waits after its last tick.
        assert 0 <= row.host_run_delay_ns - row.guest_steal_ns <= TICK_NS + 6 * MS, row
    model = next(row for row in r.vcpus if row.vm == "model")
    assert model.record_steal_ns == model.host_run_delay_ns > 0
    assert next(v for v in r.vms if v.name == "model").stopped is None  # it went on after mk exited
    # Waits of mk's threads after the VM stopped are no guest's steal: the truth stops there.
    tasks = {t.name: t for t in r.tasks}
    for row in rows:
        assert tasks[row.task].run_delay_ns >= row.host_run_delay_ns


def test_results_folder_with_an_elf_vm_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_results(contended(), a)
    write_results(run(scenario.parse(CONTENDED, "contended.toml")), b)
    names = {p.name for p in a.iterdir()}
    assert "console-mk.txt" in names and "console-model.txt" not in names
    assert names == {p.name for p in b.iterdir()}
    for name in sorted(names):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "console-mk.txt").read_text().endswith("minikernel: done\n")
    summary = json.loads((a / "summary.json").read_text())
    mk = next(v for v in summary["vms"] if v["name"] == "mk")
    assert mk["exit_status"] == 0 and mk["guest"] == "elf:minikernel"
    rows = [v for v in summary["vcpus"] if v["vm"] == "mk"]
    assert all(v["record_minus_host_ns"] == 0 and v["guest_steal_note"] is None for v in rows)
    # The guest's steal is unknown (empty) in the series until it prints it, then its value:
    # for each vCPU, the one that printed and the other alike.
    with (a / "series.csv").open() as f:
        series = list(csv.DictReader(f))
    for row in rows:
        guest = [c["guest_steal_ns"] for c in series if c["vm"] == "mk" and c["vcpu"] == str(row["vcpu"])]
        assert guest[0] == "" and int(guest[-1]) == row["guest_steal_ns"]
        assert "-1" not in guest


# An image that executes an undefined instruction (UDF #0) at its entry.
UDF = make_elf(struct.pack("<I", 0))
# One that exits at once through semihosting with status 3: SYS_EXIT_EXTENDED, ApplicationExit.
EXIT3 = make_elf(struct.pack("<4I", 0x10000081,   # adr x1, block (+16)
                             0x52800400,          # mov w0, #0x20
                             0xD45E0000,          # hlt #0xf000
                             0x14000000)          # b .
                 + struct.pack("<2Q", 0x20026, 3))  # block: {reason, status}

STOPPERS = """
name = "stoppers"
duration_ms = 200
[[host]]
name = "h"
cpus = 1
[[vm]]
name = "bad"
host = "h"
memory_mib = 4
guest = { kind = "elf", path = "img/udf.elf" }
[[vm]]
name = "quits"
host = "h"
memory_mib = 4
[vm.guest]
kind = "elf"
path = "img/exit3.elf"
[[vm]]
name = "good"
host = "h"
guest = { kind = "model", busy_us = [5000, 5000], idle_us = [0, 0] }
"""


def test_a_guest_fault_or_exit_stops_only_that_vm(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "udf.elf").write_bytes(UDF)
    (tmp_path / "img" / "exit3.elf").write_bytes(EXIT3)
    f = tmp_path / "s.toml"
    f.write_text(STOPPERS)
    r = run(scenario.load(str(f)))  # paths are relative to the scenario file, not the cwd
    bad, quits, good = r.vms
    assert bad.stopped is not None and bad.stopped.kind is StopReasonKind.INTERNAL_ERROR
    assert "undefined instruction" in str(bad.stopped) and "pc=0x40080000" in str(bad.stopped)
    assert bad.exit_status is None and bad.guest == f"elf:{tmp_path / 'img' / 'udf.elf'}"
    assert quits.exit_status == 3 and quits.stopped == StopReason.guest_exit(3)
    assert good.stopped is None
    good_row = next(row for row in r.vcpus if row.vm == "good")
    assert good_row.run_time_ns > 190 * MS  # it had the CPU once the other two were gone
    for row in r.vcpus:
        assert row.record_steal_ns == row.host_run_delay_ns
        if row.vm != "good":  # they printed no /proc/stat: "-" and why
            assert row.guest_steal_ns is None and row.guest_note is not None
            assert "no /proc/stat on its console" in row.guest_note
    table = summary_table(r)
    assert "quits: guest exit status 3 (FAILED)" in str(table.caption)
    assert "bad/0 /proc/stat -: no /proc/stat on its console" in str(table.caption)


def test_an_elf_guest_still_running_at_the_end_says_why_it_has_no_proc_stat() -> None:
    text = CONTENDED.replace("duration_ms = 400", "duration_ms = 60")
    r = run(scenario.parse(text, "short.toml"))
    rows = [row for row in r.vcpus if row.vm == "mk"]
    assert all(row.guest_steal_ns is None and row.proc_stat_steal is None for row in rows)
    assert all(row.guest_note is not None and row.guest_note.startswith("still running") for row in rows)
    assert all(row.record_steal_ns == row.host_run_delay_ns for row in rows)


def test_a_migrated_elf_vm_keeps_its_console_and_its_truth() -> None:
    # The record travels in guest RAM; the truth is carried with it (each vCPU's waits on the
    # source up to its last entry, then on the destination), and so is the console.
    text = CONTENDED.replace('cpus = 1\n', 'cpus = 1\n[[host]]\nname = "h2"\ncpus = 1\n', 1)
    text += '[[migration]]\nvm = "mk"\nto = "h2"\nat_ms = 100\n'
    r = run(scenario.parse(text, "migrate.toml"))
    assert r.migrations[0].status is MigrationStatus.DONE, r.migrations
    mk = next(v for v in r.vms if v.name == "mk")
    assert mk.host == "h2" and mk.exit_status == 0
    assert mk.console.startswith("minikernel: stolen time supported") and mk.console.endswith("minikernel: done\n")
    for row in (row for row in r.vcpus if row.vm == "mk"):
        assert row.record_steal_ns == row.host_run_delay_ns > 0
        assert row.guest_steal_ns is not None and 0 <= row.host_run_delay_ns - row.guest_steal_ns <= TICK_NS + 6 * MS
