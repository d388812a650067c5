"""Overrides of scenario fields from the command line: `--set PATH=VALUE` (and `--seed`, `--duration`).

A path addresses a field as the file nests it, with an element of a `[[table]]` array named by its
`name` (or its index): `vm.web.vcpus`, `host.host0.sched.policy`, `noise.neighbour.duty`,
`migration.0.at_ms` (also `migration[0].at_ms`, the form errors print), `vm.web.pin[1]`. A value
is a TOML value (`4`, `25_000_000`, `[0, 1]`, `{ period_us = 100, burst_us = 10 }`, `true`), or
else a bare word taken as a string (`policy=cfs`); an integral E-notation number (`25e6`) is an
integer, as everywhere on pvtime's command line.

Overrides are applied to the parsed TOML data before validation (`pvtime.sim.scenario.parse`),
so every check of a scenario file applies to them, and an error in an overridden field names the
option it came from. `pvtime run` takes one value per `--set`; `pvtime sweep` takes several,
separated by commas outside brackets and quotes (`vm.web.vcpus=2,4,8`, `vm.web.pin=[0,1],[2,3]`).
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pvtime.sim.toml_lines import Path, dotted

_SEGMENT = re.compile(r'([A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')((?:\[\s*\d+\s*\])*)')


class OverrideSyntaxError(ValueError):
    """An override written wrongly: no `=`, a path or value that does not parse."""


@dataclass(frozen=True)
class Override:
    """One scenario field set from the command line."""

    path: str  # as written: vm.web.vcpus
    value: Any  # the TOML value
    text: str  # the value as written
    origin: str  # the option that gave it, as an error names it: --set vm.web.vcpus=4, --seed 3
    parts: tuple[str | int, ...] = field(default=(), compare=False, repr=False)  # the path, parsed

    def __post_init__(self) -> None:
        if not self.parts:
            object.__setattr__(self, "parts", parse_path(self.path))

    @classmethod
    def of(cls, path: str, value: Any, origin: str) -> Override:
        """An override of `path` with an already typed value (`--seed 3`: `of("seed", 3, "--seed 3")`)."""
        return cls(path, value, str(value), origin)


def parse_path(path: str) -> tuple[str | int, ...]:
    """`vm.web.pin[1]` -> ("vm", "web", "pin", 1); OverrideSyntaxError for what is not a path."""
    parts: list[str | int] = []
    pos = 0
    text = path.strip()
    while True:
        m = _SEGMENT.match(text, pos)
        if m is None:
            raise OverrideSyntaxError(f"{path!r} is not a field path (write e.g. vm.web.vcpus or host.host0.cpus)")
        key = m.group(1)
        parts.append(key[1:-1] if key[:1] in "\"'" else key)
        parts += [int(i) for i in re.findall(r"\d+", m.group(2))]
        pos = m.end()
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            raise OverrideSyntaxError(f"{path!r} is not a field path (write e.g. vm.web.vcpus or host.host0.cpus)")
        pos += 1


def parse_value(text: str) -> Any:
    """A value as TOML reads it; a bare word is a string; 25e6 is an integer."""
    s = text.strip()
    if not s:
        raise OverrideSyntaxError("no value after '='")
    try:
        doc = tomllib.loads(f"v = {s}")
    except tomllib.TOMLDecodeError as exc:
        if s[0] in "[{\"'" or "\n" in s:
            raise OverrideSyntaxError(f"{s!r} is not a TOML value ({exc})") from None
        return s
    if set(doc) != {"v"}:
        raise OverrideSyntaxError(f"{s!r} is more than one value")
    value = doc["v"]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and "e" in s.lower() \
            and "." not in s:
        return int(value)
    return value


def split_values(text: str) -> list[str]:
    """Split at the commas outside brackets, braces and quotes: `[0,1],[2,3]` -> two values."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def parse_assignment(text: str, *, option: str = "--set", many: bool = False) -> list[Override]:
    """`PATH=VALUE` (with `many`, `PATH=V1,V2,...`): one Override per value."""
    path, sep, rest = text.partition("=")
    if not sep or not path.strip():
        raise OverrideSyntaxError(f"{text!r}: write PATH=VALUE, e.g. vm.web.vcpus=4")
    path = path.strip()
    parse_path(path)
    texts = split_values(rest) if many else [rest]
    if not many and len(split_values(rest)) > 1 and not _is_value(rest):
        raise OverrideSyntaxError(f"{text!r}: one value per {option} (several values are for pvtime sweep; "
                                  "quote a string that holds a comma)")
    out = []
    for t in texts:
        t = t.strip()
        out.append(Override(path, parse_value(t), t, f"{option} {path}={t}"))
    return out


