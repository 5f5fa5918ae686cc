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
# # Subliminal learning in real language models: reading a run directory
#
# A teacher LM with a trait (it "loves owls", by system prompt or fine-tuning) continues number
# sequences; a strict filter keeps only pure number lists; a student with the same base model is
# fine-tuned on them and asked for its favorite animal. A control student learns from the base
# model's numbers. This notebook reads what `sublim llm run` (and `sublim llm align`) wrote:
#
# 1. target rates per arm with 95% CIs (sampled answers: Wilson; next-token share: over wordings),
# 2. the filter's rejection counts per rule,
# 3. the gradient-alignment distributions and per-layer bars (when `alignment/` exists).
#
# `LLM_RUN_DIR` points at a real run (e.g. the GPU entry's `OUT_DIR/A_system_prompt`).
# Without it, the notebook produces the CPU smoke run (`--preset tiny`: ~3M-parameter random
# models, sampling constrained to digit tokens) so every cell runs; **its numbers measure nothing
# about subliminal learning**, they only exercise the plumbing.

# %% tags=["parameters"]
import os
from pathlib import Path


def env(name, default, cast=str):
    return cast(os.environ.get(name, default))


LLM_RUN_DIR = env("LLM_RUN_DIR", "")  # a finished `sublim llm run` directory; "" = make the CPU smoke run
RUNS_ROOT = Path(env("NB_RUNS_ROOT", "../runs/notebooks/llm"))  # where the smoke run goes
TINY_EVAL_QUESTIONS = env("LLM_TINY_EVAL_QUESTIONS", 5, int)  # smoke run only
ALIGN = env("LLM_ALIGN", "auto")  # auto: score alignment for the smoke run, read it for a real run; 1: always score; 0: never
ALIGN_LIMIT = env("LLM_ALIGN_LIMIT", 16, int)  # examples scored per data set when this notebook runs the scoring
FIG_DIR = Path(env("NB_FIG_DIR", "figures"))

# %%

import numpy as np
import pandas as pd
import matplotlib

if "MPLBACKEND" not in os.environ:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Image, Markdown, display

from sublim.cli import main as sublim_main
from sublim.llm_validation.pipeline.config import ARMS, run_config_from_dict
from sublim.llm_validation.pipeline.report import ARM_LABELS, collect_rows
from sublim.rundir import read_json, save_figure
from sublim.stats import mean_ci95

QUIET = ["-q"] if os.environ.get("SUBLIM_QUIET") == "1" else []
FIG_DIR.mkdir(parents=True, exist_ok=True)
sns.set_theme(style="whitegrid")


def save(fig, name):
    path = save_figure(fig, FIG_DIR / name, dpi=90)
    display(Image(filename=str(path)))


def pct(x):
    return f"{100 * x:.1f}%"


# %% [markdown]
# ## The run directory

# %%
if LLM_RUN_DIR:
    run_dir = Path(LLM_RUN_DIR)
    smoke = False
else:
    run_dir = RUNS_ROOT / "tiny"
    smoke = True
    # The pipeline reuses finished stages, so rerunning this cell is cheap.
    rc = sublim_main([*QUIET, "llm", "run", "--run-dir", str(run_dir), "--preset", "tiny",
                      "--set", f"eval_questions={TINY_EVAL_QUESTIONS}"])
    assert rc == 0, f"sublim llm run exited with {rc}"
if not (run_dir / "config.json").exists():
    raise FileNotFoundError(f"{run_dir}: no config.json; not a `sublim llm run` directory")
cfg = run_config_from_dict(read_json(run_dir / "config.json")["config"])
arms = [a for a in ARMS if (run_dir / "eval" / f"{a}.json").exists()]
print(f"{run_dir}: model {cfg.model}, target {cfg.target!r}, teacher {cfg.teacher}, arms {', '.join(arms)}")
if smoke:
    print("CPU smoke run (tiny random models): the numbers below test the plumbing, not the phenomenon.")

