"""Helpers shared by the tests (tests/conftest.py puts this folder on sys.path)."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root


def one_line_error(capsys, needle: str = "") -> str:
    """The project's promise for bad input: exactly one line on stderr, `sublim: error: ...`,
    naming the problem, and no traceback. Returns the line."""
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sublim: error:") and needle in err, err
    assert "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- a local Ray cluster
# (the `cluster` fixture of tests/conftest.py; the toy sweep's and distill's Ray tests share it)
RAY_BIN = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> list[tuple[int, int, int, str]]:
    """(pid, pgid, ppid, title) of every process."""
    ps = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in ps.splitlines()]
    return [(int(r[0]), int(r[1]), int(r[2]), r[3] if len(r) > 3 else "") for r in rows]


def cluster_pids(pgid: int) -> list[tuple[int, str]]:
    """The cluster's processes: its group (GCS, raylet, agents) and their children (workers)."""
    table = processes()
    group = {pid for pid, g, _, _ in table if g == pgid}
    return [(pid, title) for pid, g, ppid, title in table if pid in group or ppid in group]


def stop_cluster(proc) -> None:
    for pid, _ in cluster_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
