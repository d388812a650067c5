"""Scenario files: the embedded ones load, and bad files get errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvtime.sim import scenario
from pvtime.sim.scenario import ScenarioError

GOOD = """\
name = "t"
duration_ms = 100

[[host]]
name = "h"
cpus = 2

[[vm]]
name = "a"
host = "h"
vcpus = 2
guest = { kind = "model", busy_us = [1000, 2000] }

[[vm]]
name = "b"
host = "h"
pin = [1]
[vm.guest]
kind = "model"
busy_us = [1000, 2000]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(text, "s.toml")
    return [str(i) for i in info.value.issues]


def test_embedded_scenarios_load() -> None:
    names = scenario.embedded_names()
    assert "default" in names
    for name in names:
        sc = scenario.load(name)
        assert sc.spec.name and sc.source == f"embedded:{name}"
    assert scenario.load().spec.name == "default"


def test_good_file_parses() -> None:
    spec = scenario.parse(GOOD).spec
    assert [v.name for v in spec.vm] == ["a", "b"] and spec.vm[1].pin == [1]


def test_wrong_type_names_file_line_and_field() -> None:
    bad = GOOD.replace('busy_us = [1000, 2000]\n', 'busy_us = [1000, "x"]\n')
    assert errors(bad) == ["s.toml:20: vm[1].guest.busy_us[1]: Input should be a valid integer, "
                           "unable to parse string as an integer"]


def test_inline_table_field_line() -> None:
    bad = GOOD.replace('guest = { kind = "model", busy_us = [1000, 2000] }', 'guest = { kind = "model", hz = 0 }')
    assert errors(bad) == ["s.toml:12: vm[0].guest.hz: Input should be greater than or equal to 1"]


def test_unknown_field_and_missing_field() -> None:
    bad = GOOD.replace("\ncpus = 2\n", "\ncpu = 2\n")
    assert sorted(errors(bad)) == ["s.toml:4: host[0].cpus: Field required",
                                   "s.toml:6: host[0].cpu: Extra inputs are not permitted"]


def test_unknown_guest_kind() -> None:
    bad = GOOD.replace('kind = "model"\nbusy', 'kind = "vmlinux"\nbusy')
    (msg,) = errors(bad)
    assert msg.startswith("s.toml:18: vm[1].guest: Input tag 'vmlinux' found using 'kind' does not match")


def test_cross_checks() -> None:
    bad = GOOD.replace('host = "h"\npin = [1]', 'host = "h"\npin = [7]').replace(
        'name = "a"\nhost = "h"', 'name = "a"\nhost = "nowhere"')
    assert errors(bad) == [
        "s.toml:10: vm[0].host: unknown host 'nowhere' (hosts: h)",
        "s.toml:17: vm[1].pin[0]: host CPU 7 does not exist on h (CPUs 0..1)",
    ]
    assert errors(GOOD.replace("pin = [1]", "pin = [0, 1]")) == ["s.toml:17: vm[1].pin: lists 2 CPUs for 1 vCPUs"]


def test_model_rules() -> None:
    bad = GOOD.replace("busy_us = [1000, 2000]\n", "busy_us = [3000, 2000]\n")
    assert errors(bad) == ["s.toml:18: vm[1].guest: busy_us must be [low, high] with 0 <= low <= high, got [3000, 2000]"]


def test_syntax_error_has_the_line() -> None:
    (msg,) = errors(GOOD.replace("cpus = 2", "cpus = = 2"))
    assert msg.startswith("s.toml:6: TOML syntax:")


def test_elf_guest_is_clearly_unavailable_until_the_backend_lands() -> None:
    text = GOOD.replace('[vm.guest]\nkind = "model"\nbusy_us = [1000, 2000]', '[vm.guest]\nkind = "elf"\nimage = "minikernel"')
    if scenario.elf_backend_available():
        scenario.parse(text)
    else:
        (msg,) = errors(text)
        assert msg.startswith("s.toml:19: vm[1].guest.kind: ELF guests need the unicorn CPU backend")
    (msg,) = errors(text.replace('image = "minikernel"', ""))
    assert "exactly one of image" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file, and not an embedded scenario"):
        scenario.load(str(tmp_path / "nope.toml"))
    f = tmp_path / "x.toml"
    f.write_text(GOOD.replace("duration_ms = 100", "duration_ms = -1"))
    with pytest.raises(ScenarioError, match=r"x.toml:2: duration_ms: Input should be greater than 0"):
        scenario.load(str(f))