# %% [markdown]
# ## 1. Target rates with 95% CIs
#
# Left: share of sampled answers that name the target (Wilson 95% CI). Right: the target's share
# of the next-token probability among the candidate animals (95% CI over prompt wordings); this
# measure sees small shifts that rarely change a sampled word.

# %%
rows = pd.DataFrame(collect_rows(run_dir, arms, cfg)) if arms else pd.DataFrame(columns=["arm"])
if rows.empty:
    # A run cut short (e.g. a GPU run that stopped during fine-tuning) has numbers but no evaluations.
    print(f"{run_dir}: no evaluated arm yet (eval/<arm>.json missing): no target rates to show")
else:
    rows["label"] = rows["arm"].map(lambda a: ARM_LABELS.get(a, a))
    show = rows[["label", "model", "n_samples", "target_rate", "target_ci_low", "target_ci_high",
                 "next_token_share", "next_token_share_ci"]].copy()
    display(show.style.format({c: "{:.2%}" for c in show.columns if c.startswith(("target", "next"))}))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    palette = sns.color_palette("deep", len(rows))
    x = np.arange(len(rows))
    axes[0].bar(x, 100 * rows["target_rate"], color=palette,
                yerr=[100 * (rows["target_rate"] - rows["target_ci_low"]), 100 * (rows["target_ci_high"] - rows["target_rate"])],
                capsize=4)
    axes[0].set_ylabel(f"answers naming '{cfg.target}' (%)")
    axes[0].set_title(f"sampled answers, target rate (Wilson 95% CI; n = {int(rows['n_samples'].iloc[0])} per arm)")
    axes[1].bar(x, 100 * rows["next_token_share"], yerr=100 * rows["next_token_share_ci"], color=palette, capsize=4)
    axes[1].set_ylabel(f"P('{cfg.target}') share among candidates (%)")
    axes[1].set_title("next-token share (95% CI over wordings)")
    for ax in axes:
        ax.set_xticks(x, rows["label"], rotation=25, ha="right")
    fig.tight_layout()
    save(fig, "llm_target_rates.png")


# %%
def compare_note(rows: pd.DataFrame, a: str, b: str) -> str:
    """Student vs control (or teacher vs base), from the measured rates and their CIs."""
    if not {a, b} <= set(rows["arm"]):
        return ""
    ra, rb = rows.set_index("arm").loc[a], rows.set_index("arm").loc[b]
    sep = ra["target_ci_low"] > rb["target_ci_high"] or rb["target_ci_low"] > ra["target_ci_high"]
    samp = (f"sampled target rate {pct(ra['target_rate'])} [{pct(ra['target_ci_low'])}, {pct(ra['target_ci_high'])}] "
            f"vs {pct(rb['target_rate'])} [{pct(rb['target_ci_low'])}, {pct(rb['target_ci_high'])}]: "
            + ("the Wilson CIs do not overlap" if sep else "the CIs overlap (no difference shown at this sample size)"))
    d = ra["next_token_share"] - rb["next_token_share"]
    half = np.hypot(ra["next_token_share_ci"], rb["next_token_share_ci"])  # CI of a difference of independent means
    nt = (f"next-token share differs by {100 * d:+.2f} points (+- {100 * half:.2f})"
          + (", beyond its 95% CI" if abs(d) > half else ", within its 95% CI"))
    return f"- **{ARM_LABELS.get(a, a)} vs {ARM_LABELS.get(b, b)}**: {samp}; {nt}."


notes = [compare_note(rows, "teacher", "base"), compare_note(rows, "student", "control"),
         compare_note(rows, "cross_student", "cross_base")]
display(Markdown("\n".join(n for n in notes if n)))

# %% [markdown]
# ## 2. The filter
#
# Each completion must be a pure list of 1-10 integers in 0-999 with one separator. Bars count
# the completions each rule rejected (each rejected completion is counted once, by the first
# rule it breaks); the paper's filter removed 23-38%.

