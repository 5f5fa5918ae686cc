"""What the Ray executor costs over the local one for a toy sweep of tiny cells.

For each executor (local; ray with a private local instance, as `--executor ray` without
--address starts one) and each CPUs-per-cell setting, runs fresh sweeps of 4 and 8 tiny cells
(the test suite's tiny settings; cells differ by seed) and fits wall = fixed + per_cell * cells.
The Ray overhead is the difference of the fits:
  - fixed: starting (and stopping) the Ray instance, connecting, cold worker processes
    (each imports torch and sublim once),
  - per cell: scheduling a task, shipping its config and result, any slowdown inside the task.
With --cpus-per-cell equal to the machine's cores both executors run one cell at a time, so the
difference is pure overhead; with 1 CPU per cell Ray runs cores-many cells at once and the local
executor one 1-thread cell after another (what parallel cells buy on this machine).
Sweep wall times on a shared machine are noisy, so the fixed cost is also taken apart directly
(ray_phases): starting the instance, a cold worker's first task (imports torch and sublim, loads
MNIST), the round trip of an empty task on a warm worker, and stopping the instance.

    python benchmarks/bench_sweep_executor.py     # writes benchmarks/results/sweep_executor_cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = {"width": "16", "n_models": "3", "teacher_epochs": "1", "distill_epochs": "1",
        "max_examples_per_epoch": "512", "batch_size": "256", "max_test_examples": "1000",
        "arms": "teacher+student_aux+cross_aux"}


def timed_sweep(executor: str, cpus: int, n_cells: int) -> float:
    """Wall seconds of one fresh sweep (new directory: every cell computed).

    MNIST is dropped from this process's cache first: a sweep from the command line loads it
    once (local) or once per worker (ray), and each timed sweep should pay what a real one does.
    """
    from sublim.toymodels import sweep
    from sublim.toymodels.config import from_overrides
    from sublim.toymodels.sweep import parse_grid, run_sweep

    sweep._MNIST_CACHE.clear()
    grid = parse_grid([f"seed={','.join(str(s) for s in range(n_cells))}"])
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        t0 = time.perf_counter()
        _, computed = run_sweep(Path(tmp) / "sweep", from_overrides(TINY), grid, executor=executor,
                                cpus_per_cell=cpus)
        wall = time.perf_counter() - t0
    assert len(computed) == n_cells
    return wall


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares wall = fixed + per_cell * cells over (cells, wall) points."""
    n, wall = (np.array(v, dtype=float) for v in zip(*points))
    per_cell, fixed = np.polyfit(n, wall, 1)
    return float(fixed), float(per_cell)


def _warm_worker() -> int:
    """What a cold worker pays before its first cell: the imports and MNIST."""
    from sublim.toymodels import sweep
    from sublim.toymodels.config import from_overrides

    sweep.cached_mnist(sweep._MNIST_CACHE, from_overrides(TINY))
    return os.getpid()


def _empty_task() -> int:
    return os.getpid()


def ray_phases(round_trips: int = 30) -> dict:
    """Seconds of each fixed step of a Ray sweep with a private local instance."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    ray.get(ray.remote(_warm_worker).options(num_cpus=1).remote())
    t2 = time.perf_counter()
    empty = ray.remote(_empty_task).options(num_cpus=1)
    for _ in range(round_trips):  # one at a time: the latency a cell's scheduling adds
        ray.get(empty.remote())
    t3 = time.perf_counter()
    ray.shutdown()
    t4 = time.perf_counter()
    return {"start_instance_s": t1 - t0, "cold_worker_first_task_s": t2 - t1,
            "empty_task_round_trip_s": (t3 - t2) / round_trips, "stop_instance_s": t4 - t3}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def measure(cpus: int, sizes: list[int], repeats: int) -> dict:
    runs, fits = [], {}
    for executor in ("local", "ray"):
        points = []
        for _ in range(repeats):
            for n in sizes:
                wall = timed_sweep(executor, cpus, n)
                points.append((n, wall))
                runs.append({"executor": executor, "cpus_per_cell": cpus, "cells": n, "wall_s": round(wall, 3)})
                print(f"  {executor:>5}  cpus/cell {cpus}  {n} cells  {wall:6.1f} s", flush=True)
        fits[executor] = dict(zip(("fixed_s", "per_cell_s"), fit(points)))
    overhead = {k: fits["ray"][k] - fits["local"][k] for k in ("fixed_s", "per_cell_s")}
    return {"cpus_per_cell": cpus, "runs": runs, "fit": fits, "ray_overhead": overhead}


def main() -> int:
    from sublim.progress import set_quiet
    from sublim.rundir import atomic_write_json, environment_info

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2,8", help="sweep sizes (cells) to fit over")
    p.add_argument("--cpus", default=f"{os.cpu_count()},1", help="CPUs (threads) per cell settings")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/sweep_executor_cpu.json"))
    args = p.parse_args()
    set_quiet(True)
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()[0]  # other users of a shared machine inflate every number
    timed_sweep("local", 1, 1)  # untimed: this process's one-time costs (lazy imports, first kernels)
    phases = [ray_phases() for _ in range(args.repeats)]
    settings = [measure(int(c), sizes, args.repeats) for c in args.cpus.split(",")]
    import ray

    env = {**environment_info(), "cpu_model": cpu_model(), "cores": os.cpu_count(), "ray": ray.__version__,
           "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}
    atomic_write_json(args.out, {"config": {"cell": TINY, "sizes": sizes, "repeats": args.repeats,
                                            "ray_address": None, "command": " ".join(sys.argv)},
                                 "environment": env, "ray_phases": phases, "settings": settings})
    for ph in phases:
        print("ray phases: " + ", ".join(f"{k} {v:.3f}" for k, v in ph.items()))
    for s in settings:
        o = s["ray_overhead"]
        print(f"cpus/cell {s['cpus_per_cell']}: ray overhead fixed {o['fixed_s']:+.1f} s, "
              f"per cell {o['per_cell_s']:+.2f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
