"""The command line's own parameter types: integers as people write them, HOST:PORT, guest images,
scenario overrides (PATH=VALUE) and seed lists (1-32).

Every integer option of `pvtime` uses `Integer`, so `--native 25e6`, `--native 25_000_000` and
`--native 25000000` mean the same everywhere.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click


def parse_int(text: str) -> int:
    """An integer written as Python writes it (25000000, 25_000_000, 0x17d7840) or in E notation
    with an integral value (25e6, 2.5e7); ValueError naming the text otherwise."""
    s = text.strip()
    try:
        return int(s, 0) if s.lstrip("+-")[:2].lower() in ("0x", "0o", "0b") else int(s)
    except ValueError:
        pass
    try:
        float(s)  # the syntax check: Decimal is lax with underscores (1__0)
        value: Decimal | None = Decimal(s)
    except (ValueError, InvalidOperation):
        value = None
    if value is None or not value.is_finite() or value != value.to_integral_value():
        raise ValueError(f"{text!r} is not an integer (write e.g. 25000000, 25_000_000 or 25e6)")
    return int(value)


class Integer(click.IntRange):
    """An integer option, optionally bounded (inclusive), that reads `parse_int`'s forms."""

    name = "integer"

    def _describe_range(self) -> str:  # click's help suffix: none for an unbounded integer ("x<=None")
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                value = parse_int(value)
            except ValueError as err:
                self.fail(str(err), param, ctx)
        return super().convert(value, param, ctx)


class HostPort(click.ParamType):
    """HOST:PORT, with an IPv6 address in brackets ([::1]:4000); the port in 1..65535."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value)
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
            if ":" in host:
                self.fail(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:4000", param, ctx)
        if not sep or not host or not port:
            self.fail(f"{text!r} is not HOST:PORT", param, ctx)
        try:
            number = parse_int(port)
        except ValueError:
            number = -1
        if not 1 <= number <= 65535:
            self.fail(f"{text!r}: the port must be a number in 1..65535, not {port!r}", param, ctx)
        return host, number


class GuestImage(click.ParamType):
    """An AArch64 ELF: a file, or the name of an image shipped in the package (minikernel)."""

    name = "image"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path):
            return value
        path = Path(value)
        if path.is_file():
            return path
        from pvtime.vmm.images import PACKAGE_IMAGES, packaged_image

        if value in PACKAGE_IMAGES:
            return packaged_image(value)
        if path.is_dir():
            self.fail(f"{value}: a folder, not an ELF file", param, ctx)
        self.fail(f"{value}: no such file, and not a packaged image ({', '.join(PACKAGE_IMAGES)})", param, ctx)


class Setting(click.ParamType):
    """A scenario override, PATH=VALUE (`pvtime.sim.overrides`); with `many`, PATH=V1,V2,... gives
    one override per value (a tuple)."""

    name = "path=value"

    def __init__(self, *, many: bool = False) -> None:
        self.many = many

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from pvtime.sim.overrides import Override, OverrideSyntaxError, parse_assignment

        if isinstance(value, Override | tuple):
            return value
        try:
            found = parse_assignment(str(value), many=self.many)
        except OverrideSyntaxError as err:
            self.fail(str(err), param, ctx)
        if self.many:
            texts = [o.text for o in found]
            twice = sorted({t for t in texts if texts.count(t) > 1})
            if twice:
                self.fail(f"{value!r}: {', '.join(twice)} given twice", param, ctx)
            return tuple(found)
        return found[0]


MAX_SEEDS = 1_000_000


class Seeds(click.ParamType):
    """Seeds as a list of integers and ranges: `1-32`, `1,5,9`, `1-4,10`; each integer read by
    `parse_int`, each seed at most once."""

    name = "seeds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        seeds: list[int] = []
        for item in str(value).split(","):
            # a range is LOW-HIGH; a lone negative seed (-3) has no LOW
            lo_text, dash, hi_text = item.strip().partition("-") if not item.strip().startswith("-") \
                else (item.strip(), "", "")
            try:
                lo = parse_int(lo_text)
                hi = parse_int(hi_text) if dash else lo
            except ValueError as err:
                self.fail(f"{value!r}: {err}; seeds are written 1-32 or 1,5,9", param, ctx)
            if hi < lo:
                self.fail(f"{value!r}: the range {item.strip()} is empty", param, ctx)
            if len(seeds) + hi - lo + 1 > MAX_SEEDS:
                self.fail(f"{value!r}: more than {MAX_SEEDS:,} seeds", param, ctx)
            seeds += range(lo, hi + 1)
        twice = sorted(s for s, n in Counter(seeds).items() if n > 1)
        if twice:
            self.fail(f"{value!r}: seed {', '.join(map(str, twice[:5]))} given twice", param, ctx)
        return tuple(seeds)
