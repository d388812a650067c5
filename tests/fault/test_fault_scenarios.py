"""Mutated scenario files (issue 10's scenario campaign).

Starting from the embedded scenarios, a file is mutated -- a value replaced by one of another type
or range, a key renamed, a line deleted or doubled, a table deleted, doubled or renamed, junk
inserted, the text cut short -- and loaded with `pvtime.sim.scenario.load`. It must either:

- raise `ScenarioError`, every issue naming the file, a line of it, and the field (a TOML syntax
  error has no field: its message says so), and nothing else escapes; or
- load, and then, if the estimated cost (`pvtime.sim.cost`) of a run cut to 20 ms is small,
  that run completes.

`check_file` runs one example; the campaign (tools/fault_campaign.py) calls it too.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pvtime.sim import scenario
from pvtime.sim.cost import FIGURES_S, estimate_seconds
from pvtime.sim.runner import run
from pvtime.sim.scenario import Scenario, ScenarioError
from tests.fault.tally import TALLY

RUN_MS = 20  # a run of a file that loads is cut to this
RUN_BUDGET_S = FIGURES_S + 2.0  # and made only when its estimate (figures included; none drawn here) is below this

BASES = {name: scenario.embedded_text(name) for name in scenario.embedded_names()}
KEYS = sorted({m.group(1) for text in BASES.values() for m in re.finditer(r"([A-Za-z_]+)\s*=", text)})
VALUES = [
    "0", "-1", "1", "2", "3", "4096", "4097", "65537", "3600001", "4294967296", "18446744073709551616",
    "-9223372036854775809", "1.5", "-0.0", "nan", "inf", "1e308", '""', '"x"', '"host0"', '"host1"', '"web"',
    '"model"', '"elf"', '"minikernel"', '"conformance"', '"cfs"', '"lazy"', '"burst"', "true", "false", "[]",
    "[0]", "[0, 1]", "[1, 0]", "[-1]", "[99]", '[1, "a"]', "[[1]]", "{}", '{ kind = "model" }',
    '{ kind = "elf", image = "minikernel", duration_ms = 5 }', '{ kind = "model", busy_us = [5, 1] }',
    '{ period_us = 0, burst_us = 1 }', "1979-05-27", "07:32:00", "0x10", "0o7", "0b11", "1_000",
    "'''multi\nline'''", '"\\u00e9"', '"a\\tb"',
]
JUNK = ["=", "[", "]", "[[", '"', "'", "#", "\n", "{", "}", ",", ".", "=\n", "[x]\n", "[[vm]]\n", "\x00", "\ufeff"]


def _mutation() -> st.SearchStrategy[tuple[object, ...]]:
    pos = st.integers(0, 10_000)
    return st.one_of(
        st.tuples(st.just("value"), pos, st.one_of(st.sampled_from(VALUES), st.integers().map(str))),
        st.tuples(st.just("key"), pos, st.one_of(st.sampled_from(KEYS), st.sampled_from(["x", "a.b", '"q k"', "", "vm",
                                                                                            "host"]))),
        st.tuples(st.just("delete"), pos),
        st.tuples(st.just("duplicate"), pos),
        st.tuples(st.just("delete_table"), pos),
        st.tuples(st.just("duplicate_table"), pos),
        st.tuples(st.just("rename_table"), pos, st.sampled_from(["[[vm]]", "[[host]]", "[[noise]]", "[[migration]]",
                                                                 "[vm]", "[[hosts]]", "[extra]", "[[vm.guest]]"])),
        st.tuples(st.just("insert"), pos, st.sampled_from(JUNK)),
        st.tuples(st.just("truncate"), pos),
    )


MUTATIONS = st.lists(_mutation(), min_size=1, max_size=4)


def mutate(text: str, mutations: list[tuple[object, ...]]) -> str:
    """Apply each mutation in turn; positions are taken modulo what the text has."""
    for kind, pos, *arg in mutations:
        assert isinstance(pos, int)
        lines = text.splitlines(keepends=True) or [""]
        i = pos % len(lines)
        if kind == "value":
            value = f"= {arg[0]}"
            lines[i] = re.sub(r"=.*", lambda _, value=value: value, lines[i].rstrip("\n"), count=1) + "\n"
        elif kind == "key":
            key = str(arg[0])
            lines[i] = re.sub(r"^\s*[A-Za-z0-9_\"'. -]+?(?=\s*=)", lambda _, key=key: key, lines[i], count=1)
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind in ("delete_table", "duplicate_table", "rename_table"):
            tables = _tables(lines)
            if tables:
                start, end = tables[pos % len(tables)]
                if kind == "delete_table":
                    del lines[start:end]
                elif kind == "duplicate_table":
                    lines[end:end] = lines[start:end]
                else:
                    lines[start] = f"{arg[0]}\n"
        elif kind == "insert":
            text = "".join(lines)
            at = pos % (len(text) + 1)
            lines = [text[:at] + str(arg[0]) + text[at:]]
        elif kind == "truncate":
            text = "".join(lines)
            lines = [text[:pos % (len(text) + 1)]]
        text = "".join(lines)
    return text


def _tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first line, line after the last) of each [table] or [[array table]] block."""
    heads = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    return [(h, heads[k + 1] if k + 1 < len(heads) else len(lines)) for k, h in enumerate(heads)]


