"""Test-wide setup.

TRITON_INTERPRET must be set before triton is first imported; without a GPU we default it to 1 so
the Triton kernels run in the interpreter on tiny shapes. Tests marked `gpu` skip without CUDA.

`cluster`: a real local Ray cluster, one per test process (pytest-xdist worker) shared by the test
modules that ask for it (the toy sweep's, toy claims' and distill's Ray tests): a `ray start --head`
on the loopback address with 2 CPUs, started at the first such module (~16 s) and stopped at the end
of the session even on failure. No test stops or restarts the cluster: the killed-driver and
killed-worker tests kill a driver or one task worker, which Ray recovers from, as it would on a
user's cluster. It is stopped by killing its own processes by PID (its process group, and the
workers its raylet forked, which Ray puts in groups of their own), not by `ray stop --force`: that
command kills every Ray process of this user on the machine, including clusters this test did not
start (another checkout's test run, a user's own cluster). The cluster uses token authentication
with a token made for the session, set in the environment only while a module that uses the
cluster runs, so the tests neither depend on nor write ~/.ray/auth_token.

Under `make test` (pytest-xdist, --dist loadfile), the scheduler below keeps a test file per worker
but hands out the Ray-cluster modules as one unit (one cluster, not one per worker that draws one)
and the longest units first. xdist's default order (files with the most tests first) puts the long
single-test files (the kill test, distill on Ray) near the end, where a worker that draws one last
can run alone while the other is done.
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
    # The order the scheduler hands work units out in (a stable sort: a file's tests stay together
    # and in their order).
    items.sort(key=lambda item: _rank(item.nodeid))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Test files that use the `cluster` fixture: one xdist work unit, so one cluster serves them all.
RAY_MODULES = ("tests/llm_validation/test_llm_distill_ray.py", "tests/toymodels/test_toy_claims_ray.py",
               "tests/toymodels/test_toy_ray.py")
# The longest work units, longest first (each file's summed --durations on 2 workers, session 11):
# with longest-first order the last unit a worker starts is a short one, so the two workers finish
# close together. A stale order costs only time: every unit still runs.
LONGEST_FIRST = ("ray", "tests/sublim/test_notebooks.py", "tests/llm_validation/test_llm_kill.py",
                 "tests/llm_validation/test_llm_distill.py", "tests/kernels/test_kernels_linear.py",
                 "tests/llm_validation/test_llm_align_cli.py", "tests/theory/test_theory_symbolic.py",
                 "tests/llm_validation/test_llm_probes.py", "tests/llm_validation/test_llm_distill_controls.py",
                 "tests/toymodels/test_toy_bench.py", "tests/llm_validation/test_llm_ddp.py",
                 "tests/llm_validation/test_llm_distill_steer.py", "tests/llm_validation/test_llm_filter.py",
                 "tests/toymodels/test_toy_guard.py", "tests/llm_validation/test_llm_distill_dose.py")


def _unit(path: str) -> str:
    return "ray" if path in RAY_MODULES else path


def _rank(nodeid: str) -> int:
    unit = _unit(nodeid.split("::", 1)[0])
    return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)


class _XdistOrder:
    """The scheduler hook, registered only when pytest-xdist is loaded: a conftest-level xdist hook
    is an "unknown hook" error under `pytest -p no:xdist` or without xdist installed."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        """--dist loadfile with the Ray-cluster modules as one unit, in collection order (above)."""
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class Scheduling(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _unit(super()._split_scope(nodeid))

        config.option.loadscopereorder = False  # xdist's reorder (most tests first) would undo ours
        return Scheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistOrder(), "sublim-xdist-order")


@pytest.fixture(scope="session")
def _ray_head(tmp_path_factory):
    """(address, process group id, auth token) of a 2-CPU Ray head on 127.0.0.1."""
    from helpers import RAY_BIN, free_port, stop_cluster

    pytest.importorskip("ray")
    port = free_port()
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    temp_dir = tmp_path_factory.mktemp("ray")  # private: sessions, logs, sockets of this cluster only
    cmd = [str(RAY_BIN), "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--include-dashboard=false",
           "--include-log-monitor=false", "--disable-usage-stats"]  # nothing to watch: drivers log nothing
    # A new session: every process of the cluster (GCS, raylet, workers) inherits this group.
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out.decode()[-2000:]
        yield f"127.0.0.1:{port}", proc.pid, token
    finally:
        stop_cluster(proc)


@pytest.fixture(scope="module")
def cluster(_ray_head):
    """(address, process group id) of the shared Ray head; its auth token is in the environment of
    this process's drivers and subprocess drivers for the module's duration."""
    address, pgid, token = _ray_head
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", token)
        yield address, pgid
