"""Progress bars that a --quiet flag (or a non-interactive CI log) can silence in one place."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_QUIET = os.environ.get("SUBLIM_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "tqdm[T]":
    """tqdm with the project's quiet switch; use exactly like tqdm."""
    kwargs.setdefault("disable", _QUIET)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def log(msg: str) -> None:
    """A status line that respects --quiet (results themselves are always printed)."""
    if not _QUIET:
        print(msg, flush=True)
