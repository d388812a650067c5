"""`--set PATH=VALUE`: scenario fields set from the command line, checked as the file's own fields are,
with errors naming the --set; `pvtime run --set` gives the results of the edited file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.cli.exits import EXIT_TOOL_ERROR, EXIT_USAGE
from pvtime.sim import scenario
from pvtime.sim.overrides import Override, OverrideSyntaxError, parse_assignment, parse_path, parse_value, split_values
from pvtime.sim.scenario import ScenarioError

TEXT = """\
name = "t"
duration_ms = 40
seed = 1

[[host]]
name = "h0"
cpus = 2

[[host]]
name = "h1"
cpus = 2

[[vm]]
name = "web"
host = "h0"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 2000], idle_us = [0, 1000] }

[[noise]]
name = "hog"
host = "h0"

[[migration]]
vm = "web"
to = "h1"
at_ms = 20
"""


def sets(*texts: str) -> list[Override]:
    return [parse_assignment(t)[0] for t in texts]


def parse(*texts: str) -> scenario.Scenario:
    return scenario.parse(TEXT, "s.toml", sets(*texts))


def errors(*texts: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse(*texts)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize("path, parts", [
    ("vm.web.vcpus", ("vm", "web", "vcpus")),
    ("host.h0.sched.policy", ("host", "h0", "sched", "policy")),
    ("migration[0].at_ms", ("migration", 0, "at_ms")),
    ("migration.0.at_ms", ("migration", "0", "at_ms")),
    ("vm.web.pin[1]", ("vm", "web", "pin", 1)),
    ('vm."my.vm".vcpus', ("vm", "my.vm", "vcpus")),
    ("seed", ("seed",)),
])
def test_paths_read_as_the_file_nests_its_fields(path: str, parts: tuple[Any, ...]) -> None:
    assert parse_path(path) == parts


@pytest.mark.parametrize("bad", ["", "vm..web", ".seed", "vm.web.", "vm web", "vm[x].a"])
def test_what_is_not_a_path_is_refused(bad: str) -> None:
    with pytest.raises(OverrideSyntaxError, match="is not a field path"):
        parse_path(bad)


@pytest.mark.parametrize("text, value", [
    ("4", 4), ("25_000_000", 25_000_000), ("25e6", 25_000_000), ("0x10", 16), ("0.5", 0.5), ("true", True),
    ("cfs", "cfs"), ('"cfs"', "cfs"), ("[0, 1]", [0, 1]), ("{ period_us = 10, burst_us = 1 }",
                                                             {"period_us": 10, "burst_us": 1}),
])
def test_values_are_toml_or_a_bare_word(text: str, value: Any) -> None:
    got = parse_value(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("bad, message", [
    ("", "no value"), ("[0, 1", "is not a TOML value"), ('"open', "is not a TOML value"),
    ("1\nseed = 2", "is more than one value"),
])
def test_values_that_do_not_parse_are_refused(bad: str, message: str) -> None:
    with pytest.raises(OverrideSyntaxError, match=message):
        parse_value(bad)


def test_a_sweep_splits_values_at_the_commas_outside_brackets_and_quotes() -> None:
    assert split_values("2,4,8") == ["2", "4", "8"]
    assert split_values("[0,1],[1,0]") == ["[0,1]", "[1,0]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert [o.value for o in parse_assignment("vm.web.pin=[0,1],[1,0]", many=True)] == [[0, 1], [1, 0]]
    assert [o.origin for o in parse_assignment("vm.web.vcpus=1,2", many=True)] == [
        "--set vm.web.vcpus=1", "--set vm.web.vcpus=2"]
    with pytest.raises(OverrideSyntaxError, match="one value per --set"):
        parse_assignment("vm.web.vcpus=1,2")
    with pytest.raises(OverrideSyntaxError, match="write PATH=VALUE"):
        parse_assignment("vm.web.vcpus")


def test_overrides_set_fields_by_element_name_or_index() -> None:
    spec = parse("vm.web.vcpus=1", "host.h0.cpus=4", "seed=7", "duration_ms=30", "noise.hog.duty=0.5",
                 "migration[0].at_ms=10", "host.h1.sched.policy=cfs").spec
    assert (spec.vm[0].vcpus, spec.host[0].cpus, spec.seed, spec.duration_ms) == (1, 4, 7, 30)
    assert spec.noise[0].duty == 0.5 and spec.migration[0].at_ms == 10
    # [host.sched] is not in the file: the override makes the table
    assert spec.host[1].sched.policy == "cfs" and spec.host[0].sched.policy == "eevdf"
    assert parse("migration.0.at_ms=15").spec.migration[0].at_ms == 15
    assert parse("vm.web.guest.busy_us[1]=3000").spec.vm[0].guest.busy_us == (1000, 3000)


def test_an_override_equals_editing_the_file() -> None:
    edited = TEXT.replace("vcpus = 2", "vcpus = 1").replace('name = "h0"\ncpus = 2', 'name = "h0"\ncpus = 3')
    assert parse("vm.web.vcpus=1", "host.h0.cpus=3").spec == scenario.parse(edited, "s.toml").spec


def test_an_error_in_an_overridden_field_names_the_set() -> None:
    assert errors("vm.web.vcpus=0") == ["--set vm.web.vcpus=0: vm[0].vcpus: Input should be greater than or equal to 1"]
    assert errors("host.h0.cpus=many") == [
        "--set host.h0.cpus=many: host[0].cpus: Input should be a valid integer"]
    assert errors("vm.web.vcpu=2") == ["--set vm.web.vcpu=2: vm[0].vcpu: Extra inputs are not permitted"]
    assert errors("host.h0.sched.policy=fifo") == [
        "--set host.h0.sched.policy=fifo: host[0].sched.policy: Input should be 'eevdf' or 'cfs'"]
    # a cross-check of the overridden field itself; one of the file's own fields that it makes wrong
    assert errors("vm.web.pin=[0,5]") == [
        "--set vm.web.pin=[0,5]: vm[0].pin[1]: host CPU 5 does not exist on h0 (CPUs 0..1)",
        "s.toml:25: migration[0].to: vm web's pin [5] do not exist on h1 (with --set vm.web.pin=[0,5])"]


def test_a_path_the_scenario_lacks_names_the_set() -> None:
    assert errors("vm.db.vcpus=2") == ["--set vm.db.vcpus=2: vm: no element named 'db' (names: web)"]
    assert errors("host[5].cpus=2") == ["--set host[5].cpus=2: host: no element [5] (it has 2)"]
    assert errors("vm.web.vcpus.max=2") == ["--set vm.web.vcpus.max=2: vm[0].vcpus: is 2, not a table: it has no "
                                            "field 'max'"]
    assert errors("vm=1") == ["--set vm=1: vm: name one: vm.NAME.FIELD (or vm[INDEX].FIELD)"]
    no_noise = TEXT.replace('[[noise]]\nname = "hog"\nhost = "h0"\n', "")
    with pytest.raises(ScenarioError, match="--set noise.hog.duty=1: noise: the scenario has no noise"):
        scenario.parse(no_noise, "s.toml", sets("noise.hog.duty=1"))
    assert errors("seed=1", "seed=2") == ["--set seed=2: seed: also set by --set seed=1"]


def test_an_error_elsewhere_keeps_its_file_line_and_says_what_was_set() -> None:
    # fewer host CPUs than the file's own pin needs: the pin's line, and the --set that made it wrong
    pinned = TEXT.replace("vcpus = 2\n", "vcpus = 2\npin = [0, 1]\n")
    with pytest.raises(ScenarioError) as info:
        scenario.parse(pinned, "s.toml", sets("host.h0.cpus=1"))
    assert [str(i) for i in info.value.issues] == [
        "s.toml:17: vm[0].pin[1]: host CPU 1 does not exist on h0 (CPUs 0..0) (with --set host.h0.cpus=1)"]


def test_a_duration_cut_short_by_an_override_drops_the_migration_instead_of_failing() -> None:
    """A file's migration after its own end is an error; a shorter run asked for on the command
    line just does not reach it (`pvtime run` notes it)."""
    assert parse("duration_ms=10").spec.duration_ms == 10
    assert scenario.late_migrations(parse("duration_ms=10").spec) == [0]
    assert errors("migration.0.at_ms=50") == [
        "--set migration.0.at_ms=50: migration[0].at_ms: 50 ms is not before the end of the run (duration_ms = 40): "
        "the migration would never happen"]


MODEL = """\
name = "tiny"
duration_ms = 30
seed = 3

