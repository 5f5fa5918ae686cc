# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Subliminal learning in the MNIST toy model
#
# A teacher MLP learns digits; a student that starts from the **same initialization** imitates
# only the teacher's *m auxiliary logits* (never trained on labels) on **pure noise**, and still
# learns to read digits. A student that starts from another model's init (cross-model) does not.
#
# This notebook uses the project's engine (`sublim.toymodels`) only:
# 1. the paper's figure (six arms, 95% CIs) from a fresh small run (or an existing `sublim toy` run);
# 2. sweeps over m, width, distillation epochs, init scale, init perturbation and the kind of
#    distillation input, run with the project's resumable sweep API (or read from existing sweeps).
#
# Every note under a plot is computed from the numbers this run measured. The six-arm run uses
# the paper's settings with 10 models (the paper: 100); the sweeps use a much smaller base config
# (few models, 2 + 2 epochs on a subset) so that all 19 cells finish on a laptop CPU, which makes
# their transfer weaker than the six-arm run's. Enlarge them through the environment variables
# below (or edit the cell).

# %% tags=["parameters"]
import os
from pathlib import Path


def env(name, default, cast=str):
    """A parameter from the environment (the test suite shrinks them, a researcher enlarges them)."""
    return cast(os.environ.get(name, default))


# The six-arm run: the paper's settings with 10 models (= `sublim toy`; ~4 min on an idle 2-core CPU, 21 min on a shared one)
N_MODELS = env("TOY_N_MODELS", 10, int)
TEACHER_EPOCHS = env("TOY_TEACHER_EPOCHS", 5, int)
DISTILL_EPOCHS = env("TOY_DISTILL_EPOCHS", 5, int)
MAX_EXAMPLES = env("TOY_MAX_EXAMPLES", 0, int)  # examples per epoch; 0 = all 60,000 (paper)
MAX_TEST = env("TOY_MAX_TEST", 0, int)  # test digits scored; 0 = all 10,000
WIDTH = env("TOY_WIDTH", 256, int)  # paper: 256
SEED = env("TOY_SEED", 0, int)
TOY_RUN_DIR = env("TOY_RUN_DIR", "")  # an existing `sublim toy` run directory to read instead of training

# The sweeps (each knob is one sweep over a base config; cells are cached on disk and resumed)
SWEEP_N_MODELS = env("TOY_SWEEP_N_MODELS", 3, int)
SWEEP_EPOCHS = env("TOY_SWEEP_EPOCHS", 2, int)  # teacher and distillation epochs of the base config
SWEEP_MAX_EXAMPLES = env("TOY_SWEEP_MAX_EXAMPLES", 10000, int)
SWEEP_MAX_TEST = env("TOY_SWEEP_MAX_TEST", 1000, int)
SWEEP_WIDTH = env("TOY_SWEEP_WIDTH", 64, int)
SWEEP_WIDTHS = env("TOY_SWEEP_WIDTHS", "32,64,128")  # the width sweep's values
SWEEP_ROOT = env("TOY_SWEEP_ROOT", "")  # "" = RUNS_ROOT/sweeps; an existing root is read (one sub-directory per knob)
SWEEP_KNOBS = env("TOY_SWEEP_KNOBS", "")  # "" = all six knobs; a comma list runs and draws only those (e.g. a root's finished ones)

RUNS_ROOT = Path(env("NB_RUNS_ROOT", "../runs/notebooks/toy"))  # where fresh runs are written
FIG_DIR = Path(env("NB_FIG_DIR", "figures"))  # where the PNGs go (the README shows figures/toy_arms.png)
DEVICE = env("TOY_DEVICE", "cpu")

# %%
import dataclasses
import json

import numpy as np
import pandas as pd
import matplotlib

if "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Image, Markdown, display

from sublim.progress import set_quiet
from sublim.rundir import atomic_write_bytes, claim_run_dir, read_json, save_figure
from sublim.seeding import derive_seed
from sublim.stats import t95
from sublim.toymodels.config import ARM_LABELS, from_dict, from_overrides
from sublim.toymodels.mnist import load_mnist
from sublim.toymodels.results import bar_plot_png, summarize, write_run, format_table
from sublim.toymodels.sweep import parse_grid, run_sweep
from sublim.toymodels.train import ToyResult, run_experiment

