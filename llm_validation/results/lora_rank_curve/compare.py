"""One-off (not part of the package): the LoRA rank curve on SmolLM2-135M (issue #23, Nief et al.
2606.00831: "an inverted U in rank, gone under full fine-tuning"), gathered from the runs that trained
each rank. Every run is the laptop-long design (same contexts, teacher caches, seeds and batch order;
alpha / r = 2, Adam, 24 steps), so methods pair by seed across runs:

    full (Adam 3e-5), LoRA r 1, r 4, r 64 at lora_lr 1e-3   distill_lora_ranks
    LoRA r 16 at 1e-3                                      distill_lora16
    LoRA r 16 and r 64 at 1e-4                             distill_lora16_lr1e-4, distill_lora64_lr1e-4 (when they exist)

Per method: the owl trait (owl teacher's student minus the neutral teacher's student trained the same
way, mean over the 55 contexts), the neutral student's drift vs the base model, the owl student's KL
reduction (1 - last / first loss); each method minus full and minus LoRA r 4, paired by seed; 95% CI
over the 3 seeds. Writes compare.json and rank_curve.png here.

    .venv/bin/python llm_validation/results/lora_rank_curve/compare.py
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.llm_validation.distill.controls import seed_ci  # noqa: E402
from sublim.rundir import atomic_write_json, save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
# (label, run directory, method key in that run, LoRA rank or None for full, learning rate)
ARMS = [("full", "distill_lora_ranks", "full", None, "3e-5"),
        ("r 1", "distill_lora_ranks", "lora1", 1, "1e-3"),
        ("r 4", "distill_lora_ranks", "lora4", 4, "1e-3"),
        ("r 16", "distill_lora16", "lora16", 16, "1e-3"),
        ("r 64", "distill_lora_ranks", "lora64", 64, "1e-3"),
        ("r 16, lr 1e-4", "distill_lora16_lr1e-4", "lora16", 16, "1e-4"),
        ("r 64, lr 1e-4", "distill_lora64_lr1e-4", "lora64", 64, "1e-4")]


def arm_numbers(run: str, method: str) -> dict | None:
    path = RESULTS / run / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    m = summary["controls"]["methods"][method]
    drift = summary["shifts"]["owl"][f"neutral_system_prompt.{method}.sigma0"]["per_seed"]
    return {"trait": {int(k): v for k, v in m["shift"]["per_seed"].items()},
            "drift": {int(k): v for k, v in drift.items()}, "kl_reduction": m["kl_reduction"]}


arms = {label: (arm_numbers(run, method), rank, lr, run) for label, run, method, rank, lr in ARMS}
arms = {k: v for k, v in arms.items() if v[0] is not None}
seeds = sorted(arms["full"][0]["trait"])
out = {"seeds": seeds, "arms": {}}
for label, (num, rank, lr, run) in arms.items():
    t = num["trait"]
    out["arms"][label] = {
        "run": run, "rank": rank, "lr": lr, "trait": seed_ci(t[s] for s in seeds),
        "per_seed_trait": {s: t[s] for s in seeds}, "neutral_drift": seed_ci(num["drift"][s] for s in seeds),
        "kl_reduction": num["kl_reduction"],
        **{key: seed_ci(t[s] - arms[ref][0]["trait"][s] for s in seeds)  # none against itself
           for key, ref in (("minus_full", "full"), ("minus_r4", "r 4")) if ref != label}}
atomic_write_json(HERE / "compare.json", out)

fig, ax = plt.subplots(figsize=(7.5, 3.6))
labels = list(out["arms"])
for i, label in enumerate(labels):
    a = out["arms"][label]
    ax.errorbar(i, a["trait"]["mean"], yerr=a["trait"]["ci_half"], fmt="o", capsize=4,
                color="tab:red" if a["rank"] is None else "tab:blue")
    ax.scatter([i] * len(seeds), list(a["per_seed_trait"].values()), s=10, color="grey", zorder=3)
ax.axhline(0, color="black", lw=0.6)
ax.set_xticks(range(len(labels)), [f"{lb}\nKL red. {out['arms'][lb]['kl_reduction']['mean']:+.2f}" for lb in labels],
              fontsize=8)
ax.set_ylabel("owl log-odds, owl - neutral student")
ax.set_title("SmolLM2-135M: transfer by LoRA rank (mean, 95% CI over 3 seeds; dots: seeds)", fontsize=9)
save_figure(fig, HERE / "rank_curve.png")
for label, a in out["arms"].items():
    diffs = "  ".join(f"{key} {a[key]['mean']:+.4f} +- {a[key]['ci_half']:.4f}" for key in ("minus_full", "minus_r4")
                      if key in a)
    print(f"{label:14s} trait {a['trait']['mean']:+.4f} +- {a['trait']['ci_half']:.4f}  {diffs}  "
          f"KL red {a['kl_reduction']['mean']:+.3f}  drift {a['neutral_drift']['mean']:+.3f} +- {a['neutral_drift']['ci_half']:.3f}")
