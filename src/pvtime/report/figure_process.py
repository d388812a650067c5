"""The figures drawn in a process of their own, forked before the run: importing matplotlib (about
half a second) then overlaps the simulation, and the figures are drawn while the run's process
writes the other results files, the two figures at the same time (the process forks once more
to draw the second). A fork shares every module imported by then, so this costs the machine no
more work than drawing in the run's process: only the order changes. `pvtime run`
uses it where processes can fork; drawn here or in the run's process (`pvtime.report.figures`), a
figure has the same bytes.

The process receives one job, (`FigureData`, results folder) or None (nothing to draw), writes
the PNGs, and answers None or the exception it raised.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from pvtime.report.figure_data import FigureData, figure_data

if TYPE_CHECKING:
    from multiprocessing.context import ForkProcess

    from pvtime.sim.results import RunResult

FIGURES = ("steal.png", "occupancy.png")
_WAIT_S = 10.0  # for a process told there is nothing to draw to end, before it is killed


class FigureError(RuntimeError):
    """The figure process failed without an exception to pass on (it died, or its answer did not
    unpickle)."""


def can_fork() -> bool:
    """Whether this platform forks processes (`FigureProcess` needs it)."""
    return "fork" in multiprocessing.get_all_start_methods()


class FigureProcess:
    """A process importing matplotlib until the run's result arrives (`send`); use as a context
    manager, so that it ends however the run does."""

    def __init__(self) -> None:
        self._conn, child = multiprocessing.get_context("fork").Pipe()
        self._proc: ForkProcess = multiprocessing.get_context("fork").Process(
            target=_draw, args=(child,), name="pvtime figures")  # not a daemon: it forks
        self._proc.start()
        child.close()
        self._sent = False

    def send(self, result: RunResult, out: Path) -> list[Path]:
        """Have the process draw the figures of `result` into the folder `out`; the files' paths.
        `wait` says when they are written."""
        self._conn.send((figure_data(result), out))
        self._sent = True
        return [out / name for name in FIGURES]

    def wait(self) -> None:
        """Wait until the figures are written; raise the process's exception, if any."""
        try:
            answer = self._conn.recv()
        except Exception:  # noqa: BLE001 - it died before answering: its status says what happened
            self._proc.join()
            raise FigureError(f"the figure process ended with status {self._proc.exitcode} without "
                              "an answer") from None
        if answer is not None:
            raise answer

    @property
    def exit_status(self) -> int | None:
        """The process's exit status; None while it runs."""
        return self._proc.exitcode

    def __enter__(self) -> FigureProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._sent:
            try:
                self._conn.send(None)  # nothing to draw
            except OSError:  # it already died
                pass
        self._conn.close()
        self._proc.join(_WAIT_S)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()


def _draw(conn: Connection) -> None:
    """The figure process: import matplotlib, then draw the figures of the job, if one comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: this one ends with it
    from pvtime.report.quiet import no_library_warnings

    with no_library_warnings():
        from pvtime.report import figures

        try:
            job = conn.recv()
        except EOFError:  # the run ended
            return
        if job is None:
            return
        data, out = job
        # the occupancy figure in a fork of this process, at the same time as the steal figure here
        theirs, mine = multiprocessing.get_context("fork").Pipe(duplex=False)
        other = multiprocessing.get_context("fork").Process(
            target=_draw_one, args=(figures.occupancy_figure, data, out / "occupancy.png", mine))
        other.start()
        mine.close()
        answer = _attempt(figures.steal_figure, data, out / "steal.png")
        try:
            answer = theirs.recv() if answer is None else answer
        except EOFError:
            answer = FigureError("the occupancy figure's process ended without an answer")
        other.join()
    _answer(conn, answer)


def _draw_one(draw: Callable[[FigureData, Path], None], data: FigureData, path: Path, conn: Connection) -> None:
    _answer(conn, _attempt(draw, data, path))


def _attempt(draw: Callable[[FigureData, Path], None], data: FigureData, path: Path) -> BaseException | None:
    """Draw; the exception raised, if any."""
    try:
        draw(data, path)
    except Exception as exc:  # noqa: BLE001 - passed on to the run's process
        return exc
    return None


def _answer(conn: Connection, answer: BaseException | None) -> None:
    try:
        try:
            conn.send(answer)
        except OSError:
            raise
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            conn.send(FigureError(f"drawing the figures: {answer!r}"))
    except OSError:  # the run no longer waits for the answer (it failed on its side)
        pass