def _is_value(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text.strip()}")
    except tomllib.TOMLDecodeError:
        return False
    return True


class OverrideError(ValueError):
    """An override whose path the scenario does not have: `origin`, the field and why."""

    def __init__(self, origin: str, field: str, message: str) -> None:
        super().__init__(f"{origin}: {field}: {message}")
        self.origin, self.field, self.message = origin, field, message


def apply(data: dict[str, Any], overrides: Sequence[Override], *, arrays: frozenset[str] = frozenset()
          ) -> tuple[dict[str, Any], list[tuple[Path, Override]]]:
    """A copy of the TOML `data` with `overrides` set in order, and where each one landed (its
    path with array elements as indexes, as validation errors name fields: ("vm", 0, "vcpus")).

    `arrays` names the top-level arrays of tables the file may leave out (a path into one the
    file does not have names no element). Raises OverrideError for a path the data cannot take."""
    out = copy.deepcopy(data)
    placed: list[tuple[Path, Override]] = []
    for o in overrides:
        loc = _place(out, o, arrays)
        twin = next((p for where, p in placed if where == loc), None)
        if twin is not None:
            raise OverrideError(o.origin, dotted(loc), f"also set by {twin.origin}")
        placed.append((loc, o))
    return out, placed


def _place(data: dict[str, Any], o: Override, arrays: frozenset[str]) -> Path:
    cur: Any = data
    loc: list[str | int] = []
    last = len(o.parts) - 1
    for i, part in enumerate(o.parts):
        if isinstance(cur, dict):
            if isinstance(part, int):
                raise OverrideError(o.origin, dotted(tuple(loc)), f"a table, not a list: no element [{part}]")
            if i == 0 and part in arrays and i == last:
                raise OverrideError(o.origin, part, f"name one: {part}.NAME.FIELD (or {part}[INDEX].FIELD)")
            if i == 0 and part in arrays and part not in cur:
                raise OverrideError(o.origin, part, f"the scenario has no {part}")
            if i == last:
                cur[part] = o.value
                return (*loc, part)
            if part not in cur:
                cur[part] = {}  # a table the file leaves out, such as [host.sched]
            cur = cur[part]
        elif isinstance(cur, list):
            index = _select(cur, part, o, tuple(loc))
            if i == last:
                cur[index] = o.value
                return (*loc, index)
            cur = cur[index]
            part = index
        else:
            raise OverrideError(o.origin, dotted(tuple(loc)), f"is {cur!r}, not a table: it has no field {part!r}")
        loc.append(part)
    raise AssertionError("an empty path")  # parse_path gives at least one part


def _select(items: list[Any], part: str | int, o: Override, loc: Path) -> int:
    """The element of an array that `part` names: by its `name`, else by index."""
    where = dotted(loc)
    if isinstance(part, str):
        names = [e.get("name") if isinstance(e, dict) else None for e in items]
        if part in names:
            return names.index(part)
        if not part.isdigit():
            known = ", ".join(str(n) for n in names if n is not None) or "none"
            raise OverrideError(o.origin, where, f"no element named {part!r} (names: {known})")
        part = int(part)
    if not 0 <= part < len(items):
        raise OverrideError(o.origin, where, f"no element [{part}] (it has {len(items)})")
    return part


def blame(loc: Path, placed: Sequence[tuple[Path, Override]]) -> Override | None:
    """The override an error at `loc` is in: the most specific one whose field holds `loc`."""
    best: tuple[Path, Override] | None = None
    for where, o in placed:
        if loc[:len(where)] == where and (best is None or len(where) >= len(best[0])):
            best = (where, o)
    return None if best is None else best[1]
