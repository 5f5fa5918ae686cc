"""Run directories: configs beside results, atomic writes, nothing half-written.

Every result file is written to a temporary name in the same directory and renamed into place
(os.replace is atomic on POSIX), so an interrupted run leaves either the old file or the new one,
never a truncated one. A run directory always holds `config.json` (the resolved config) next to
whatever the run produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sublim.errors import ConfigError, SublimError


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()  # numpy / torch scalars
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SublimError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise SublimError(f"{path}: not valid JSON ({e})") from None


def environment_info() -> dict:
    """What produced a result: versions, host, git commit. Saved beside every config."""
    info = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        if commit:
            info["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the config values that differ (a few, for a one-line message)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "config"]


def check_run_config(path: str | os.PathLike, config: Any) -> None:
    """Refuse, before anything is touched, a directory whose config.json describes another run."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return
    old = read_json(cfg_file).get("config")
    new = json.loads(json.dumps(_to_jsonable(config)))
    if old != new:
        diff = _config_diff(old, new)
        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ConfigError(f"{path}: holds a run with a different config (differs in {shown}); "
                          "use another directory, or rerun with the same settings to resume")


@contextlib.contextmanager
def run_dir_lock(path: str | os.PathLike):
    """Hold an exclusive lock on a run directory for the life of the block.

    flock on `.lock` inside the directory: released by the kernel when the process dies (kill -9
    included), so a stale lock never blocks a rerun; a second live process gets a one-line error.
    """
    path = Path(path)
    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SublimError(f"{path}: cannot create the run directory lock ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise SublimError(f"{path}: another sublim process (pid {holder}) is using this run "
                                  "directory; wait for it or use another directory") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def claim_run_dir(path: str | os.PathLike, config: Any):
    """The guarded way into a run directory: validate first, then `with claim_run_dir(out, cfg):`.

    Refuses a directory holding another config (nothing written), creates the directory, checks it
    is writable, takes the lock, and writes config.json only when the directory has none: the
    config is written once and never rewritten by a rerun, which resumes instead.
    """
    check_run_config(path, config)
    path = _make_writable_dir(Path(path))
    with run_dir_lock(path):
        check_run_config(path, config)  # another process may have claimed it meanwhile
        if not (path / "config.json").exists():
            atomic_write_json(path / "config.json",
                              {"config": _to_jsonable(config), "environment": environment_info()})
        yield path


def _make_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SublimError(f"{path}: output directory is not writable ({e.strerror or e})") from None
    return path


def figure_png(fig, *, dpi: int = 120, close: bool = True, **savefig_kwargs) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards unless close=False)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig_kwargs)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120, close: bool = True, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as PNG atomically (a killed run never leaves half an image)."""
    return atomic_write_bytes(path, figure_png(fig, dpi=dpi, close=close, **savefig_kwargs))