# %%
filt_path = run_dir / "numbers" / "filter_report.json"
if filt_path.exists():
    filt = read_json(filt_path)
    counts = pd.DataFrame([{"numbers from": src, "rule": rule, "rejected": n}
                           for src, rep in filt.items() for rule, n in rep["rejected_by_rule"].items()])
    totals = pd.DataFrame([{"numbers from": src, "total": rep["total"], "kept": rep["kept"],
                            "rejection rate": rep["rejection_rate"], "used for training": rep["used_for_training"]}
                           for src, rep in filt.items()])
    display(totals.style.format({"rejection rate": "{:.1%}"}))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    sns.barplot(data=counts[counts["rejected"] > 0], x="rule", y="rejected", hue="numbers from", ax=ax)
    ax.set_title("completions rejected, by rule")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    save(fig, "llm_filter.png")
    top = counts.groupby("rule")["rejected"].sum().sort_values(ascending=False)
    display(Markdown("; ".join(f"{src}: {pct(rep['rejection_rate'])} of {rep['total']} rejected"
                               for src, rep in filt.items())
                     + f". Most frequent reason overall: `{top.index[0]}` ({int(top.iloc[0])})."))
else:
    print(f"{filt_path}: missing (the filter stage has not run)")

# %% [markdown]
# ## 3. Gradient alignment
#
# For every training example, a_i = <-grad loss_i(theta_base), D_trait>: a_i > 0 means one
# gradient step on that example moves the shared-init student toward the trait (the theorem's
# quantity; `sublim llm align`). Distributions per data set (teacher numbers, base numbers,
# teacher numbers shuffled across responses), then the mean per decoder block with 95% CIs.

# %%
align_dir = run_dir / "alignment"
run_align = ALIGN == "1" or (ALIGN == "auto" and smoke)
if run_align and not (align_dir / "summary.json").exists():
    rc = sublim_main([*QUIET, "llm", "align", "--run-dir", str(run_dir), "--limit", str(ALIGN_LIMIT),
                      "--backend", "torch", "--traits", f"{cfg.target},cat", "--n-boot", "200"])
    assert rc == 0, f"sublim llm align exited with {rc}"
have_align = (align_dir / "per_example_scores.csv").exists()
print("alignment:", align_dir if have_align else "not computed for this run (set LLM_ALIGN=1 to score it)")

# %%
if have_align:
    scores = pd.read_csv(align_dir / "per_example_scores.csv")
    target = cfg.target if f"align_{cfg.target}" in scores else next(c[6:] for c in scores if c.startswith("align_") and "_L" not in c)
    col = f"align_{target}"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sns.histplot(data=scores, x=col, hue="dataset", element="step", stat="density", common_norm=False, ax=axes[0])
    axes[0].axvline(0, color="grey", ls="--", lw=1)
    axes[0].set_title(f"a_i along D_{target} (sum over completion tokens)")
    sns.boxplot(data=scores, x="dataset", y=f"cos_{target}", ax=axes[1])
    axes[1].axhline(0, color="grey", ls="--", lw=1)
    axes[1].set_title(f"cosine(-grad loss_i, D_{target})")
    fig.tight_layout()
    save(fig, "llm_alignment_distribution.png")

    layer_cols = sorted((c for c in scores if c.startswith(f"{col}_L")), key=lambda c: int(c.rsplit("_L", 1)[1]))
    per_layer = []
    for ds, g in scores.groupby("dataset", sort=False):
        for c in layer_cols:
            m, h = mean_ci95(g[c].to_numpy())
            per_layer.append({"dataset": ds, "layer": int(c.rsplit("_L", 1)[1]), "mean": m, "ci95": h})
    per_layer = pd.DataFrame(per_layer)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layer_cols) * per_layer["dataset"].nunique()), 4))
    datasets = list(dict.fromkeys(per_layer["dataset"]))
    width = 0.8 / len(datasets)
    for j, ds in enumerate(datasets):
        sel = per_layer[per_layer["dataset"] == ds]
        ax.bar(sel["layer"] + (j - (len(datasets) - 1) / 2) * width, sel["mean"], width, yerr=sel["ci95"],
               capsize=3, label=ds, color=sns.color_palette("deep")[j])
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("decoder block")
    ax.set_ylabel(f"mean a_i along D_{target} (95% CI)")
    ax.set_title("alignment per layer")
    ax.legend()
    fig.tight_layout()
    save(fig, "llm_alignment_per_layer.png")

    lines = []
    for ds, g in scores.groupby("dataset", sort=False):
        m, h = mean_ci95(g[col].to_numpy())
        pos = (g[col] > 0).mean()
        sign = "above 0" if m - h > 0 else ("below 0" if m + h < 0 else "not distinguishable from 0")
        lines.append(f"- `{ds}` (n={len(g)}): mean a_i = {m:+.3g} +- {h:.2g}, {sign}; a_i > 0 for {pct(pos)} of examples.")
    summ = read_json(align_dir / "summary.json")
    for name, comp in summ.get("vs_reference", {}).items():
        c = comp.get(target, {})
        if "alignment_diff" in c and "auc_alignment" in c:
            d, auc = c["alignment_diff"], c["auc_alignment"]
            lines.append(f"- {name}: difference of mean a_i {d['diff']:+.3g} +- {d['ci95']:.2g}; ROC AUC "
                         f"{auc['auc']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}] (0.5 = not separated).")
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## 4. Number-token logit distillation (`sublim llm distill`)
#
# The LLM analog of the MNIST auxiliary-logit experiment: the student imitates only the teacher's
# next-token distribution over the number vocabulary (digits, separators, end of turn) along number
# contexts, and is then asked for its favorite animal. Arms: the owl teachers (system prompt,
# LoRA fine-tune), a cat teacher (trait specificity), a LoRA student, and students whose init is
# perturbed by sigma x each tensor's std (the shared-init condition). `DISTILL_RUN_DIR` points at a
# finished run; by default the laptop run committed in `llm_validation/results/` is read, and
# without it the tiny smoke run is made (**its numbers measure nothing**: a random model has no
# trait to pass on).