set_quiet(os.environ.get("SUBLIM_QUIET") == "1")
FIG_DIR.mkdir(parents=True, exist_ok=True)
sns.set_theme(style="whitegrid")
mnist = load_mnist()  # the embedded, checksum-verified copy; loaded once for every run below


def pct(x):
    return f"{100 * x:.1f}%"


# %% [markdown]
# ## 1. The six arms
#
# Reference (untrained), teacher, student on aux logits only, student on all logits, and the two
# cross-model students (initialized from another model via a derangement). Bars are means over
# models with 95% CIs (Student-t over models); dots are single models.

# %%
def load_run(run_dir: Path) -> ToyResult:
    """A ToyResult rebuilt from a finished run directory (config.json + per_model.json + summary.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists():
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a finished `sublim toy` run)")
    cfg = from_dict(read_json(run_dir / "config.json")["config"])
    rows = read_json(run_dir / "per_model.json")
    summary = read_json(run_dir / "summary.json")
    acc, loss = {}, {}
    for arm in cfg.arms:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["model"])
        acc[arm] = np.array([r["test_accuracy"] for r in mine])
        loss[arm] = np.array([r["final_train_loss"] for r in mine])
    return ToyResult(config=cfg, accuracy=acc, final_loss=loss, derangement=summary["derangement"],
                     wall_s=summary["wall_s"], phase_s=summary.get("phase_s", {}))


if TOY_RUN_DIR:
    run_dir = Path(TOY_RUN_DIR)
    result = load_run(run_dir)
    print(f"read {run_dir}")
else:
    cfg = from_overrides(dict(n_models=N_MODELS, teacher_epochs=TEACHER_EPOCHS, distill_epochs=DISTILL_EPOCHS,
                              max_examples_per_epoch=MAX_EXAMPLES, max_test_examples=MAX_TEST, width=WIDTH,
                              seed=SEED, device=DEVICE))
    # One directory per config (named by its hash): changing a knob above starts a new run
    # instead of mixing results, and a finished run with the same config is reused for free.
    run_dir = RUNS_ROOT / f"arms_{derive_seed(json.dumps(cfg.to_dict(), sort_keys=True)) % 16**8:08x}"
    if (run_dir / "summary.json").exists() and from_dict(read_json(run_dir / "config.json")["config"]) == cfg:
        result = load_run(run_dir)
        print(f"reusing the finished run in {run_dir}")
    else:
        with claim_run_dir(run_dir, cfg.to_dict()):  # refuses another config or a live process
            result = run_experiment(cfg, mnist, desc="six arms")
            write_run(run_dir, result)
        print(f"trained in {result.wall_s:.0f} s; wrote {run_dir}")

cfg = result.config
summary = summarize(result)
print(format_table(summary))

# %%
title = (f"MNIST subliminal learning: {cfg.n_models} models, m={cfg.n_aux}, width {cfg.width}, "
         f"{cfg.teacher_epochs}+{cfg.distill_epochs} epochs, {cfg.distill_input} distillation (95% CI)")
atomic_write_bytes(FIG_DIR / "toy_arms.png", bar_plot_png(result, title))
display(Image(filename=str(FIG_DIR / "toy_arms.png")))


# %%
def arm_note(summary: dict) -> str:
    """The figure's note, computed from the measured numbers (no claim the run cannot support)."""
    a = summary["arms"]
    n = summary["n_models"]
    lines = []

    def ci(arm):
        return a[arm]["mean"] - a[arm]["ci95"], a[arm]["mean"] + a[arm]["ci95"]

    if "teacher" in a:
        lines.append(f"- The teachers reach {pct(a['teacher']['mean'])} (+- {pct(a['teacher']['ci95'])}) test accuracy.")
    for arm, base in (("student_aux", "cross_aux"), ("student_all", "cross_all")):
        if arm in a and base in a:
            lo_s, _ = ci(arm)
            _, hi_c = ci(base)
            verdict = ("above, with non-overlapping 95% CIs" if lo_s > hi_c else
                       "not separated from it at this size (the 95% CIs overlap)")
            lines.append(f"- {ARM_LABELS[arm]}: {pct(a[arm]['mean'])} +- {pct(a[arm]['ci95'])} vs "
                         f"{ARM_LABELS[base]}: {pct(a[base]['mean'])} +- {pct(a[base]['ci95'])}: {verdict}.")
    if "student_aux" in a:
        lo, hi = ci("student_aux")
        where = "above" if lo > 0.10 else ("below" if hi < 0.10 else "not distinguishable from")
        lines.append(f"- The aux-only student (never shown a digit or a digit logit) is {where} chance (10%) "
                     f"over {n} models.")
    return "\n".join(lines)


