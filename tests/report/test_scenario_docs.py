"""The scenario file's reference: `pvtime scenario schema` (JSON Schema from the pydantic models)
and docs/scenarios.md generated from it -- committed, current, and describing every field."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.report.scenario_docs import scenario_json_schema, scenario_markdown
from pvtime.sim import scenario

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"


def test_the_committed_docs_are_current() -> None:
    # Regenerate with: pvtime scenario docs --out docs/scenarios.md
    assert DOCS.read_text(encoding="utf-8") == scenario_markdown(), "run: pvtime scenario docs --out docs/scenarios.md"


def tables(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"top level": schema, **schema["$defs"]}


def test_every_table_and_field_has_a_description() -> None:
    schema = scenario_json_schema()
    missing = [f"{name}.{field}" for name, table in tables(schema).items()
               for field, prop in table["properties"].items() if not prop.get("description", "").strip()]
    assert missing == []
    assert [name for name, table in tables(schema).items() if not table.get("description", "").strip()] == []


def test_the_docs_have_a_row_for_every_field_with_its_type_default_and_range() -> None:
    text = scenario_markdown()
    sections = text.split("\n## ")[1:]
    schema = scenario_json_schema()
    # a section per table: the top level and each model (the guest once per kind)
    assert len(sections) == len(tables(schema))
    for table in tables(schema).values():
        section = next(s for s in sections if table["description"].split("\n")[0] in s)
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert [r.split(" | ")[0].strip("| `") for r in rows] == list(table["properties"])

    def row(heading: str, field: str) -> list[str]:
        section = next(s for s in sections if s.startswith(heading))
        line = next(line for line in section.splitlines() if line.startswith(f"| `{field}` |"))
        return [cell.strip() for cell in line.strip("|").split(" | ")][1:4]

    assert row("`[[host]]`", "cpus") == ["integer", "required", "`1` to `4096`"]
    assert row("`[[host]]`", "counter_hz") == ["integer", "`25_000_000`", "`1_000_000` to `4_294_967_295`"]
    assert row("`[[noise]]`", "duty") == ["float", "`1.0`", "> `0.0`, ≤ `1.0`"]
    assert row("`[[noise]]`", "cpus") == ["array of integers", "unset", ""]
    assert row("`[host.sched]`", "policy")[:2] == ['`"eevdf"` or `"cfs"`', '`"eevdf"`']
    assert row('`[vm.guest]` (kind = "model")', "busy_us")[:2] == ["[integer, integer]", "`[2000, 12000]`"]
    assert row("`[[vm]]`", "guest")[0] == ("table, by `kind`: [model](#vm-guest-model), [elf](#vm-guest-elf), "
                                           "[linux](#vm-guest-linux)")
    assert row("top level", "host")[1:] == ["required", "at least 1"]


def test_the_schema_command_prints_the_schema() -> None:
    res = CliRunner().invoke(main, ["scenario", "schema"])
    assert res.exit_code == 0
    assert json.loads(res.output) == scenario_json_schema()


def test_the_docs_command_writes_the_markdown(tmp_path: Path) -> None:
    out = tmp_path / "scenarios.md"
    res = CliRunner().invoke(main, ["scenario", "docs", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text(encoding="utf-8") == scenario_markdown()
    assert CliRunner().invoke(main, ["scenario", "docs"]).output == scenario_markdown()


def test_show_prints_an_embedded_scenario_and_refuses_other_names() -> None:
    res = CliRunner().invoke(main, ["scenario", "show", "default"])
    assert res.exit_code == 0 and res.output == scenario.embedded_text("default")
    res = CliRunner().invoke(main, ["scenario", "show", "nosuch"])
    assert res.exit_code == 125 and "not an embedded scenario" in res.output


@pytest.mark.parametrize("name", scenario.embedded_names())
def test_the_schema_accepts_every_embedded_scenario(name: str) -> None:
    # A third-party validator (an editor's) reads the exported schema as pvtime reads the file.
    jsonschema.Draft202012Validator(scenario_json_schema()).validate(tomllib.loads(scenario.embedded_text(name)))


@pytest.mark.parametrize("change, where", [
    ({"duration_ms": 0}, "duration_ms"),
    ({"host": [{"name": "h", "cpus": 2, "counter_hz": 2**32}]}, "counter_hz"),
    ({"vm": [{"name": "v", "host": "h", "guest": {"kind": "model", "busy_us": [1]}}]}, "busy_us"),
    ({"vm": [{"name": "v", "host": "h", "guest": {"kind": "qemu"}}]}, "guest"),
    ({"nosuch": 1}, "nosuch"),
])
def test_the_schema_refuses_what_pvtime_refuses(change: dict[str, Any], where: str) -> None:
    doc = {"name": "t", "duration_ms": 10, "host": [{"name": "h", "cpus": 2}], **change}
    with pytest.raises(scenario.ScenarioError):
        scenario.parse(json_to_toml(doc))
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.Draft202012Validator(scenario_json_schema()).validate(doc)
    assert where in str(info.value)


def json_to_toml(doc: dict[str, Any]) -> str:
    """The few shapes the cases above use, written as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = []
    for key, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"[[{key}]]", *(f"{k} = {value(x)}" for k, x in item.items())]
        else:
            lines.insert(0, f"{key} = {value(v)}")
    return "\n".join(lines) + "\n"