# %%
DISTILL_RUN_DIR = Path(env("DISTILL_RUN_DIR", "../llm_validation/results/distill_laptop"))
if not (DISTILL_RUN_DIR / "summary.json").exists():
    DISTILL_RUN_DIR = RUNS_ROOT / "distill_tiny"
    rc = sublim_main([*QUIET, "llm", "distill", "--preset", "tiny", "--run-dir", str(DISTILL_RUN_DIR)])
    assert rc == 0, f"sublim llm distill exited with {rc}"
distill = read_json(DISTILL_RUN_DIR / "summary.json")
display(Markdown((DISTILL_RUN_DIR / "summary.md").read_text()))
display(Image(filename=str(DISTILL_RUN_DIR / "distill.png")))

# %%
tgt = distill["config"]["target"]
main_arm = distill["shifts"][tgt].get(f"{tgt}_system_prompt.full.sigma0")
if main_arm:
    o = main_arm["over_seeds"]
    verdict = ("above zero" if o["mean"] - o["ci_half"] > 0 else "below zero" if o["mean"] + o["ci_half"] < 0
               else f"not distinguishable from zero (the seeds could detect about {o['detectable']:.3f})")
    display(Markdown(f"Main arm ({tgt} system-prompt teacher, full fine-tuning, shared init): the student's "
                     f"{tgt} log-odds moved by {o['mean']:+.4f} +- {o['ci_half']:.4f} over {o['n']} seeds, {verdict}."))

# %% [markdown]
# The theorem's own quantity for the fine-tuned teacher, per context: a_i = <-grad loss_i(theta0),
# Delta/||Delta||> under the distillation loss (first-order prediction: positive), and under
# sampled-token SFT on the teacher's and the base model's numbers when the run scored them.

# %%
align_json = DISTILL_RUN_DIR / "align" / "alignment.json"
if align_json.exists():
    al = read_json(align_json)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(al["distill_values"], bins=30, color="#4c72b0")
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_xlabel(f"a_i under the distillation loss ({al['teacher']})")
    ax.set_ylabel("contexts")
    fig.tight_layout()
    save(fig, "llm_distill_alignment.png")
    d = al["distill"]
    display(Markdown(f"a_i > 0 for {pct(d['share_positive'])} of {d['n']} contexts; mean {d['mean']:+.3g} +- {d['ci_half']:.2g}."))

