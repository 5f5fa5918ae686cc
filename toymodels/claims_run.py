"""`sublim toy claims NAME`: the named claims, their run directories, summaries and figures.

Each claim (CLAIMS) is a set of arms (claims.ArmSpec) distilled from one set of trained teachers
at the paper's settings (ToyConfig defaults, 10 models). A run directory holds config.json (the
claim, the base config and every arm, written once: sublim.rundir.claim_run_dir), teachers.json,
arms/<arm>.json for each finished arm (atomic; a rerun keeps them after checking their stored
spec, and computes only the missing ensembles, retraining the teachers, which are deterministic
for a config and machine), then summary.json / summary.csv (LAST: the run is finished) and the
figures. Every arm is compared with the claim's baseline arm model by model (paired: same teacher,
same noise): mean difference, its 95% CI, and the smallest difference the run could detect.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

from sublim.errors import ConfigError, SublimError
from sublim.executors import Resources, run_tasks
from sublim.progress import log
from sublim.rundir import atomic_write_bytes, figure_png, atomic_write_json, atomic_write_text, claim_run_dir, read_json
from sublim.stats import mean_ci95

from .claims import ArmSpec, ensembles, run_ensemble, train_teacher_bank
from .config import ToyConfig, from_overrides
from .sweep import _MNIST_CACHE, cached_mnist, check_executor_args, default_threads

SGD_LRS = (0.03, 0.1, 0.3)  # plain SGD: lr 1 already raised the aux KL in the pilot (FINDINGS)
SGDM_LRS = (0.003, 0.01, 0.03)  # momentum 0.9: effective step lr / (1 - 0.9) = 10x larger
SIGMAS = (0.03, 0.1, 0.3, 1.0)
PART_SIGMAS = (0.3,)  # body only / head only: one sigma each (CPU budget of the 2026-12-02 run)
# optimizer_matched: the largest stable plain lr of the grid (0.3, KL 0.27x of its first step after
# 5 epochs), lr 1 (0.36x after 5 epochs but larger late steps) and momentum 0.9 at lr 0.03 (the
# same effective step as 0.3); each model trains until its aux KL has fallen as far as Adam's
# student of the same teacher, or for MATCH_CAP x 5 epochs. The committed 5-epoch curves fall ~ as
# epochs^-0.4 near the end (lr 0.3: 0.293 -> 0.268 from epoch 4 to 5), which reaches Adam's 0.052x
# after ~200 epochs at lr 0.3: a cap of 40 x 5 epochs brackets that, and records where it stops.
MATCHED_SGD = ((0.3, 0.0), (1.0, 0.0), (0.03, 0.9))
MATCH_CAP = 40


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    source: str
    arms: tuple
    baseline: str = "shared"


def _heads() -> tuple:
    return (ArmSpec("shared"), ArmSpec("independent", init="independent"),
            ArmSpec("head_shared", init="head_shared"), ArmSpec("body_shared", init="body_shared"),
            ArmSpec("depth1_head_copied", init="head_shared", depth=1),
            ArmSpec("depth3_head_copied", init="head_shared", depth=3))


def _optimizer() -> tuple:
    return ((ArmSpec("shared"),)
            + tuple(ArmSpec(f"sgd_lr{lr:g}", optimizer="sgd", lr=lr) for lr in SGD_LRS)
            + tuple(ArmSpec(f"sgdm0.9_lr{lr:g}", optimizer="sgd", lr=lr, momentum=0.9) for lr in SGDM_LRS))


def _sigma() -> tuple:
    arms = [ArmSpec("shared")]
    arms += [ArmSpec(f"all_s{s:g}", init="perturbed", part="all", sigma=s) for s in SIGMAS]
    arms += [ArmSpec(f"{part}_s{s:g}", init="perturbed", part=part, sigma=s) for part in ("body", "head") for s in PART_SIGMAS]
    return tuple(arms + [ArmSpec("independent", init="independent")])


def _heads_cnn() -> tuple:
    # the MLP arms again beside the CNN ones (same teachers, same noise), so the CNN students are
    # compared within one run; `heads` keeps its committed arm set
    return (ArmSpec("shared"), ArmSpec("independent", init="independent"), ArmSpec("head_shared", init="head_shared"),
            ArmSpec("cnn_head_copied", init="head_shared", arch="cnn"),
            ArmSpec("cnn_fresh_head", init="independent", arch="cnn"))


def _optimizer_matched() -> tuple:
    sgd = tuple(ArmSpec(f"{'sgdm' + format(mom, 'g') if mom else 'sgd'}_lr{lr:g}_matched", optimizer="sgd", lr=lr,
                        momentum=mom, match="shared", cap_factor=MATCH_CAP) for lr, mom in MATCHED_SGD)
    return (ArmSpec("shared"), ArmSpec("independent", init="independent")) + sgd


CLAIMS = {
    "heads": Claim("heads", "shared output head vs shared hidden layers vs another depth with a copied head",
                   "Brockers et al., arXiv 2605.23645", _heads()),
    "optimizer": Claim("optimizer", "Adam vs SGD (with and without momentum), SGD lr grid for matched KL reduction",
                       "Blank et al., arXiv 2606.00995", _optimizer()),
    # the grid's largest stable lr (0.3) left SGD's KL 5x above Adam's: larger steps, to bracket the match
    "optimizer_highlr": Claim("optimizer_highlr", "Adam vs plain SGD at lr 1 and 3 (above the optimizer claim's grid)",
                              "Blank et al., arXiv 2606.00995",
                              (ArmSpec("shared"),) + tuple(ArmSpec(f"sgd_lr{lr:g}", optimizer="sgd", lr=lr) for lr in (1.0, 3.0))),
    "heads_cnn": Claim("heads_cnn", "a CNN student with the teacher's init head copied vs a CNN with a fresh head",
                       "Brockers et al., arXiv 2605.23645 (MLP -> CNN)", _heads_cnn()),
    "optimizer_matched": Claim("optimizer_matched", "SGD (plain, momentum) trained until its aux KL falls as far as "
                               "Adam's, model by model (capped): transfer at matched imitation loss",
                               "Blank et al., arXiv 2606.00995", _optimizer_matched()),
    "alignment": Claim("alignment", "per-step alignment of the student's update with the teacher's, whole run",
                       "Kitkana & Arora, arXiv 2604.25779",
                       (ArmSpec("shared"), ArmSpec("shared_all_logits", outputs="all"),
                        ArmSpec("independent", init="independent"))),
    "sigma": Claim("sigma", "student init = teacher's init + sigma noise on all weights / body only / head only",
                   "weight-noise reports; this lab's sigma curve (FINDINGS 2026-11-29)", _sigma()),
}

TINY = dict(n_models=3, width=32, teacher_epochs=1, distill_epochs=1, max_examples_per_epoch=2048,
            max_test_examples=1000, batch_size=256)


def claim_config(name: str, overrides: dict | None = None, tiny: bool = False,
                 match_cap: int | None = None) -> tuple[Claim, ToyConfig]:
    """The claim and its config, validated. match_cap: another epoch cap (x distill_epochs) for
    the matched arms (the arms' spec, so config.json records it), e.g. a cheaper run than 40 x 5."""
    if name not in CLAIMS:
        raise ConfigError(f"unknown claim {name!r}; choose from {', '.join(CLAIMS)}")
    cfg = from_overrides({**(TINY if tiny else {}), **(overrides or {})})
    claim = CLAIMS[name]
    if match_cap is not None:
        if not any(a.match for a in claim.arms) or match_cap < 1:
            raise ConfigError(f"--match-cap is for claims with matched arms (optimizer_matched), >= 1; got {match_cap} for {name}")
        claim = dataclasses.replace(claim, arms=tuple(dataclasses.replace(a, cap_factor=match_cap) if a.match else a
                                                      for a in claim.arms))
    if cfg.student_init != "shared" or cfg.arms != ToyConfig().arms:
        raise ConfigError("claims set each arm's init and arms themselves; leave --student-init and --arms at their defaults")
    if cfg.n_models < 2:
        raise ConfigError("claims compare arms across models: n_models >= 2")
    ensembles(list(claim.arms), cfg)  # an arm that does not fit this config is refused here
    names = {a.name: a for a in claim.arms}
    for a in claim.arms:
        if a.match and (a.match not in names or names[a.match].match):
            raise ConfigError(f"claim {name}: arm {a.name} matches {a.match!r}, which must be an unmatched arm of the claim")
    return claim, cfg


def run_config(claim: Claim, cfg: ToyConfig) -> dict:
    return {"claim": claim.name, "source": claim.source, "baseline": claim.baseline, "base": cfg.to_dict(),
            "arms": [a.to_dict() for a in claim.arms]}


def run_claim(out: Path, claim: Claim, cfg: ToyConfig, data=None, *, executor: str = "local",
              address: str | None = None, threads: int | None = None) -> dict:
    """Compute the missing arms (resuming), then write the summary and figures; returns the summary.

    Each missing ensemble is one task (compute_ensemble) on `executor` (sublim.executors): "local"
    runs them here, one after another, on one set of teachers; "ray" runs each as a Ray task that
    trains its own teachers (deterministic for a config, machine and thread count: the same
    numbers) and loads its own MNIST. Results come back to this process, which alone writes them.
    Matched arms (ArmSpec.match) need their target arm's KL first: they run in a second wave."""
    out = Path(out)
    threads = default_threads() if threads is None else threads
    check_executor_args(executor, [cfg], data, threads)
    if executor == "local" and address:  # refused before the directory is claimed, not by the executor
        raise ConfigError("--address is for --executor ray (the local executor runs in this process)")
    with claim_run_dir(out, run_config(claim, cfg)):
        done = finished_arms(out, claim)
        todo = [g for g in ensembles(list(claim.arms), cfg) if any(a.name not in done for a in g)]
        cache: dict = {}  # the local executor's teachers, trained once for every task of the run
        for wave in ([g for g in todo if not g[0].match], [g for g in todo if g[0].match]):
            run_wave(out, claim, cfg, wave, done, data, cache, executor=executor, address=address, threads=threads)
        teachers = read_json(out / "teachers.json")
        summary = summarize_claim(claim, cfg, done, teachers)
        atomic_write_text(out / "summary.csv", summary_csv(summary))
        atomic_write_bytes(out / "accuracy.png", accuracy_png(claim, summary, done))
        atomic_write_bytes(out / "alignment.png", alignment_png(claim, done))
        atomic_write_json(out / "summary.json", summary)
    return summary


def finished_arms(out: Path, claim: Claim) -> dict:
    """The arm files already written, each checked to hold the arm this claim asks for."""
    done = {}
    for arm in claim.arms:
        path = out / "arms" / f"{arm.name}.json"
        if path.exists():
            rec = read_json(path)
            if rec["arm"] != arm.to_dict():
                raise SublimError(f"{path}: holds another arm than this claim asks for; use a new --out")
            done[arm.name] = rec
    return done


def match_targets(group: list[ArmSpec], done: dict) -> np.ndarray | None:
    """(n_models, k) per-model KL reductions the group's matched arms train to (None: unmatched)."""
    if not group[0].match:
        return None
    return np.stack([np.asarray(done[a.match]["kl_ratio_final_over_first"], dtype=np.float64) for a in group], axis=1)


def run_wave(out: Path, claim: Claim, cfg: ToyConfig, wave: list, done: dict, data, cache: dict, *,
             executor: str, address: str | None, threads: int) -> None:
    """One task per ensemble of the wave; each result is written here as it arrives."""
    tasks, names = {}, {}
    for group in wave:
        key = "+".join(a.name for a in group)
        names[key] = group
        tasks[key] = (compute_ensemble, (claim.name, cfg, tuple(group), match_targets(group, done), threads,
                                         data if executor == "local" else None, cache if executor == "local" else {}))
        log(f"claims {claim.name}: ensemble {key}")

    def save(key: str, result: dict) -> None:  # on the driver, as each ensemble finishes
        atomic_write_json(out / "teachers.json", result["teachers"])  # the same teachers in every task
        for a in names[key]:
            done[a.name] = result["arms"][a.name]
            atomic_write_json(out / "arms" / f"{a.name}.json", done[a.name])

    resources = Resources(cpus=threads, gpus=1 if cfg.device.startswith("cuda") else 0)
    run_tasks(tasks, executor=executor, address=address, resources=resources, on_result=save,
              desc=f"{claim.name}: ensembles")


def compute_ensemble(claim_name: str, cfg: ToyConfig, group: tuple, targets, threads: int, data=None,
                     cache: dict | None = None) -> dict:
    """One ensemble of arms, wherever it runs: {"teachers": teachers.json, "arms": {name: record}}.

    The thread count is pinned here (as the sweep's cells do): torch does not promise the same
    floats across thread counts, so a task's numbers depend on its config and `threads` only."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = data if data is not None else cached_mnist(_MNIST_CACHE, cfg)
        cache = {} if cache is None else cache
        if "bank" not in cache:
            cache["bank"] = train_teacher_bank(cfg, data, desc=f"{claim_name}: teachers")
        bank = cache["bank"]
        names = "+".join(a.name for a in group)
        t0 = time.perf_counter()
        results = run_ensemble(cfg, list(group), bank, data, desc=f"{claim_name}: {names}", targets=targets)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    teachers = {"teacher_accuracy": bank.teacher_accuracy.tolist(),
                "reference_accuracy": bank.reference_accuracy.tolist(), "wall_s": bank.wall_s}
    return {"teachers": teachers, "arms": {a.name: arm_record(a, results[a.name], wall, len(group)) for a in group}}


def _r(x: np.ndarray, digits: int = 6) -> list:
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


def arm_record(arm: ArmSpec, res: dict, ensemble_wall_s: float, ensemble_size: int) -> dict:
    """Everything an arm's file holds: its spec, per-model numbers, the loss and alignment curves."""
    align = {}
    for key, v in res["alignment"].items():  # (steps, models)
        m, h = zip(*(mean_ci95(row) for row in v))
        align[key] = {"mean": _r(m, 8), "ci95": _r(h, 8), "per_model": _r(v.T, 6)}
    first, last = res["first_loss"], res["epoch_loss"][-1]
    rec = {"arm": arm.to_dict(), "test_accuracy": _r(res["accuracy"]),
           "first_step_kl": _r(first, 10), "epoch_mean_kl": _r(res["epoch_loss"], 10),
           "kl_ratio_final_over_first": _r(last / first, 6),
           "alignment": align, "ensemble_wall_s": ensemble_wall_s, "ensemble_size": ensemble_size}
    if "match" in res:  # matched arms: where each model stopped (MatchStop)
        m = res["match"]
        rec["match"] = {"steps_taken": [int(v) for v in m["steps_taken"]], "matched": [bool(v) for v in m["matched"]],
                        "kl_ratio_at_stop": _r(m["kl_ratio_at_stop"], 6)}
    return rec


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over models, its 95% CI (Student-t), and the smallest true difference this n
    detects with 80% power at the 5% level (two-sided paired t: (t_.975 + t_.80) x SE)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, half = mean_ci95(d)
    n = d.size
    se = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    mde = (sps.t.ppf(0.975, n - 1) + sps.t.ppf(0.80, n - 1)) * se if n > 1 else float("nan")
    return {"mean": mean, "ci95": half, "min_detectable": float(mde), "n": int(n)}


def summarize_claim(claim: Claim, cfg: ToyConfig, done: dict, teachers: dict) -> dict:
    base = np.asarray(done[claim.baseline]["test_accuracy"])
    # the no-transfer control, where the claim has one: is there ANY transfer above a fresh init?
    control = np.asarray(done["independent"]["test_accuracy"]) if "independent" in done else None
    rows = []
    for arm in claim.arms:
        rec = done[arm.name]
        acc = np.asarray(rec["test_accuracy"])
        mean, half = mean_ci95(acc)
        cos = rec["alignment"].get("cos")
        dot = rec["alignment"].get("dot")
        ratio = np.asarray(rec["kl_ratio_final_over_first"])
        # per-step increments of the cumulative dot: the sign of (theta_S(t) - theta_S(t-1)) . Delta_T
        step_pos = None
        if dot is not None:
            per_model = np.asarray(dot["per_model"])  # (models, steps)
            inc = np.diff(np.concatenate([np.zeros((per_model.shape[0], 1)), per_model], axis=1), axis=1)
            step_pos = list(mean_ci95((inc > 0).mean(axis=1)))
        rows.append({"arm": arm.name, **{k: v for k, v in arm.to_dict().items() if k != "name"},
                     "mean": mean, "ci95": half, "n": int(acc.size),
                     "vs_baseline": paired(acc, base),
                     "vs_independent": None if control is None else paired(acc, control),
                     "kl_ratio_final_over_first": float(np.mean(ratio)),
                     "final_cos": None if cos is None else cos["mean"][-1],
                     "final_cos_ci95": None if cos is None else cos["ci95"][-1],
                     "min_cos_over_run": None if cos is None else float(np.min(cos["mean"])),
                     "first_step_cos": None if cos is None else cos["mean"][0],
                     "frac_steps_aligned": step_pos,
                     "ensemble_wall_s": rec["ensemble_wall_s"], **match_stats(rec)})
    t_mean, t_half = mean_ci95(teachers["teacher_accuracy"])
    r_mean, r_half = mean_ci95(teachers["reference_accuracy"])
    out = {"claim": claim.name, "title": claim.title, "source": claim.source, "baseline": claim.baseline,
           "n_models": cfg.n_models, "teacher": {"mean": t_mean, "ci95": t_half},
           "reference": {"mean": r_mean, "ci95": r_half}, "teacher_wall_s": teachers["wall_s"], "rows": rows}
    if claim.name == "optimizer":
        out["matched"] = matched_sgd(rows)
    return out


def match_stats(rec: dict) -> dict:
    """A matched arm's summary columns: steps to the target (mean +- 95% CI over models, stopped or
    capped), how many models got there, and the KL reduction where they stopped (empty otherwise)."""
    if "match" not in rec:
        return {}
    m = rec["match"]
    steps, ratio = mean_ci95(np.asarray(m["steps_taken"], dtype=np.float64)), mean_ci95(m["kl_ratio_at_stop"])
    return {"steps_taken": steps[0], "steps_taken_ci95": steps[1], "n_matched": int(sum(m["matched"])),
            "kl_ratio_at_stop": ratio[0], "kl_ratio_at_stop_ci95": ratio[1]}


def matched_sgd(rows: list[dict]) -> dict:
    """For each SGD family (momentum 0 / 0.9): the lr of the grid whose mean final-epoch aux KL over
    first-step KL is closest (in log ratio) to Adam's: the 'matched imitation-loss reduction' arm."""
    adam = next(r for r in rows if r["arm"] == "shared")
    target = adam["kl_ratio_final_over_first"]
    out = {"adam_kl_ratio": target}
    for mom in (0.0, 0.9):
        fam = [r for r in rows if r["optimizer"] == "sgd" and r["momentum"] == mom]
        if fam:
            best = min(fam, key=lambda r: abs(math.log(max(r["kl_ratio_final_over_first"], 1e-300)) - math.log(target)))
            out[f"momentum_{mom:g}"] = {"arm": best["arm"], "lr": best["lr"], "kl_ratio": best["kl_ratio_final_over_first"]}
    return out


def summary_csv(summary: dict) -> str:
    import pandas as pd

    flat = []
    for r in summary["rows"]:
        v = r["vs_baseline"]
        flat.append({**{k: x for k, x in r.items() if k != "vs_baseline"}, "diff_vs_baseline": v["mean"],
                     "diff_ci95": v["ci95"], "diff_min_detectable": v["min_detectable"]})
    buf = io.StringIO()
    pd.DataFrame(flat).to_csv(buf, index=False)
    return buf.getvalue()


def format_claim(summary: dict) -> str:
    lines = [f"claim {summary['claim']}: {summary['title']} ({summary['source']}), n = {summary['n_models']}",
             f"teacher {100 * summary['teacher']['mean']:.1f} +- {100 * summary['teacher']['ci95']:.1f}%, "
             f"reference {100 * summary['reference']['mean']:.1f} +- {100 * summary['reference']['ci95']:.1f}%",
             f"{'arm':<22} {'accuracy':>9}  95% CI   {'vs ' + summary['baseline']:>14}  detectable  KL end/first  cos(end)"]
    for r in summary["rows"]:
        v = r["vs_baseline"]
        cos = "-" if r["final_cos"] is None else f"{r['final_cos']:.3f}"
        lines.append(f"{r['arm']:<22} {100 * r['mean']:>8.1f}%  +-{100 * r['ci95']:<5.1f} {100 * v['mean']:>+8.1f} +-{100 * v['ci95']:<4.1f}"
                     f"  {100 * v['min_detectable']:>8.1f}  {r['kl_ratio_final_over_first']:>12.3g}  {cos:>8}")
    for r in summary["rows"]:
        if "steps_taken" in r:
            lines.append(f"{r['arm']}: {r['n_matched']}/{r['n']} models reached Adam's KL reduction; steps "
                         f"{r['steps_taken']:.0f} +- {r['steps_taken_ci95']:.0f}, KL at stop {r['kl_ratio_at_stop']:.3g}")
    if "matched" in summary:
        lines.append(f"matched SGD (final/first aux KL closest to Adam's {summary['matched']['adam_kl_ratio']:.3g}): "
                     + "; ".join(f"{k}: {v['arm']} ({v['kl_ratio']:.3g})" for k, v in summary["matched"].items() if k != "adam_kl_ratio"))
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt


def _png(fig) -> bytes:
    fig.tight_layout()
    return figure_png(fig, dpi=110)


def accuracy_png(claim: Claim, summary: dict, done: dict) -> bytes:
    plt = _plt()
    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    x = np.arange(len(rows))
    ax.bar(x, [100 * r["mean"] for r in rows], color="#9ecae1")
    ax.errorbar(x, [100 * r["mean"] for r in rows], yerr=[100 * r["ci95"] for r in rows], fmt="none", color="k", capsize=4)
    for i, r in enumerate(rows):
        acc = 100 * np.asarray(done[r["arm"]]["test_accuracy"])
        ax.scatter(np.full(acc.size, i) + np.linspace(-0.2, 0.2, acc.size), acc, s=8, color="#08306b", alpha=0.6)
    ax.axhline(100 * summary["teacher"]["mean"], color="tab:green", ls=":", label="teacher")
    ax.axhline(10, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [r["arm"] for r in rows], rotation=25, ha="right")
    ax.set_ylabel("student test accuracy (%), 95% CI")
    ax.set_ylim(0, 100)
    ax.set_title(f"claim {claim.name}: {claim.source} (n={summary['n_models']})", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def alignment_png(claim: Claim, done: dict) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in claim.arms:
        al = done[arm.name]["alignment"]
        if "cos" not in al:
            continue
        m, h = np.asarray(al["cos"]["mean"]), np.asarray(al["cos"]["ci95"])
        steps = np.arange(1, m.size + 1)
        for ax, log_x in zip(axes, (False, True)):
            ax.plot(steps, m, label=arm.name, lw=1.2)
            ax.fill_between(steps, m - h, m + h, alpha=0.15)
            if log_x:
                ax.set_xscale("log")
    for ax in axes:
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("distillation step")
    axes[0].set_ylabel("cos(theta_S(t) - theta_S(0), theta_T - theta_0), 95% CI")
    axes[1].legend(fontsize=7, loc="best")
    axes[0].set_title(f"claim {claim.name}: student update vs teacher update", fontsize=10)
    return _png(fig)
