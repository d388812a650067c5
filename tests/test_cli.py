"""The `pvtime` command's conventions: -h everywhere, help on every option, integers written as
25e6 or 25_000_000, packaged image names, exit statuses as `docker run` has them (with --json
telling them apart), one-line errors for network failures."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pvtime.cli import main
from pvtime.cli.exits import EXIT_TIME_LIMIT, EXIT_TOOL_ERROR, EXIT_USAGE, EXIT_VM_FAILED
from pvtime.cli.params import Integer, parse_int
from tests.cpu.asm import assemble
from tests.cpu.elfwriter import make_elf

ROOT = Path(__file__).resolve().parents[1]


def commands(group: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the tree, with the words that call it."""
    yield path, group
    if isinstance(group, click.Group):
        for name, sub in sorted(group.commands.items()):
            yield from commands(sub, (*path, name))


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"pvtime {' '.join(path)} {opt.opts[0]}" for path, cmd in commands() for opt in cmd.params
               if isinstance(opt, click.Option) and not (opt.help or "").strip()]
    assert missing == []


def test_every_command_takes_h() -> None:
    for path, _ in commands():
        res = CliRunner().invoke(main, [*path, "-h"])
        assert res.exit_code == 0 and res.output.startswith("Usage: "), (path, res.output)
        assert "None" not in res.output, (path, res.output)  # e.g. an unbounded range as [x<=None]


def test_every_integer_option_reads_e_notation_and_underscores() -> None:
    for path, cmd in commands():
        for opt in cmd.params:
            if isinstance(opt, click.Option) and not opt.is_flag and isinstance(opt.type, click.types.IntParamType):
                assert isinstance(opt.type, Integer), f"pvtime {' '.join(path)} {opt.opts[0]}"


@pytest.mark.parametrize("text, value", [
    ("25000000", 25_000_000), ("25_000_000", 25_000_000), ("25e6", 25_000_000), ("2.5e7", 25_000_000),
    ("25E6", 25_000_000), ("0x17d7840", 25_000_000), ("-3", -3), (" 7 ", 7), ("1e9", 10**9), ("010", 10),
])
def test_parse_int_reads_the_forms_people_write(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["2.5", "1e-3", "25MHz", "", "inf", "nan", "1__0"])
def test_parse_int_refuses_what_is_not_an_integer(text: str) -> None:
    with pytest.raises(ValueError, match="is not an integer"):
        parse_int(text)


def test_lpt_takes_25e6() -> None:
    plain = CliRunner().invoke(main, ["lpt", "--native", "25000000", "--pv", "1000000000", "--json"])
    short = CliRunner().invoke(main, ["lpt", "--native", "25e6", "--pv", "1_000_000_000", "--json"])
    assert plain.exit_code == short.exit_code == 0, short.output
    assert json.loads(short.stdout) == json.loads(plain.stdout)
    assert json.loads(short.stdout)["native_freq"] == 25_000_000
    bad = CliRunner().invoke(main, ["lpt", "--native", "2.5", "--pv", "1e9"])
    assert bad.exit_code == EXIT_USAGE and "'2.5' is not an integer" in bad.output
    over = CliRunner().invoke(main, ["lpt", "--native", "5e9", "--pv", "1e9"])
    assert over.exit_code == EXIT_USAGE and "--native" in over.output


def test_help_and_readme_document_the_exit_statuses() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    readme = (ROOT / "README.md").read_text()
    for code in (EXIT_USAGE, EXIT_TIME_LIMIT, EXIT_TOOL_ERROR, EXIT_VM_FAILED):
        assert f"  {code}  " in text, code
        assert f"| {code} |" in readme, code


def test_scenarios_json_lists_the_embedded_scenarios() -> None:
    from pvtime.sim import scenario

    res = CliRunner().invoke(main, ["scenarios", "--json"])
    assert res.exit_code == 0
    assert [s["name"] for s in json.loads(res.stdout)] == scenario.embedded_names()


# --- pvtime guest run: a guest's status passed through, pvtime's own apart ---------------------