[[host]]
name = "h"
cpus = 1

[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 3000], idle_us = [0, 3000] }
"""


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def test_pvtime_run_set_gives_the_results_of_the_edited_file(tmp_path: Path) -> None:
    original, edited = tmp_path / "s.toml", tmp_path / "e.toml"
    original.write_text(MODEL)
    edited.write_text(MODEL.replace("vcpus = 2", "vcpus = 1").replace("seed = 3", "seed = 8"))
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(str(original), "--set", "vm.a.vcpus=1", "--set", "seed=8", "--out", str(a)).exit_code == 0
    assert run(str(edited), "--out", str(b)).exit_code == 0
    for f in sorted(p.name for p in a.iterdir()):
        if f not in ("provenance.json", "summary.json"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # summary.json names the file it came from; the rest of it is the same
    sa, sb = ((d / "summary.json").read_text() for d in (a, b))
    assert sa.replace(str(original), str(edited)) == sb
    assert '"overrides": {\n      "seed": 8,\n      "vm.a.vcpus": 1\n    }' in (a / "provenance.json").read_text()


def test_pvtime_run_set_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(MODEL)
    bad = run(str(path), "--set", "vm.a.vcpus=0", "--out", str(tmp_path / "x"))
    assert bad.exit_code == EXIT_TOOL_ERROR
    assert "--set vm.a.vcpus=0: vm[0].vcpus: Input should be greater than or equal to 1" in bad.output
    usage = run(str(path), "--set", "vm.a.vcpus", "--out", str(tmp_path / "x"))
    assert usage.exit_code == EXIT_USAGE and "write PATH=VALUE" in usage.output
    twice = run(str(path), "--seed", "4", "--set", "seed=5", "--out", str(tmp_path / "x"))
    assert twice.exit_code == EXIT_TOOL_ERROR and "--set seed=5: seed: also set by --seed 4" in twice.output
    assert not (tmp_path / "x").exists()
