"""One-off (not part of the package): the other-architecture row on the LLM (issue #23; Brockers et al.
2605.23645, MLP -> CNN on MNIST). Three runs of the same design (laptop-long contexts, the owl and the
neutral system-prompt teachers, full fine-tuning, Adam 3e-5, 12 steps = one pass over 192 contexts,
seeds 0-2, the same batch order):

    SmolLM2 -> SmolLM2 (shared init)   distill_lora4, its step-12 profiles (the same students' first pass)
    SmolLM2 -> Gemma-3 (no shared init) distill_cross_gemma (--student-model gemma3-270m-chat)
    Gemma-3 -> Gemma-3 (shared init)   distill_gemma (--model gemma3-270m-chat): the positive control
    (the *_6seeds runs, seeds 0-5 with 0-2 copied from the 3-seed runs, are read when they exist)

Per run: the owl trait (owl teacher's student minus the neutral teacher's student, paired by seed and
context), the neutral student's drift vs its own base, the owl teacher's own gain, the owl student's KL
reduction after 12 steps (1 - loss at step 12 / loss at step 1); the cross run minus each shared-init run,
paired by seed (same data order) over the seeds both have; the trait after 3 steps too (the Gemma
students' drift grows with training); 95% CI over seeds. Writes compare.json and cross.png here.

    .venv/bin/python llm_validation/results/cross_architecture/compare.py
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
STEP = 12
RUNS = [("SmolLM2 -> SmolLM2", ("distill_lora4",)),
        ("SmolLM2 -> Gemma-3", ("distill_cross_gemma_6seeds", "distill_cross_gemma")),
        ("Gemma-3 -> Gemma-3", ("distill_gemma_6seeds", "distill_gemma"))]


def run_numbers(run: str) -> dict | None:
    d = RESULTS / run
    if not (d / "summary.json").exists():
        return None
    s = json.loads((d / "summary.json").read_text())
    along = s["controls"]["along_training"]["owl"]
    trait = along[str(STEP)]["per_seed"] if str(STEP) in along else s["controls"]["neutral_matrix"]["cells"]["owl"]["owl"]["per_seed"]
    early = along["3"]["per_seed"]
    drift = s["controls"]["generic_drift"]["owl"]["per_seed"]  # the run's final step (12 here, 24 in distill_lora4)
    kl = {}
    for seed in trait:
        losses = json.loads((d / "students" / f"owl_system_prompt.full.sigma0.seed{seed}" / "profile.json").read_text())["train"]["losses"]
        kl[int(seed)] = 1 - losses[STEP - 1] / losses[0]
    return {"trait": {int(k): v for k, v in trait.items()}, "trait_step3": {int(k): v for k, v in early.items()},
            "final_drift": {int(k): v for k, v in drift.items()},
            "kl_reduction": kl, "teacher_gain": s["teacher_check"]["owl_system_prompt"]["gain"],
            "steps": s["config"]["epochs"] * 12, "pairing": s.get("pairing")}


runs = {}
for label, candidates in RUNS:
    found = [(n, run) for run in candidates if (n := run_numbers(run)) is not None]
    if found:
        runs[label] = found[0]
out = {"step": STEP, "runs": {}}
for label, (n, run) in runs.items():
    seeds = sorted(n["trait"])
    out["runs"][label] = {"run": run, "seeds": seeds, "trait": seed_ci(n["trait"][s] for s in seeds),
                          "per_seed_trait": n["trait"], "trait_step3": seed_ci(n["trait_step3"][s] for s in seeds),
                          "final_drift": seed_ci(n["final_drift"][s] for s in seeds),
                          "kl_reduction": seed_ci(n["kl_reduction"][s] for s in seeds),
                          "teacher_gain": n["teacher_gain"], "pairing": n["pairing"]}
cross = "SmolLM2 -> Gemma-3"
if cross in runs:
    for ref in ("SmolLM2 -> SmolLM2", "Gemma-3 -> Gemma-3"):
        if ref in runs:
            common = sorted(set(runs[cross][0]["trait"]) & set(runs[ref][0]["trait"]))
            out["runs"][cross][f"minus {ref}"] = seed_ci(runs[cross][0]["trait"][s] - runs[ref][0]["trait"][s] for s in common)
            out["runs"][cross][f"minus {ref}, step 3"] = seed_ci(runs[cross][0]["trait_step3"][s] - runs[ref][0]["trait_step3"][s]
                                                                 for s in common)
atomic_write_json(HERE / "compare.json", out)

fig, ax = plt.subplots(figsize=(6, 3.4))
for i, (label, r) in enumerate(out["runs"].items()):
    ax.errorbar(i, r["trait"]["mean"], yerr=r["trait"]["ci_half"], fmt="o", capsize=4,
                color="tab:grey" if label == cross else "tab:blue")
    ax.scatter([i] * len(r["seeds"]), list(r["per_seed_trait"].values()), s=10, color="black", zorder=3)
ax.axhline(0, color="black", lw=0.6)
ax.set_xticks(range(len(out["runs"])), [f"{lb}\nKL red. {r['kl_reduction']['mean']:+.2f}" for lb, r in out["runs"].items()],
              fontsize=8)
ax.set_ylabel("owl log-odds, owl - neutral student")
ax.set_title(f"Teacher -> student family, step {STEP} (mean, 95% CI over seeds; dots: seeds)", fontsize=9)
save_figure(fig, HERE / "cross.png")
for label, r in out["runs"].items():
    diffs = "  ".join(f"{k} {v['mean']:+.4f} +- {v['ci_half']:.4f} (det {v['detectable']:.4f})"
                      for k, v in r.items() if k.startswith("minus"))
    print(f"{label:20s} n {r['trait']['n']} trait {r['trait']['mean']:+.4f} +- {r['trait']['ci_half']:.4f} "
          f"(det {r['trait']['detectable']:.4f})  step 3 {r['trait_step3']['mean']:+.4f} +- {r['trait_step3']['ci_half']:.4f} "
          f"(det {r['trait_step3']['detectable']:.4f})  "
          f"KL red {r['kl_reduction']['mean']:+.3f}  teacher gain {r['teacher_gain']:+.2f}  {diffs}")