def _exit_elf(tmp_path: Path, status: int) -> Path:
    """A guest that exits through semihosting (SYS_EXIT_EXTENDED, ApplicationExit) with `status`."""
    path = tmp_path / f"exit{status}.elf"
    path.write_bytes(make_elf(assemble(f"""
    adr x1, block
    mov x0, #0x20
    hlt #0xf000
    b .
    .balign 8
block: .quad 0x20026, {status}
""")))
    return path


@pytest.mark.parametrize("status", [0, 3, 125])
def test_guest_run_passes_the_guest_status_through(tmp_path: Path, status: int) -> None:
    image = _exit_elf(tmp_path, status)
    assert CliRunner().invoke(main, ["guest", "run", str(image)]).exit_code == status
    res = CliRunner().invoke(main, ["guest", "run", str(image), "--json"])
    answer = json.loads(res.stdout)
    assert res.exit_code == status
    # the guest's 125 is not pvtime's: --json says which
    assert answer["exit_code"] == status and answer["guest_exit_status"] == status and answer["error"] is None


def test_guest_run_load_error_is_pvtimes_125_not_a_guests_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an elf")
    res = CliRunner().invoke(main, ["guest", "run", str(bad), "--json"])
    assert res.exit_code == EXIT_TOOL_ERROR
    answer = json.loads(res.stdout)
    assert answer["exit_code"] == EXIT_TOOL_ERROR and answer["guest_exit_status"] is None
    assert "not an ELF file" in answer["error"]
    missing = CliRunner().invoke(main, ["guest", "run", str(tmp_path / "nope.elf")])
    assert missing.exit_code == EXIT_USAGE
    assert "no such file, and not a packaged image (conformance, minikernel)" in missing.output


def test_guest_run_takes_a_packaged_image_name() -> None:
    res = CliRunner().invoke(main, ["guest", "run", "minikernel", "--time-limit", "0.05", "--json"])
    answer = json.loads(res.stdout)
    assert "minikernel" in answer["console"] and answer["image"].endswith("minikernel.elf")
    # its default workload outlasts 50 virtual ms: the time limit, pvtime's 124 with no guest status
    assert res.exit_code == answer["exit_code"] == EXIT_TIME_LIMIT and answer["time_limit_reached"]


# --- pvtime migrate send: one line, no traceback, for any network failure ---------------------

def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and lines[-1].startswith("Error: "), res.stderr
    return lines[-1]


def _send(to: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvtime", "migrate", "send", "--to", to, "--run-ms", "1"],
                          capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_send_to_a_port_nobody_listens_on_is_one_line() -> None:
    port = _free_port()
    res = _send(f"127.0.0.1:{port}")
    assert res.returncode == EXIT_TOOL_ERROR
    assert _one_line_error(res) == f"Error: cannot reach 127.0.0.1:{port}: Connection refused"
    assert len(res.stderr.strip().splitlines()) == 1


def test_send_to_an_ipv6_address() -> None:
    res = _send(f"[::1]:{_free_port()}")  # refused, or no IPv6 here: a socket error either way
    assert res.returncode == EXIT_TOOL_ERROR and _one_line_error(res).startswith("Error: cannot reach [::1]:")


@pytest.mark.parametrize("to, message", [
    ("127.0.0.1:99999", "the port must be a number in 1..65535, not '99999'"),
    ("127.0.0.1", "is not HOST:PORT"),
    ("::1:4000", "write an IPv6 address in brackets"),
])
def test_send_to_a_bad_address_is_a_usage_error(to: str, message: str) -> None:
    res = _send(to)
    assert res.returncode == EXIT_USAGE and message in _one_line_error(res)


def test_send_to_a_name_no_resolver_takes_is_one_line() -> None:
    res = _send("a..b:4000")  # refused by the IDNA codec before any socket call
    assert res.returncode == EXIT_TOOL_ERROR and "cannot reach a..b:4000" in _one_line_error(res)


def test_python_m_pvtime_is_the_command() -> None:
    res = subprocess.run([sys.executable, "-m", "pvtime", "-h"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("Usage: pvtime ")