display(Markdown(arm_note(summary)))

# %% [markdown]
# ## 2. Sweeps
#
# Each knob is swept on its own around a small base config (below), with the project's sweep
# API: one JSON file per finished cell, so an interrupted sweep resumes where it stopped. An
# existing sweep root (`TOY_SWEEP_ROOT`, one sub-directory per knob, each from
# `sublim toy sweep --out ROOT/<knob> ...`) is read as is.
#
# The arms kept in the sweeps are the teacher, the aux-only student and the aux-only cross-model
# student: the trait-free channel is what the sweeps are about.

# %%
sweep_root = Path(SWEEP_ROOT) if SWEEP_ROOT else RUNS_ROOT / "sweeps"
sweep_base = from_overrides(dict(n_models=SWEEP_N_MODELS, teacher_epochs=SWEEP_EPOCHS, distill_epochs=SWEEP_EPOCHS,
                                 max_examples_per_epoch=SWEEP_MAX_EXAMPLES, max_test_examples=SWEEP_MAX_TEST,
                                 width=SWEEP_WIDTH, seed=SEED, device=DEVICE,
                                 arms=("teacher", "student_aux", "cross_aux")))
# knob -> (grid spec, extra base settings). perturb_sigma needs student_init=perturbed and a
# sigma > 0 in its base (the grid overrides it); sigma = 0 is the shared-init student of every
# other sweep.
SWEEPS = {
    "n_aux": ("n_aux=1,3,10", {}),
    "width": (f"width={SWEEP_WIDTHS}", {}),
    "distill_epochs": ("distill_epochs=" + ",".join(map(str, sorted({1, SWEEP_EPOCHS, 2 * SWEEP_EPOCHS}))), {}),
    "init_scale": ("init_scale=0.5,1.0,2.0", {}),
    "perturb_sigma": ("perturb_sigma=0.01,0.1,1.0", {"student_init": "perturbed", "perturb_sigma": 1.0}),
    "distill_input": ("distill_input=uniform,gaussian,mnist,shuffled_pixels", {}),
}
KNOBS = [k.strip() for k in SWEEP_KNOBS.split(",") if k.strip()] or list(SWEEPS)
if set(KNOBS) - set(SWEEPS):
    raise ValueError(f"TOY_SWEEP_KNOBS: unknown knob(s) {sorted(set(KNOBS) - set(SWEEPS))}; choose from {', '.join(SWEEPS)}")


def sweep_rows(knob: str) -> pd.DataFrame:
    spec, extra = SWEEPS[knob]
    out = sweep_root / knob
    if SWEEP_ROOT and (out / "summary.json").exists():
        rows = read_json(out / "summary.json")["rows"]  # an existing sweep, read as is
    else:
        base = dataclasses.replace(sweep_base, **extra)
        rows, computed = run_sweep(out, base, parse_grid([spec]), data=mnist)
    df = pd.DataFrame(rows)
    df["knob"] = knob
    df["value"] = df[knob].astype(str)
    return df[["knob", "value", "arm", "mean", "ci95", "n", "error"]]


sweeps = pd.concat([sweep_rows(k) for k in KNOBS], ignore_index=True)
sweeps.to_csv(sweep_root / "all_sweeps.csv", index=False)  # the numbers behind the figure
print(f"base config of the sweeps: {SWEEP_N_MODELS} models, {SWEEP_EPOCHS}+{SWEEP_EPOCHS} epochs, "
      f"{SWEEP_MAX_EXAMPLES or 60000} examples/epoch, width {SWEEP_WIDTH}")
sweeps.pivot_table(index=["knob", "value"], columns="arm", values="mean", sort=False).map(pct)

