"""Where each key of a TOML document sits: (path) -> line number, for error messages.

tomllib returns plain data without positions, so validation errors (which name a path such as
`vm[1].guest.busy_us`) are mapped back to lines by this small scanner. It understands what
scenario files use: `[table]`, `[[array.of.tables]]`, `key = value` with dotted or quoted keys,
inline tables on one line and arrays over several lines.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_KEY = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED = re.compile(rf"\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY})\s*=")


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(_KEY, dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _strip_comment(line: str) -> str:
    out, quote = [], ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def key_lines(text: str) -> dict[Path, int]:
    """Map every table and key path of `text` to its 1-based line number."""
    lines: dict[Path, int] = {}
    arrays: dict[tuple[str, ...], int] = {}  # array-of-tables name -> index of its last element
    current: Path = ()
    depth = 0  # open brackets of a multi-line array value
    for no, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        if not line:
            continue
        header = re.fullmatch(r"\[\[\s*(.+?)\s*\]\]|\[\s*(.+?)\s*\]", line)
        if header:
            names = _split_key(header.group(1) or header.group(2))
            if header.group(1):
                arrays[tuple(names)] = arrays.get(tuple(names), -1) + 1
            current = _resolve(names, arrays)
            _add(lines, current, no)
            continue
        m = _DOTTED.match(line)
        if not m:
            continue
        path = current + tuple(_split_key(m.group(1)))
        _add(lines, path, no)
        value = line[m.end():].strip()
        if value.startswith("{"):
            for k in _INLINE_KEY.findall(value):
                lines.setdefault(path + tuple(_split_key(k)), no)
        elif value.startswith("["):
            depth = value.count("[") - value.count("]")
    return lines


def _add(lines: dict[Path, int], path: Path, no: int) -> None:
    """Record `path` and each of its prefixes (first mention wins): `[extra.sub]` and
    `[[extra]]` put `extra` on their line, so an unknown `extra` is reported there."""
    for cut in range(1, len(path) + 1):
        lines.setdefault(path[:cut], no)


def _resolve(names: list[str], arrays: dict[tuple[str, ...], int]) -> Path:
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        index = arrays.get(tuple(names[: i + 1]))
        if index is not None:
            path.append(index)
    return tuple(path)


def last_line(text: str) -> int:
    """The last line with content: where tomllib's "at end of document" errors are reported."""
    numbered = list(enumerate(text.splitlines(), start=1))
    return next((no for no, line in reversed(numbered) if line.strip()), 1)


def line_of(lines: dict[Path, int], loc: Path) -> int | None:
    """The line of the longest prefix of `loc` that the document has (None if none)."""
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def dotted(loc: Path) -> str:
    """A path as a reader writes it: vm[1].guest.busy_us."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
