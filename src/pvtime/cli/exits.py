"""How `pvtime` ends: exit statuses as `docker run` has them, and the --json answer that tells
them apart.

A guest's own exit status is passed through, so pvtime's statuses sit where a guest rarely
puts its own: 2 for a usage error (click's), 124 to 126 for pvtime's. Where a guest's status
could be mistaken for one of them, `--json` carries the unambiguous answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import click

EXIT_OK = 0
EXIT_DIFFERENT = 1  # `pvtime compare`: a difference beyond the tolerance (as diff(1) answers)
EXIT_USAGE = 2  # click.UsageError's: an unknown option, a value out of range, a missing argument
EXIT_TIME_LIMIT = 124  # `pvtime guest run`: the time limit came first (as timeout(1) answers)
EXIT_TOOL_ERROR = 125  # pvtime could not do what it was asked (as `docker run` answers for itself)
EXIT_VM_FAILED = 126  # `pvtime guest run`: the VM stopped without an exit status (a guest fault)

# `pvtime --help`'s epilog (\b keeps click from re-wrapping the lines).
EPILOG = f"""\b
Exit status:
  {EXIT_OK:>3}  done (pvtime run: the results are written, whatever the guests' statuses)
  {EXIT_DIFFERENT:>3}  compare: a difference beyond the tolerance
  {EXIT_USAGE:>3}  usage error: an unknown option, a missing or bad value
  {EXIT_TIME_LIMIT:>3}  guest run: the time limit came before the guest exited
  {EXIT_TOOL_ERROR:>3}  pvtime failed: a scenario or image it cannot load, a folder it may not write, a network failure;
       sweep: a run failed (the others' results are written)
  {EXIT_VM_FAILED:>3}  guest run: the VM stopped without an exit status (a guest fault)
    N  guest run: the guest's own semihosting exit status
--json (run, sweep, guest run, compare, lpt, scenarios) prints the answer on stdout, with exit_code,
guest_exit_status and error in it, which tells a guest's 125 from pvtime's (a usage
error is only on stderr). Integers may be written 25000000, 25_000_000 or 25e6.
Every command takes -h / --help."""


class ToolError(click.ClickException):
    """pvtime could not do what it was asked: one line on stderr, exit status 125."""

    exit_code = EXIT_TOOL_ERROR


@dataclass
class Answer:
    """What a command prints with --json: how it ended, and what it has to say."""

    exit_code: int = EXIT_OK
    error: str | None = None  # pvtime's own error (exit status 125), None otherwise
    guest_exit_status: int | None = None  # the guest's semihosting status (0..255, as QEMU's semihosting gives it)
    data: dict[str, Any] = field(default_factory=dict)  # the command's own keys

    def to_json(self) -> str:
        doc = {**self.data, **{k: v for k, v in asdict(self).items() if k != "data"}}
        return json.dumps(doc, sort_keys=True)


def fail_json(err: click.ClickException) -> None:
    """Print `err` as the --json answer on stdout (and on stderr as usual), then exit with its status."""
    click.echo(Answer(exit_code=err.exit_code, error=err.format_message()).to_json())
    err.show()
    raise SystemExit(err.exit_code)
