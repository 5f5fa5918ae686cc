"""Run a set of independent tasks in this process or on a Ray cluster, behind one interface.

    results = run_tasks({"cell_a": (fn, (cfg_a,)), "cell_b": (fn, (cfg_b,))},
                        executor="ray", address="auto",
                        resources=Resources(cpus=2, gpus=1),
                        on_result=lambda key, result: atomic_write_json(out / f"{key}.json", result))

The seam, for any command that fans out independent units of work (toy sweep cells today, the
arms of `sublim llm distill` next):

- A task is `key -> (fn, args)`. `fn` must be a module-level function (Ray ships it by import
  path, so every node needs the same sublim installed) and `args` must pickle; keep them small
  (configs and megabytes, not data sets: the toy's tasks load their data where they run, a
  distill student receives its tokenized contexts and its teacher's cache).
- `fn(*args)` returns a small, picklable result (a dict of numbers). The DRIVER receives it and
  calls `on_result(key, result)`, in completion order, as each task finishes. Persist there
  (atomically), so a killed driver loses only the tasks in flight; the caller resumes by
  submitting only missing keys. A worker writes no result file. It may write its own scratch
  state (distill's students write checkpoint.pt under their own folder, to resume a long student;
  that needs a file system the nodes share); the toy's workers write nothing.
- `resources` is what ONE task needs: a `Resources` for every task, or a dict key -> Resources.
  Ray places the task on a node with that much free; the local executor runs tasks one after
  another in this process, whatever they ask for. A task that uses torch
  should call torch.set_num_threads itself (to its cpus): torch does not promise results that are
  independent of the thread count, and what a Ray worker would otherwise get is Ray's choice.
- A task that raises a SublimError stops the run with that one-line error (results delivered
  before it are kept). A Ray worker or node that dies is retried by Ray (`max_retries`); the
  task must therefore be safe to run twice, which it is when only the driver writes results
  (a retried distill student resumes from its own checkpoint).
- Workers run quietly (sublim.progress): the driver draws one bar over tasks.

One backend class per executor, all with the same `run` signature; `run_tasks` picks one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sublim.errors import ConfigError, SublimError
from sublim.progress import progress, set_quiet

Task = tuple[Callable[..., Any], tuple]
OnResult = Callable[[str, Any], None]
RAY_EXTRA = "pip install 'sublim-lab[ray]'"


@dataclass(frozen=True)
class Resources:
    """What one task needs: CPU cores (its thread count) and GPUs."""

    cpus: float = 1
    gpus: float = 0

    def __post_init__(self):
        if self.cpus <= 0 or self.gpus < 0:
            raise ConfigError(f"task resources must be cpus > 0 and gpus >= 0, got {self}")


def _resources_of(resources: Resources | Mapping[str, Resources] | None, key: str) -> Resources:
    if resources is None:
        return Resources()
    return resources if isinstance(resources, Resources) else resources[key]


class LocalExecutor:
    """Every task in this process, one after another (the laptop default; no extra dependency)."""

    name = "local"

    def __init__(self, address: str | None = None, max_retries: int = 0):
        if address:
            raise ConfigError("--address is for --executor ray (the local executor runs in this process)")

    def run(self, tasks: Mapping[str, Task], *, resources=None, on_result: OnResult | None = None,
            desc: str = "tasks") -> dict[str, Any]:
        results = {}  # resources are Ray's business: here a task simply uses this machine
        with progress(total=len(tasks), desc=desc, unit="task") as bar:
            for key, (fn, args) in tasks.items():
                results[key] = fn(*args)
                if on_result:
                    on_result(key, results[key])
                bar.update()
        return results


def _run_quietly(fn: Callable[..., Any], *args) -> Any:
    """The Ray task body: a worker reports through its result only, never through bars."""
    set_quiet(True)
    return fn(*args)


class RayExecutor:
    """Each task as one Ray task with its resources; results come back to the driver.

    address None starts a private local Ray instance (all cores of this machine; it lives until this
    process exits, so later runs of the process reuse it);
    "auto" or "HOST:PORT" joins a running cluster (`ray start --head` on one machine,
    `ray start --address HOST:PORT` on the others).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3):
        self.address, self.max_retries = address, max_retries

    def run(self, tasks: Mapping[str, Task], *, resources=None, on_result: OnResult | None = None,
            desc: str = "tasks") -> dict[str, Any]:
        ray = _import_ray()
        _connect(ray, self.address)
        try:
            body = ray.remote(_run_quietly)
            pending = {}
            for key, (fn, args) in tasks.items():
                res = _resources_of(resources, key)
                # max_retries covers a dead worker or node; an exception raised by the task
                # itself (a bad config, a missing file) is not retried: it would fail again.
                opts = dict(name=key, num_cpus=res.cpus, num_gpus=res.gpus, max_retries=self.max_retries)
                pending[body.options(**opts).remote(fn, *args)] = key
            return _collect(ray, pending, on_result, desc)
        except BaseException:
            _disconnect(ray)  # a failed run's tasks in flight stop with it
            raise


def _collect(ray, pending: dict, on_result: OnResult | None, desc: str) -> dict[str, Any]:
    """Hand each result to on_result as soon as its task finishes (any order)."""
    results = {}
    with progress(total=len(pending), desc=desc, unit="task") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            results[key] = _get(ray, done[0], key)
            if on_result:
                on_result(key, results[key])
            bar.update()
    return results


def _get(ray, ref, key: str) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, SublimError):  # the task's own one-line error, not Ray's traceback
            raise e.cause from None
        raise
    except ray.exceptions.RayError as e:  # retries exhausted, cluster gone, ...
        raise SublimError(f"task {key}: {_first_line(e)}") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SublimError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


# The address this process's Ray connection was made for (empty: not connected by us). A successful
# run keeps the connection: the next run of the same process (claims' second wave of matched arms,
# the next claim) reuses the job and its warm workers, whose modules are already imported, instead
# of starting new ones (~5-10 s each). Ray's own exit hook disconnects at interpreter exit, and
# stops the private instance if we started one.
_CONNECTED: list = []


def _disconnect(ray) -> None:
    _CONNECTED.clear()
    ray.shutdown()


def _connect(ray, address: str | None) -> None:
    if _CONNECTED and ray.is_initialized():
        if _CONNECTED[0] == address:
            return
        _disconnect(ray)  # our connection is to another address
    # "local" forces a new private instance: a bare ray.init() would silently join whatever
    # cluster `ray start` left running on this machine.
    # Ray's status lines (and its note that token auth is on, Ray's default) are not ours to print:
    # the driver shows one bar; failures still come through as errors.
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    except Exception as e:  # Ray raises bare Exception too (e.g. "node timed out during startup")
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
        hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token)") if address and "RAY_AUTH_MODE" not in os.environ else ""
        raise SublimError(f"cannot {where}: {_first_line(e)}{hint}") from None
    _CONNECTED[:] = [address]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def run_tasks(tasks: Mapping[str, Task], *, executor: str = "local", address: str | None = None,
              resources: Resources | Mapping[str, Resources] | None = None,
              on_result: OnResult | None = None, max_retries: int = 3, desc: str = "tasks") -> dict[str, Any]:
    """Run every task on the chosen executor; returns {key: result} (see the module docstring)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    backend = EXECUTORS[executor](address=address, max_retries=max_retries)
    if not tasks:  # everything done earlier: do not start (or join) a cluster for nothing
        return {}
    return backend.run(tasks, resources=resources, on_result=on_result, desc=desc)
