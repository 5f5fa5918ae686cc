"""Grids over any knobs, resumable cell by cell.

A sweep directory holds config.json (the base config and the grid), cells/<name>.json (one per
finished cell, written atomically: config, summary, per-model numbers), and at the end
summary.csv / summary.json and one plot per swept knob. A killed sweep rerun with the same
--out skips every cell whose file exists (after checking its stored config is the one asked
for) and computes only the missing ones. A cell whose training diverges is recorded as such
(a diverging lr is a result too) and not retried. Missing cells run on an executor
(sublim.executors): here, one after another, or as Ray tasks across machines; either way the
results come back to this process, which alone writes the files.
"""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import numpy as np

from sublim.errors import ConfigError, NumericalError, SublimError
from sublim.executors import Resources, run_tasks
from sublim.progress import log
from sublim.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text, claim_run_dir, read_json
from sublim.stats import ci_text, mean_ci95

from .config import ARM_LABELS, ToyConfig, canonical_knob, from_dict, from_overrides, parse_knob_value
from .results import per_model_rows, rows_to_csv, summarize
from .train import run_experiment


def parse_grid(specs: list[str]) -> dict[str, list]:
    """["n_aux=1,3,10", "width=128,256"] -> {"n_aux": [1, 3, 10], "width": [128, 256]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r}: expected knob=value1,value2,...")
        name, values = spec.split("=", 1)
        key = canonical_knob(name)
        if key in grid:
            raise ConfigError(f"--grid lists {key} twice")
        parsed = [parse_knob_value(key, v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ConfigError(f"--grid {spec!r}: no values")
        if len(set(map(str, parsed))) != len(parsed):
            raise ConfigError(f"--grid {spec!r}: a value is repeated")
        grid[key] = parsed
    return grid


def format_value(v) -> str:
    return "+".join(v) if isinstance(v, tuple) else str(v)


def cell_name(overrides: dict) -> str:
    """A file-safe, stable name: knob=value pairs in grid order."""
    name = "__".join(f"{k}={format_value(v)}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name) or "base"


def grid_cells(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def cached_mnist(cache: dict, cfg: ToyConfig):
    from .mnist import load_mnist

    if cfg.mnist_path not in cache:
        cache[cfg.mnist_path] = load_mnist(cfg.mnist_path or None)
    return cache[cfg.mnist_path]


def run_cell(cfg: ToyConfig, desc: str, data) -> dict:
    try:
        result = run_experiment(cfg, data, desc=desc)
    except NumericalError as e:
        return {"error": str(e)}
    return {"summary": summarize(result), "per_model": per_model_rows(result)}


# MNIST loaded (and checksummed) once per process and path: once per sweep on the local
# executor, once per worker process on Ray (workers are reused across cells).
_MNIST_CACHE: dict = {}


def compute_cell(cfg: ToyConfig, name: str, desc: str, threads: int, data=None) -> dict:
    """One cell, wherever it runs (this process or a Ray worker); returns what its file holds.

    The thread count is set here, not left to the host (a Ray worker would get Ray's default):
    torch does not promise thread-count-independent float results (on our 2-core CPU 1 and 2
    threads gave bitwise identical cells, FINDINGS.md), so a cell's numbers are pinned to its
    config and `threads`, on whichever executor and node it lands.
    """
    import torch

    log(f"[{desc}] {name}: running")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_cell(cfg, desc, data or cached_mnist(_MNIST_CACHE, cfg))
    finally:
        torch.set_num_threads(before)  # the local executor runs cells in the caller's process
    return {**result, "torch_threads": threads}


def cell_resources(cfg: ToyConfig, threads: int) -> Resources:
    return Resources(cpus=threads, gpus=1 if cfg.device.startswith("cuda") else 0)


def default_threads() -> int:
    """Today's behaviour: what torch uses in this process (all cores unless told otherwise)."""
    import torch

    return torch.get_num_threads()


def check_executor_args(executor: str, configs: list[ToyConfig], data, threads: int) -> None:
    if not (isinstance(threads, int) and threads > 0):
        raise ConfigError(f"cpus per cell must be a positive integer, got {threads!r}")
    if executor == "local":
        return
    if data is not None:  # 200 MB of MNIST per task would dwarf the work; workers load their own
        raise ConfigError("preloaded data is for the local executor; Ray workers load MNIST themselves")
    if any(c.device.startswith("cuda:") for c in configs):
        raise ConfigError("with --executor ray use --device cuda: Ray gives each cell one GPU and "
                          "makes it the task's cuda device")


def grid_configs(base: ToyConfig, grid: dict[str, list]) -> list[ToyConfig]:
    """Every cell's config, validated (a bad cell is named before anything is trained or written)."""
    configs = []
    for overrides in grid_cells(grid):
        try:
            configs.append(from_overrides(overrides, base))
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell_name(overrides)}: {e}") from None
    return configs


def sweep_config(base: ToyConfig, grid: dict[str, list]) -> dict:
    """What a sweep directory's config.json describes: the base config and the grid."""
    return {"base": base.to_dict(), "grid": {k: [format_value(v) for v in vs] for k, vs in grid.items()}}


def run_sweep(out: Path, base: ToyConfig, grid: dict[str, list], data=None, *, executor: str = "local",
              address: str | None = None, cpus_per_cell: int | None = None) -> tuple[list[dict], list[str]]:
    """Run (or resume) every cell; returns (summary table rows, names of cells computed now).

    The directory is claimed (sublim.rundir.claim_run_dir) only after the whole grid validates: a
    directory holding another sweep is refused before anything is touched, a second live process
    on it is refused by the lock, and config.json is written once, never rewritten by a rerun.
    Missing cells run on `executor` (sublim.executors: "local" in this process, "ray" on a
    cluster); each finished cell comes back here and is written by this process, atomically."""
    out = Path(out)
    configs = grid_configs(base, grid)
    threads = cpus_per_cell or default_threads()
    check_executor_args(executor, configs, data, threads)
    with claim_run_dir(out, sweep_config(base, grid)):
        return run_cells(out, grid, configs, data, executor=executor, address=address, threads=threads)


