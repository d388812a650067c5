"""[[migration]] in scenario files: validation, and the default scenario's 25 MHz <-> 1 GHz round trip."""

import pytest

from pvtime.sim import scenario
from pvtime.sim.results import MigrationStatus
from pvtime.sim.runner import run

BASE = """
name = "m"
duration_ms = 120
[[host]]
name = "a"
cpus = 1
counter_hz = 24_000_000
[[host]]
name = "b"
cpus = 1
counter_hz = 100_000_000
[[vm]]
name = "v"
host = "a"
lpt_pv_hz = 1_000_000_000
guest = { kind = "model" }
"""


def test_unknown_vm_or_host_is_named_with_its_line():
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.parse(BASE + '[[migration]]\nvm = "w"\nto = "c"\nat_ms = 5\n', "m.toml")
    text = str(err.value)
    assert "migration[0].vm: unknown vm 'w'" in text and "migration[0].to: unknown host 'c'" in text
    assert "m.toml:" in text


def test_scenario_migration_there_and_back():
    sc = scenario.parse(BASE + '[[migration]]\nvm = "v"\nto = "b"\nat_ms = 30\n'
                        '[[migration]]\nvm = "v"\nto = "a"\nat_ms = 80\n')
    r = run(sc)
    assert [m.status for m in r.migrations] == [MigrationStatus.DONE, MigrationStatus.DONE]
    assert [m.from_host for m in r.migrations] == ["a", "b"]
    c = r.clocks["v"]
    assert c.clocksource == "pv_lpt_counter" and c.timer_early == 0
    assert c.error_min_ns is not None and c.error_max_ns is not None
    assert abs(c.error_min_ns) <= 42 and abs(c.error_max_ns) <= 42  # one 24 MHz tick
    assert all(m.downtime_ns is not None and 0 < m.downtime_ns < 5_000_000 for m in r.migrations)


def test_default_scenario_migrates_web_to_1ghz_and_back():
    spec = scenario.load("default").spec
    assert [(m.vm, m.to) for m in spec.migration] == [("web", "host1"), ("web", "host0")]
    hz = {h.name: h.counter_hz for h in spec.host}
    assert (hz["host0"], hz["host1"]) == (25_000_000, 1_000_000_000)