# %%
def plot_sweeps(df: pd.DataFrame, path: Path) -> None:
    """One panel per knob: accuracy of each arm (mean, 95% CI) against the knob's values."""
    ok = df[df["error"] == ""]
    arms = [a for a in ARM_LABELS if a in set(ok["arm"])]
    palette = dict(zip(arms, sns.color_palette("deep", len(arms))))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharey=True)
    for ax in axes.flat[len(KNOBS):]:
        ax.set_visible(False)  # knobs left out by TOY_SWEEP_KNOBS
    for ax, knob in zip(axes.flat, KNOBS):
        sel = ok[ok["knob"] == knob]
        order = list(dict.fromkeys(df[df["knob"] == knob]["value"]))
        for j, arm in enumerate(arms):
            pts = sel[sel["arm"] == arm].set_index("value").reindex(order)
            x = np.arange(len(order)) + (j - 1) * 0.06  # small dodge so the CIs stay readable
            ax.errorbar(x, 100 * pts["mean"], yerr=100 * pts["ci95"], marker="o", capsize=4,
                        color=palette[arm], label=ARM_LABELS[arm])
        ax.set_xticks(range(len(order)), order, rotation=15 if knob == "distill_input" else 0)
        ax.set_xlabel(knob)
        ax.axhline(10, color="grey", ls="--", lw=1)
        ax.set_ylim(0, 100)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%), 95% CI")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Sweeps around a base config ({SWEEP_N_MODELS} models/cell, {SWEEP_EPOCHS}+{SWEEP_EPOCHS} "
                 f"epochs, width {SWEEP_WIDTH}); dashed: chance")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


plot_sweeps(sweeps, FIG_DIR / "toy_sweeps.png")
display(Image(filename=str(FIG_DIR / "toy_sweeps.png")))


# %%
def knob_note(df: pd.DataFrame, knob: str, arm: str = "student_aux") -> str:
    """One sentence per knob from the numbers: the lowest and highest setting of the aux-only
    student, and whether their 95% CIs separate them."""
    sel = df[(df["knob"] == knob) & (df["arm"] == arm) & (df["error"] == "")]
    diverged = df[(df["knob"] == knob) & (df["error"] != "")]["value"].tolist()
    tail = f" Diverged: {', '.join(diverged)}." if diverged else ""
    if len(sel) < 2:
        return f"- **{knob}**: fewer than two finished cells.{tail}"
    lo, hi = sel.loc[sel["mean"].idxmin()], sel.loc[sel["mean"].idxmax()]
    separated = (hi["mean"] - hi["ci95"]) > (lo["mean"] + lo["ci95"])
    verdict = "the 95% CIs do not overlap" if separated else "the 95% CIs overlap, so this run cannot order them"
    cross = df[(df["knob"] == knob) & (df["arm"] == "cross_aux") & (df["error"] == "")]
    cross_txt = f"; cross-model aux-only stays within {pct(cross['mean'].min())}-{pct(cross['mean'].max())}" if len(cross) else ""
    return (f"- **{knob}**: the aux-only student is highest at {knob}={hi['value']} ({pct(hi['mean'])} +- "
            f"{pct(hi['ci95'])}) and lowest at {knob}={lo['value']} ({pct(lo['mean'])} +- {pct(lo['ci95'])}); "
            f"{verdict}{cross_txt}.{tail}")


caveat = ""
if SWEEP_N_MODELS < 10:
    caveat = (f"\n\nWith {SWEEP_N_MODELS} models per cell the Student-t intervals are wide (t = {t95(SWEEP_N_MODELS - 1):.2f}); "
              "raise TOY_SWEEP_N_MODELS for tighter comparisons.")
display(Markdown("\n".join(knob_note(sweeps, k) for k in KNOBS) + caveat))

# %% [markdown]
# What the knobs mean: `n_aux` is m, the number of auxiliary logits the student imitates;
# `width` the hidden width; `distill_epochs` the length of the imitation; `init_scale` multiplies
# the init's standard deviation; `perturb_sigma` moves the student's init away from the
# teacher's by sigma x the layer's init std (sigma -> 0 is the shared init, large sigma
# approaches the cross-model case); `distill_input` is what the student sees while imitating
# (uniform or Gaussian noise, real MNIST images, or MNIST with each image's pixels shuffled).
#
# Files: the six-arm run directory and one sweep directory per knob (config.json, cells/*.json,
# summary.csv/json, sweep_<knob>.png) under `RUNS_ROOT`; the figures under `FIG_DIR`.