def check_file(base: str, mutations: list[tuple[object, ...]]) -> str:
    """Load the mutated file: a ScenarioError naming file, line and field, or a scenario whose
    short run completes. Returns what happened ("error", "loaded", "ran")."""
    text = mutate(BASES[base], mutations)
    TALLY["files"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.toml"
        path.write_text(text, encoding="utf-8")
        try:
            sc = scenario.load(str(path))
        except ScenarioError as err:
            nlines = max(1, len(text.splitlines()))
            assert err.issues, "a ScenarioError with no issue"
            for issue in err.issues:
                where = f"{issue} (file of {nlines} lines)"
                assert issue.file == str(path), where
                assert issue.line is not None and 1 <= issue.line <= nlines, f"no line: {where}"
                assert issue.field or issue.message.startswith("TOML syntax"), f"no field: {where}"
                assert str(issue).startswith(f"{path}:{issue.line}: "), where
            return "error"
    spec = sc.spec.model_copy(update={"duration_ms": min(sc.spec.duration_ms, RUN_MS)})
    if estimate_seconds(spec) > RUN_BUDGET_S:
        return "loaded"
    result = run(Scenario(spec, sc.source))
    TALLY["runs"] += 1
    assert result is not None
    return "ran"


@settings(max_examples=120)
@given(st.sampled_from(sorted(BASES)), MUTATIONS)
def test_a_mutated_scenario_file_gets_an_error_with_file_line_and_field_or_runs(base, mutations):
    check_file(base, mutations)


def test_the_mutations_reach_both_outcomes():
    """The mutator keeps some files loadable (and runnable) and breaks others."""
    lines = BASES["default"].splitlines()
    duration = next(i for i, line in enumerate(lines) if line.startswith("duration_ms"))
    assert check_file("default", [("value", duration, "1500")]) == "ran"
    assert check_file("default", [("value", duration, '"fifty"')]) == "error"
    assert check_file("default", [("truncate", BASES["default"].index("[[vm]]") + 3)]) == "error"


def test_a_missing_top_level_key_is_reported_at_the_top_level_table():
    """Found by the mutations: a top-level key the file lacks had no line (issue 10, finding 12's
    kind). It is reported at the top-level table's first line."""
    lines = BASES["default"].splitlines()
    name = next(i for i, line in enumerate(lines) if line.startswith("name ="))
    text = mutate(BASES["default"], [("delete", name)])
    try:
        scenario.parse(text, "s.toml")
    except ScenarioError as err:
        assert [str(i) for i in err.issues] == [f"s.toml:{name + 1}: name: Field required"]
    else:
        raise AssertionError("a file without `name` loaded")