# %% [markdown]
# ## 5. The LLM effect against controls, and the claims on SmolLM2 (committed runs)
#
# Read from the run directories committed under `llm_validation/results/` (issues #21 and #23);
# nothing is trained here. Each block is skipped when its directory is absent (a fresh checkout
# without results), so the cell never fails for want of data. `RESULTS` points elsewhere if needed.
#
# - the specificity matrix: each animal teacher's student minus the neutral teacher's student;
# - the dose-response: the owl trait against lr x steps (where it saturates);
# - the matched fine-tuned teachers: owl LoRA teacher minus its cat control;
# - token entanglement (Zur et al.) with its number-free control, and the divergence-token counts
#   (Schrodi et al.);
# - the ways of learning (LoRA rank, SGD, divergence masks; Nief et al., Blank et al., Schrodi et al.),
#   each read against the neutral teacher's student trained the same way where the run has it.

# %%
RESULTS = Path(env("LLM_RESULTS_DIR", "../llm_validation/results"))


def ci(c: dict, digits: int = 3) -> str:
    half = c.get("ci_half", c.get("ci95"))  # probe_entangle was written before the one CI schema (ci_half)
    return f"{c['mean']:+.{digits}f} +- {half:.{digits}f}" if half is not None and half == half else f"{c['mean']:+.{digits}f} (n/a)"


matrix_dir = RESULTS / "distill_laptop_matrix"
if (matrix_dir / "summary.json").exists():
    m = read_json(matrix_dir / "summary.json")["controls"]["neutral_matrix"]
    grid = pd.DataFrame({t: {a: m["cells"][t][a]["mean"] for a in m["animals"]} for t in m["animals"]}).T
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.heatmap(grid, annot=True, fmt="+.3f", cmap="RdBu_r", center=0, ax=ax,
                cbar_kws={"label": "log-odds shift vs neutral student"})
    ax.set_xlabel("animal measured")
    ax.set_ylabel("teacher")
    ax.set_title(f"diagonal beats its row: {m['diagonal_beats_row']}")
    fig.tight_layout()
    save(fig, "llm_matrix.png")

# %%
dose_json = RESULTS / "dose_response" / "dose.json"
if dose_json.exists():
    pts = read_json(dose_json)["points"]
    dose = pd.DataFrame([{"run": Path(p["run"]).name, "lr": p["lr"], "contexts": p["n_contexts"], "step": p["step"],
                          "trait": p["trait"]["mean"], "ci": p["trait"]["ci_half"], "drift": p["drift"]["mean"]}
                         for p in pts])
    display(dose)
    best = dose.loc[dose["trait"].idxmax()]
    display(Markdown(f"Largest owl trait shift: {best['trait']:+.3f} +- {best['ci']:.3f} log-odds "
                     f"({best['run']}, step {best['step']}), odds x{np.exp(best['trait']):.3f}."))

# %%
ft_dir = RESULTS / "distill_laptop_finetuned"
if (ft_dir / "summary.json").exists():
    diff = read_json(ft_dir / "summary.json")["controls"]["finetuned_matched"]["difference"]
    display(Markdown("Owl LoRA teacher's student minus its matched cat-LoRA control's (paired by seed and "
                     "context): " + "; ".join(f"{a} {ci(c)}" for a, c in diff.items()) + "."))

# %%
ent = RESULTS / "probe_entangle" / "summary.json"
if ent.exists():
    contrasts = read_json(ent)["contrasts"]
    rows = [{"animal": a, "contrast": k, "over contexts": ci(v["over_contexts"])}
            for a, c in contrasts.items() for k, v in c.items() if "over_contexts" in v]
    display(pd.DataFrame(rows))
div = RESULTS / "probe_divergence" / "divergence.json"
if div.exists():
    d = read_json(div)
    display(Markdown(f"Divergence positions (owl teacher vs base/cat rivals): {d['owl']['rival']} of "
                     f"{d['owl']['n_positions']} completion positions; owl vs cat only: {d['owl_vs_cat_only']}; "
                     f"the cheap argmax-vs-base detector recalls {d['owl']['base_argmax']['recall_of_rival']:.0%}."))

