"""Figures are for people, who look at them: matplotlib's layout warnings and log lines are not for
the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_library_warnings() -> Iterator[None]:
    """Silence matplotlib's log lines and every warning (its layout warnings, and the announcement
    that it builds its font cache) while the block runs."""
    import logging
    import warnings

    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
