"""Test-wide setup.

TRITON_INTERPRET must be set before triton is first imported; without a GPU we default it to 1 so
the Triton kernels run in the interpreter on tiny shapes. Tests marked `gpu` skip without CUDA.

`cluster`: a real local Ray cluster, one per test module that asks for it (the toy sweep's and
distill's Ray tests), a `ray start --head` on the loopback address with 2 CPUs, stopped at the end
even on failure. It is stopped by killing its own processes by PID (its process group, and the
workers its raylet forked, which Ray puts in groups of their own), not by `ray stop --force`: that
command kills every Ray process of this user on the machine, including clusters this test did not
start (another checkout's test run, a user's own cluster). The cluster uses token authentication
with a token made for the module, passed through the environment, so the tests neither depend on
nor write ~/.ray/auth_token.
"""

import os
import secrets
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, importable from every area folder

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SUBLIM_QUIET", "1")
# `make test` runs the suite on 2 pytest-xdist workers (one per core of the CI machine). Each worker,
# and every subprocess it starts (CLIs, Ray clusters, notebook kernels), uses one intra-op thread:
# torch's default of one per core would put 4 spinning threads on 2 cores. No test depends on the
# thread count: every tolerance is bounded for any summation order, and every bit-for-bit comparison
# is between two computations of the same process settings.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_auth():
    """Token auth for the cluster, this process's drivers and the subprocess drivers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ray_auth):
    """(address, process group id) of a 2-CPU Ray head on 127.0.0.1."""
    from helpers import RAY_BIN, free_port, stop_cluster

    pytest.importorskip("ray")
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")  # private: sessions, logs, sockets of this cluster only
    cmd = [str(RAY_BIN), "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--include-dashboard=false",
           "--include-log-monitor=false", "--disable-usage-stats"]  # nothing to watch: drivers log nothing
    # A new session: every process of the cluster (GCS, raylet, workers) inherits this group.
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out.decode()[-2000:]
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        stop_cluster(proc)
