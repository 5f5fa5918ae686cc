"""sublim.executors without a cluster: the local backend, bad choices, Ray missing -> one line."""

import sys

import pytest

from sublim.cli import main
from sublim.errors import ConfigError, SublimError
from sublim.executors import Resources, run_tasks


def square(x):
    return x * x


def refuse(x):
    raise ConfigError(f"bad input {x}")


def test_local_runs_every_task_and_reports_each_result():
    seen = []
    results = run_tasks({"a": (square, (2,)), "b": (square, (3,))}, on_result=lambda k, r: seen.append((k, r)))
    assert results == {"a": 4, "b": 9} and seen == [("a", 4), ("b", 9)]


def test_a_task_error_stops_the_run_and_keeps_earlier_results():
    seen = []
    with pytest.raises(ConfigError, match="bad input 1"):
        run_tasks({"ok": (square, (2,)), "bad": (refuse, (1,)), "never": (square, (5,))},
                  on_result=lambda k, r: seen.append(k))
    assert seen == ["ok"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"executor": "slurm"}, "executor must be one of local, ray"),
    ({"address": "auto"}, "--address is for --executor ray"),
    ({"resources": {"cpus": 0}}, "cpus > 0"),
])
def test_bad_choices_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        resources = Resources(**kwargs.pop("resources", {}))
        run_tasks({"a": (square, (1,))}, resources=resources, **kwargs)


def test_nothing_to_do_starts_nothing():
    assert run_tasks({}, executor="ray", address="10.0.0.1:1") == {}  # no connection attempted


def test_executor_ray_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    argv = ["toy", "sweep", "--grid", "m=1", "--out", str(tmp_path / "s"), "--executor", "ray", "-q",
            "--width", "16", "--n-models", "2", "--max-examples-per-epoch", "256"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'sublim-lab[ray]'" in err, err
    with pytest.raises(SublimError, match="not installed"):
        run_tasks({"a": (square, (1,))}, executor="ray")


class FakeRay:
    """Only the connection calls of the ray module, counted."""

    def __init__(self):
        self.inits, self.shutdowns, self.up = [], 0, False

    def init(self, address, **kwargs):
        self.inits.append(address)
        self.up = True

    def is_initialized(self):
        return self.up

    def shutdown(self):
        self.shutdowns += 1
        self.up = False

    def remote(self, fn):  # submitting a task: the run fails after connecting
        raise RuntimeError("submit failed")


def test_a_process_keeps_one_ray_connection_per_address(monkeypatch):
    """Runs after a successful one reuse its connection (and the job's warm workers); another
    address, or a connection lost in between, connects afresh; a failed run disconnects."""
    from sublim import executors

    ray = FakeRay()
    monkeypatch.setattr(executors, "_CONNECTED", [])
    executors._connect(ray, "10.0.0.1:1")
    executors._connect(ray, "10.0.0.1:1")
    assert ray.inits == ["10.0.0.1:1"] and ray.shutdowns == 0
    executors._connect(ray, None)
    assert ray.inits == ["10.0.0.1:1", "local"] and ray.shutdowns == 1
    ray.up = False  # e.g. the caller shut Ray down
    executors._connect(ray, None)
    assert ray.inits == ["10.0.0.1:1", "local", "local"]
    monkeypatch.setattr(executors, "_import_ray", lambda: ray)
    with pytest.raises(RuntimeError, match="submit failed"):
        run_tasks({"a": (square, (1,))}, executor="ray")
    assert ray.shutdowns == 2 and not ray.up and executors._CONNECTED == []