def run_cells(out: Path, grid: dict[str, list], configs: list[ToyConfig], data=None, *, executor: str = "local",
              address: str | None = None, threads: int = 1) -> tuple[list[dict], list[str]]:
    """The cells of a claimed sweep directory: finished ones read back, missing ones computed."""
    cells = grid_cells(grid)
    names = [cell_name(overrides) for overrides in cells]
    records, tasks, resources = {}, {}, {}
    for i, (name, cfg) in enumerate(zip(names, configs)):
        path = out / "cells" / f"{name}.json"
        if path.exists():
            rec = read_json(path)
            if from_dict(rec["config"]) != cfg:
                raise SublimError(f"{path}: holds a cell with a different config than this sweep asks for; "
                                  "use a new --out or delete that file")
            log(f"[{i + 1}/{len(cells)}] {name}: done earlier, kept")
            records[name] = rec
        else:
            tasks[name] = (compute_cell, (cfg, name, f"{i + 1}/{len(cells)}", threads, data))
            resources[name] = cell_resources(cfg, threads)
    by_name = dict(zip(names, zip(cells, configs)))

    def save(name: str, result: dict) -> None:  # on the driver, as each cell finishes
        overrides, cfg = by_name[name]
        records[name] = {"overrides": {k: format_value(v) for k, v in overrides.items()}, "config": cfg.to_dict(),
                         **result}
        atomic_write_json(out / "cells" / f"{name}.json", records[name])

    run_tasks(tasks, executor=executor, address=address, resources=resources, on_result=save, desc="cells")
    rows = aggregate([(overrides, records[name]) for overrides, name in zip(cells, names)], grid)
    write_summary(out, rows, grid)
    return rows, list(tasks)


def aggregate(records: list[tuple[dict, dict]], grid: dict[str, list]) -> list[dict]:
    """One row per (cell without seed, arm): per-model accuracies pooled over seeds."""
    knobs = [k for k in grid if k != "seed"]
    pooled: dict[tuple, dict] = {}
    for overrides, rec in records:
        key = tuple(format_value(overrides[k]) for k in knobs)
        entry = pooled.setdefault(key, {"acc": {}, "errors": [], "seeds": 0})
        entry["seeds"] += 1
        if "error" in rec:
            entry["errors"].append(rec["error"])
            continue
        for row in rec["per_model"]:
            entry["acc"].setdefault(row["arm"], []).append(row["test_accuracy"])
    rows = []
    for key, entry in pooled.items():
        base = dict(zip(knobs, key))
        if entry["errors"]:
            rows.append({**base, "arm": "", "mean": float("nan"), "ci95": float("nan"), "n": 0,
                         "error": entry["errors"][0]})
        for arm, values in entry["acc"].items():
            mean, half = mean_ci95(values)
            rows.append({**base, "arm": arm, "mean": mean, "ci95": half, "n": len(values), "error": ""})
    return rows


def format_table(rows: list[dict], grid: dict[str, list]) -> str:
    knobs = [k for k in grid if k != "seed"]
    head = "  ".join(f"{k:>12}" for k in knobs) + f"  {'arm':<12} {'accuracy':>9}  95% CI   n"
    lines = [head]
    for r in rows:
        cells = "  ".join(f"{str(r[k]):>12}" for k in knobs)
        if r["error"]:
            lines.append(f"{cells}  diverged: {r['error']}")
        else:
            lines.append(f"{cells}  {r['arm']:<12} {100 * r['mean']:>8.1f}%  +-{ci_text(r['ci95'], r['n'], '.1f', 100)}  {r['n']}")
    return "\n".join(lines)


def write_summary(out: Path, rows: list[dict], grid: dict[str, list]) -> None:
    atomic_write_text(out / "summary.csv", rows_to_csv(rows))
    atomic_write_json(out / "summary.json", {"grid": {k: [format_value(v) for v in vs] for k, vs in grid.items()},
                                             "rows": rows})
    for knob in grid:
        if knob != "seed":
            atomic_write_bytes(out / f"sweep_{knob}.png", knob_plot_png(rows, grid, knob))


def knob_plot_png(rows: list[dict], grid: dict[str, list], knob: str) -> bytes:
    """Accuracy of every arm against one knob (one panel per setting of the other knobs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    others = [k for k in grid if k not in (knob, "seed")]
    panels = sorted({tuple(r[k] for k in others) for r in rows}, key=str)
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    xs = [format_value(v) for v in grid[knob]]
    palette = dict(zip(ARM_LABELS, sns.color_palette("tab10", len(ARM_LABELS))))
    for ax, panel in zip(axes[0], panels):
        sel = [r for r in rows if tuple(r[k] for k in others) == panel and not r["error"]]
        for arm in ARM_LABELS:
            pts = [(xs.index(r[knob]), r["mean"], r["ci95"]) for r in sel if r["arm"] == arm]
            if not pts:
                continue
            pts.sort()
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(x, 100 * y, yerr=100 * e, marker="o", capsize=4, label=ARM_LABELS[arm], color=palette[arm])
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(knob)
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(others, panel)) or f"accuracy vs {knob}")
        ax.axhline(10, color="grey", ls="--", lw=1)
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("test accuracy (%), 95% CI")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