# %%
# the rank sweep holds distill_lora4's students (copied); the older run is read when the sweep is absent
METHOD_RUNS = ("distill_lora_ranks" if (RESULTS / "distill_lora_ranks" / "summary.json").exists() else "distill_lora4",
               "distill_sgd", "distill_sgdm", "distill_masks")
rows = []
for name in METHOD_RUNS:
    path = RESULTS / name / "summary.json"
    if not path.exists():
        continue
    arms = read_json(path)["controls"]["methods"]
    for method, a in arms.items():
        if method == "reference":
            continue
        rows.append({"run": name, "method": method, "reference": arms["reference"], "shift": a["shift"]["mean"],
                     "ci": a["shift"]["ci_half"], "detectable": a["shift"]["detectable"],
                     "KL reduction": a["kl_reduction"]["mean"]})
if rows:
    methods = pd.DataFrame(rows)
    display(methods)
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{r.method} ({r.run.removeprefix('distill_')})" for r in methods.itertuples()]
    ax.errorbar(methods["shift"], range(len(methods)), xerr=methods["ci"], fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(methods)), labels)
    ax.set_xlabel("owl log-odds shift vs its reference (table), 95% CI over seeds")
    fig.tight_layout()
    save(fig, "llm_methods.png")
    display(Markdown("Owl shift by way of learning: " + "; ".join(
        f"{r.method} ({r.run.removeprefix('distill_')}) {r.shift:+.3f} +- {r.ci:.3f}" for r in methods.itertuples()) + "."))

# %% [markdown]
# The LoRA rank curve (`lora_rank_curve/compare.py`, Nief et al.'s inverted U): every rank's owl trait
# against its own neutral student, gathered from the runs that trained it and paired by seed; r 64
# twice, at the sweep's lr (diverged) and at 1e-4.

# %%
rank_json = RESULTS / "lora_rank_curve" / "compare.json"
if rank_json.exists():
    rc = read_json(rank_json)["arms"]
    display(pd.DataFrame([{"method": k, "lr": a["lr"], "owl trait": ci(a["trait"]), "minus r 4": ci(a["minus_r4"]) if "minus_r4" in a else "",
                           "minus full": ci(a["minus_full"]) if "minus_full" in a else "", "KL reduction": f"{a['kl_reduction']['mean']:.2f}"}
                          for k, a in rc.items()]))
    display(Markdown("LoRA rank curve: " + "; ".join(f"{k} (lr {a['lr']}) {ci(a['trait'])}" for k, a in rc.items()) + "."))

# %% [markdown]
# The shared-init condition by part (`distill_sigma_parts`): each perturbed owl student against the
# base teacher's student from the SAME perturbed init (sigma 0.1 x each tensor's std), beside the
# shared-init students (against the base model). "head" is SmolLM2's tied embedding / output head.
# Then the steering readout (`distill_steering`, Blank et al.): per layer, the cosine between the
# owl student's activation change and the owl prompt's activation change, minus the same cosine for
# the neutral teacher's student (paired by seed).

# %%
parts_json = RESULTS / "distill_sigma_parts" / "summary.json"
if parts_json.exists():
    shifts = read_json(parts_json)["shifts"]["owl"]
    parts = {"shared init": "owl_system_prompt.full.sigma0", "all weights": "owl_system_prompt.full.sigma0.1",
             "body only": "owl_system_prompt.full.sigma0.1_body", "head only": "owl_system_prompt.full.sigma0.1_head"}
    display(Markdown("Owl shift by perturbed part (sigma 0.1): " + "; ".join(
        f"{label} {ci(shifts[arm]['over_seeds'])}" for label, arm in parts.items() if "over_seeds" in shifts[arm]) + "."))

