"""Progress bars that a --quiet flag (or a non-interactive CI log) can silence in one place.

In a terminal a bar redraws itself in place. Anywhere else (a log file, a pipe, CI) a redraw is a
carriage return the file keeps, so `make toy > log` used to hold hundreds of bars joined by '\\r'.
There the bar prints a plain line at about every 10% of its total (or every 60 s when the total is
unknown), plus its final state.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_QUIET = os.environ.get("SUBLIM_QUIET", "") not in ("", "0")
LOG_STEPS = 10  # lines per bar in a non-terminal
LOG_INTERVAL_S = 60.0  # a bar without a total: one line at most this often
LOG_FORMAT = "{l_bar}{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"  # l_bar: "desc: NN%|"


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


class _LineWriter:
    """A file for tqdm that turns each redraw into one line: tqdm writes '\\r' + bar, and clears a
    closed bar with '\\r' + spaces, which here writes nothing."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _log_kwargs(iterable, kwargs: dict) -> dict:
    """tqdm options for a non-terminal: redraw at ~10% steps, every update counted (miniters is
    then exact, not tqdm's adaptive guess), the final state kept on its own line."""
    total = kwargs.get("total")
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    out = {"file": _LineWriter(kwargs.get("file") or sys.stderr), "leave": True,
           "dynamic_ncols": False, "bar_format": LOG_FORMAT}
    if total:
        out.update(miniters=max(1, math.ceil((total - kwargs.get("initial", 0)) / LOG_STEPS)),
                   mininterval=0, maxinterval=float("inf"))
    else:
        out.update(mininterval=LOG_INTERVAL_S, maxinterval=float("inf"))
    return out


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "tqdm[T]":
    """tqdm with the project's quiet switch; use exactly like tqdm."""
    kwargs.setdefault("disable", _QUIET)
    if not kwargs["disable"] and not _is_terminal(kwargs.get("file") or sys.stderr):
        kwargs.update(_log_kwargs(iterable, kwargs))
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def log(msg: str) -> None:
    """A status line that respects --quiet (results themselves are always printed)."""
    if not _QUIET:
        print(msg, flush=True)
