"""The figures drawn in processes of their own, one per figure, started before the run: importing
matplotlib (about half a second) then overlaps the simulation, and the figures are drawn at the
same time as each other and as the other results files. `pvtime run` uses them; drawn here or in
the run's own process (`pvtime.report.figures`), a figure has the same bytes.

Each process reads one pickled job from stdin, the figure's name, its path and its
`figures.FigureData` (nothing: nothing to draw), writes the PNG, and answers on stdout with a
pickled None or the exception it raised.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pvtime.report.figure_data import FigureData, figure_data

if TYPE_CHECKING:
    from pvtime.sim.results import RunResult

FIGURES = ("steal", "occupancy")  # each written to <name>.png
_WAIT_S = 10.0  # for a process told there is nothing to draw to end, before it is killed


def worth_it() -> bool:
    """Whether figure processes would shorten the run: only with a CPU to spare for them. On a
    busy machine they slow the run instead (measured on 2 CPUs at a load of 4: the simulation
    shares its CPU with them, and drawing is no sooner done)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus >= 2 and os.getloadavg()[0] <= cpus - 1


class FigureError(RuntimeError):
    """A figure process failed without an exception to pass on (it died, or its answer was unreadable)."""


class FigureProcesses:
    """One process per figure, importing matplotlib until the run's result arrives (`send`); use as
    a context manager, so that they end however the run does."""

    def __init__(self) -> None:
        src = str(Path(__file__).resolve().parents[2])  # the pvtime this process runs, first on the path
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=src if not path else os.pathsep.join((src, path)))
        self._procs = {name: subprocess.Popen([sys.executable, "-m", "pvtime.report.figure_process"], env=env,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL)
                       for name in FIGURES}
        self._sent = False

    def send(self, result: RunResult, out: Path) -> list[Path]:
        """Have each process draw its figure of `result` into the folder `out`; the files' paths.
        `wait` says when they are written."""
        paths = []
        data = pickle.dumps(figure_data(result), protocol=pickle.HIGHEST_PROTOCOL)
        for name, proc in self._procs.items():
            path = out / f"{name}.png"
            _send(proc, pickle.dumps(name) + pickle.dumps(str(path)) + data)
            paths.append(path)
        self._sent = True
        return paths

    def wait(self) -> None:
        """Wait until every figure is written; raise the first process's exception, if any."""
        for name, proc in self._procs.items():
            assert proc.stdout is not None
            try:
                answer = pickle.load(proc.stdout)
            except Exception:  # noqa: BLE001 - died before answering: its status says what happened
                proc.wait()
                raise FigureError(f"the {name} figure's process ended with status {proc.returncode} "
                                  "without an answer") from None
            proc.wait()
            if answer is not None:
                raise answer

    @property
    def exit_statuses(self) -> list[int | None]:
        """Each process's exit status; None while it runs."""
        return [proc.poll() for proc in self._procs.values()]

    def __enter__(self) -> FigureProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs.values():
            if not self._sent:
                _send(proc, b"")  # end of input: nothing to draw
            try:
                proc.wait(timeout=_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    stdin = proc.stdin
    assert stdin is not None
    try:
        stdin.write(data)
        stdin.close()
    except (BrokenPipeError, ValueError):  # it already died, or its stdin was closed: `wait` says so
        pass


def _draw(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The figure process: import matplotlib, then draw the figure the job names, if any."""
    from pvtime.report.quiet import no_library_warnings

    with no_library_warnings():
        from pvtime.report import figures

        try:
            name, path = pickle.load(stdin), pickle.load(stdin)
        except EOFError:
            return  # nothing to draw
        answer: BaseException | None = None
        try:
            result = pickle.load(stdin)
            draw: Callable[[FigureData, Path], None] = {"steal": figures.steal_figure,
                                                       "occupancy": figures.occupancy_figure}[name]
            draw(result, Path(path))
        except Exception as exc:  # noqa: BLE001 - passed on to the run's process
            answer = exc
    try:
        stdout.write(pickle.dumps(answer))
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        stdout.write(pickle.dumps(FigureError(f"the {name} figure: {answer!r}")))
    stdout.flush()


if __name__ == "__main__":
    _draw(sys.stdin.buffer, sys.stdout.buffer)