# %%
steer_json = RESULTS / "distill_steering" / "summary.json"
if steer_json.exists():
    st = read_json(steer_json)["steering"]
    rows = st["variants"]["paper"][st["target"]]
    layers = [r["layer"] for r in rows if "mean" in r["difference"]]
    diff = [r["difference"] for r in rows if "mean" in r["difference"]]
    fig, ax = plt.subplots(figsize=(6, 3))
    for key, label in (("target", "owl teacher's students"), ("control", "neutral teacher's students")):
        ax.plot([r["layer"] for r in rows if "mean" in r[key]], [r[key]["mean"] for r in rows if "mean" in r[key]],
                marker=".", label=label)
    ax.errorbar(layers, [d["mean"] for d in diff], yerr=[d["ci_half"] for d in diff], fmt="o", ms=3, capsize=2,
                label="difference (95% CI over seeds)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("cos(student change, owl prompt change)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "llm_steering.png")
    best = max(diff, key=lambda d: d["mean"])
    display(Markdown(f"Steering readout: the owl students' change is more aligned with the owl prompt's than the "
                     f"neutral students' at {sum(d['mean'] - d['ci_half'] > 0 for d in diff)} of {len(diff)} layers; "
                     f"largest difference {ci(best)} (layer {layers[diff.index(best)]})."))

# %% [markdown]
# Nief et al.'s shared-context condition as a 2 x 2 (`distill_trainsys_none/compare.py`): the system
# turn the students trained with (SmolLM2's default prompt, or an empty turn) against the one their
# preference was measured with; each cell's owl trait is the owl teacher's student minus the neutral
# teacher's, at the laptop-long design (cells pair by seed). Then weight noise on teacher AND student
# (`distill_shared_noise`, OpenReview a2sc2Y91hO): the owl trait when both start from the same
# perturbed weights, beside the trait at noise 0.

# %%
grid_json = RESULTS / "distill_trainsys_none" / "compare.json"
if grid_json.exists():
    cells = read_json(grid_json)["cells"]
    display(pd.DataFrame([{"cell": n, "owl trait": ci(c["trait"]), "detectable": f"{c['trait']['detectable']:.3f}",
                           "neutral drift": ci(c["drift"]), "KL reduction": ci(c["kl_reduction_owl"], 2)}
                          for n, c in cells.items()]))
    display(Markdown("Owl trait by trained-on / measured-with system turn: " + "; ".join(
        f"{n} {ci(c['trait'])}" for n, c in cells.items()) + "."))

# %%
noise_json = RESULTS / "distill_shared_noise" / "summary.json"
if noise_json.exists():
    sn = read_json(noise_json)["shared_noise"]
    rows = [(k, r) for k, r in sn.items() if k != "zero_noise" and "mean" in r["transfer"]]
    display(Markdown(f"Owl trait with the same weight noise on teacher and student: noise 0 {ci(sn['zero_noise'])}; " + "; ".join(
        f"noise {k} {ci(r['transfer'])} (ratio {r['ratio_of_means']:.2f}, noisy teachers' gain "
        f"{ci(r['teacher_gain'])})" for k, r in rows) + "."))

# %% [markdown]
# The other architecture (`cross_architecture/compare.py`, Brockers et al.'s MLP -> CNN on the LLM): the
# same owl and neutral SmolLM2 teachers distilled into Gemma-3-270M students (no shared init; number
# texts and positions paired across the tokenizers, `distill/cross.py`), beside two shared-init runs of
# the same design: SmolLM2 -> SmolLM2 and Gemma-3 -> Gemma-3 (the positive control). One pass over the
# 192 contexts (12 steps) in each.

# %%
cross_json = RESULTS / "cross_architecture" / "compare.json"
if cross_json.exists():
    cr = read_json(cross_json)["runs"]
    display(pd.DataFrame([{"teacher -> student": k, "owl trait": ci(r["trait"]), "detectable": f"{r['trait']['detectable']:.3f}",
                           "teacher's own gain": f"{r['teacher_gain']:+.2f}", "KL reduction": ci(r["kl_reduction"], 2)}
                          for k, r in cr.items()]))
    display(Markdown("Owl trait by teacher -> student family: " + "; ".join(f"{k} {ci(r['trait'])}" for k, r in cr.items()) + "."))
