"""`pvtime run` and its results folder: a folder pvtime marked is replaced whole, any other refused;
provenance.json beside results that stay byte-identical; --json, --quiet; no library warnings."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pvtime.cli import main
from pvtime.cli.exits import EXIT_TOOL_ERROR
from pvtime.report import outdir
from pvtime.report.files import SCHEMA_VERSION
from pvtime.report.provenance import DEPENDENCIES

MODEL = """\
name = "tiny"
duration_ms = 40
seed = 3

[[host]]
name = "h"
cpus = 1

[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 3000] }
"""

# An ELF guest: its console file is one a model-only scenario does not write.
ELF = """\
name = "tinyelf"
duration_ms = 40

[[host]]
name = "h"
cpus = 1

[[vm]]
name = "mini"
host = "h"
memory_mib = 16
guest = { kind = "elf", image = "minikernel", duration_ms = 10, busy_ms = 2, idle_ms = 2 }
"""


def scenario_file(tmp_path: Path, text: str = MODEL, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def test_a_results_folder_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert run(str(scenario_file(tmp_path, ELF, "elf.toml")), "--out", str(out)).exit_code == 0
    assert (out / "console-mini.txt").is_file() and (out / outdir.MARKER).is_file()
    res = run(str(scenario_file(tmp_path)), "--out", str(out))
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert "console-mini.txt" not in names  # nothing of the other scenario survives
    assert json.loads((out / "summary.json").read_text())["scenario"] == "tiny"
    listed = (out / outdir.MARKER).read_text().splitlines()[1:]
    assert sorted(listed) == sorted(names - {outdir.MARKER})


def test_a_folder_pvtime_did_not_write_is_refused_before_the_run(tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    start = time.monotonic()
    for extra in ([], ["--force"]):
        res = run(str(scenario_file(tmp_path)), "--out", str(out), *extra)
        assert res.exit_code == EXIT_TOOL_ERROR
        assert "not empty (chapter1.tex) and not a pvtime results folder" in res.output
    assert time.monotonic() - start < 5  # refused before running, not after
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"] and (out / "chapter1.tex").read_text() == "precious"
    file = tmp_path / "a-file"
    file.write_text("x")
    on_a_file = run(str(scenario_file(tmp_path)), "--out", str(file))
    assert on_a_file.exit_code == 2 and "is a file" in on_a_file.output


def test_force_clears_a_results_folder_holding_other_files(tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert run(str(scenario_file(tmp_path)), "--out", str(out)).exit_code == 0
    (out / "notes.md").write_text("mine")
    (out / "plots").mkdir()
    refused = run(str(scenario_file(tmp_path)), "--out", str(out))
    assert refused.exit_code == EXIT_TOOL_ERROR and "files pvtime did not write (notes.md, plots)" in refused.output
    assert (out / "notes.md").is_file()
    forced = run(str(scenario_file(tmp_path)), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "notes.md").exists() and not (out / "plots").exists()


def test_an_unfinished_results_folder_and_an_unmarked_old_one_are_replaced(tmp_path: Path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    (out / outdir.MARKER).write_text("a run that stopped while writing\n")  # no file names yet
    (out / "series.csv").write_text("partial")
    outdir.check(out)
    old = tmp_path / "old"  # written by pvtime 0.1.0, before the marker
    old.mkdir()
    for name in ("summary.json", "series.csv", "console-mini.txt"):
        (old / name).write_text("{}")
    outdir.check(old)
    (old / "mine.txt").write_text("x")
    with pytest.raises(outdir.OutFolderError, match="not a pvtime results folder"):
        outdir.check(old)


def test_two_runs_give_identical_results_except_provenance(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(str(path), "--out", str(a)).exit_code == 0
    assert run(str(path), "--out", str(b), "--seed", "3").exit_code == 0
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "provenance.json" in names
    for name in names:
        if name != "provenance.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pa, pb = (json.loads((d / "provenance.json").read_text()) for d in (a, b))
    assert pa["scenario"]["overrides"] == {} and pb["scenario"]["overrides"] == {"seed": 3}
    summary = json.loads((a / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION == 1


def test_provenance_says_what_made_the_results(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    out = tmp_path / "res"
    before = time.time()
    assert run(str(path), "--out", str(out), "--duration", "30").exit_code == 0
    prov: dict[str, Any] = json.loads((out / "provenance.json").read_text())
    assert prov["pvtime"]["version"] == metadata.version("pvtime")
    described = prov["pvtime"]["git_describe"]  # run from this checkout: a commit, perhaps -dirty
    assert described is None or len(described.removesuffix("-dirty")) >= 7
    assert prov["dependencies"] == {name: metadata.version(name) for name in DEPENDENCIES}
    assert set(DEPENDENCIES) >= {"unicorn", "numpy", "matplotlib", "pyarrow", "capstone", "pyelftools"}
    sc = prov["scenario"]
    assert sc["text"] == MODEL and sc["sha256"] == hashlib.sha256(MODEL.encode()).hexdigest()
    assert sc["source"] == str(path) and sc["overrides"] == {"duration_ms": 30}
    assert sc["resolved"]["duration_ms"] == 30 and sc["resolved"]["vm"][0]["vcpus"] == 2
    assert prov["python"]["version"].count(".") == 2 and prov["platform"]["system"]
    assert isinstance(prov["command_line"], list) and prov["wall_seconds"] >= 0
    started = datetime.fromisoformat(prov["started_utc"])
    assert started.utcoffset() == timedelta(0) and before - 60 <= started.timestamp() <= time.time()


def test_embedded_scenarios_record_their_text() -> None:
    from pvtime.report.provenance import now_utc, provenance
    from pvtime.sim import scenario

    sc = scenario.load("default")
    prov = provenance(sc, argv=["pvtime", "run"], started=now_utc(), wall_s=1.0)
    assert prov["scenario"]["text"] == scenario.embedded_text("default")
    assert prov["scenario"]["source"] == "embedded:default"


def test_json_prints_the_summary_and_quiet_prints_nothing(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    res = run(str(path), "--out", str(tmp_path / "j"), "--json")
    assert res.exit_code == 0
    answer = json.loads(res.stdout)
    assert answer["exit_code"] == 0 and answer["error"] is None and answer["results"] == str(tmp_path / "j")
    assert answer["summary"] == json.loads((tmp_path / "j" / "summary.json").read_text())
    quiet = run(str(path), "--out", str(tmp_path / "q"), "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration_ms = "long"\n')
    failed = run(str(bad), "--json")
    assert failed.exit_code == EXIT_TOOL_ERROR
    answer = json.loads(failed.stdout)
    assert answer["exit_code"] == EXIT_TOOL_ERROR and f"{bad}:2: duration_ms" in answer["error"]


# What matplotlib says of a crowded figure (tight_layout, legend placement), as a warning and on
# its logger, injected into every savefig of a `pvtime run` in a process of its own (pytest would
# catch both before they reach a terminal).
NOISY_RUN = """
import logging, sys, warnings
import matplotlib.figure
savefig = matplotlib.figure.Figure.savefig
def noisy(self, *args, **kwargs):
    warnings.warn("Tight layout not applied.", UserWarning, stacklevel=2)
    logging.getLogger("matplotlib.legend").warning("Creating legend with loc='best' can be slow")
    return savefig(self, *args, **kwargs)
matplotlib.figure.Figure.savefig = noisy
from pvtime.cli import main
main(["run", "--no-progress", *sys.argv[1:]], prog_name="pvtime")
"""


def test_library_warnings_while_drawing_never_reach_the_terminal(tmp_path: Path) -> None:
    args = [str(scenario_file(tmp_path)), "--out", str(tmp_path / "res")]
    done = subprocess.run([sys.executable, "-W", "default", "-c", NOISY_RUN, *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "results in" in done.stdout
    # the same warnings outside the drawing do reach the terminal: the injection works
    shown = subprocess.run([sys.executable, "-W", "default", "-c", NOISY_RUN.replace(
        "from pvtime.cli import main", "matplotlib.figure.Figure().savefig(sys.argv[-1] + '.png'); sys.exit()"),
        str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert "Tight layout not applied" in shown.stderr and "Creating legend" in shown.stderr


def test_a_duration_that_cuts_a_migration_says_so(tmp_path: Path) -> None:
    res = run("--duration", "30", "--out", str(tmp_path / "res"))
    assert res.exit_code == 0, res.output
    assert "--duration 30 ends the run before migration[0] (web to host1 at 700 ms): it will not happen" in res.stderr
