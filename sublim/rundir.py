"""Run directories: configs beside results, atomic writes, nothing half-written.

Every result file is written to a temporary name in the same directory and renamed into place
(os.replace is atomic on POSIX), so an interrupted run leaves either the old file or the new one,
never a truncated one. A run directory always holds `config.json` (the resolved config) next to
whatever the run produced.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sublim.errors import SublimError


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


def prepare_run_dir(path: str | os.PathLike, config: Any, *, exist_ok: bool = True) -> Path:
    """Create (or reuse) a run directory, check it is writable, and save the resolved config.

    Raises SublimError with a one-line message when the directory cannot be created or written,
    before any work is done (so a long run never dies at its last step on a bad path).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except FileExistsError:
        raise SublimError(f"{path}: run directory already exists") from None
    except OSError as e:
        raise SublimError(f"{path}: output directory is not writable ({e.strerror or e})") from None
    atomic_write_json(path / "config.json", {"config": _to_jsonable(config), "environment": environment_info()})
    return path


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120, close: bool = True, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as PNG atomically (a killed run never leaves half an image)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig_kwargs)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
