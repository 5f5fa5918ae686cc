"""One-off (not part of the package): Adam vs SGD vs SGD with momentum on SmolLM2-135M (issue #23,
Blank et al. 2606.00995: "adaptive optimizers are necessary"). Every arm is the laptop-long design
(same contexts, teacher caches, seeds and batch order; every weight, 24 steps), so arms pair by seed:

    full: Adam 3e-5                      distill_lora_ranks
    sgd: plain SGD 3e-3                  distill_sgd
    sgdm: SGD, momentum 0.9, 3e-4        distill_sgdm (this directory)

Per arm: the owl trait (owl teacher's student minus the neutral teacher's student trained the same
way), the owl student's KL reduction (1 - last / first loss), the owl student's whole shift vs the
base model; each SGD arm minus Adam and sgdm minus sgd, paired by seed (95% CI over 3 seeds).

    .venv/bin/python llm_validation/results/distill_sgdm/compare.py
"""
import json
from pathlib import Path

from sublim.llm_validation.distill.controls import seed_ci
from sublim.rundir import atomic_write_json

HERE = Path(__file__).resolve().parent
ARMS = {"Adam 3e-5": (HERE.parent / "distill_lora_ranks", "full"), "SGD 3e-3": (HERE.parent / "distill_sgd", "sgd"),
        "SGD momentum 0.9, 3e-4": (HERE, "sgdm")}


def numbers(run: Path, method: str) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    m = summary["controls"]["methods"][method]
    whole = summary["shifts"]["owl"][f"owl_system_prompt.{method}.sigma0"]["per_seed"]
    return {"trait": {int(k): v for k, v in m["shift"]["per_seed"].items()}, "kl_reduction": m["kl_reduction"],
            "whole": {int(k): v for k, v in whole.items()}}


arms = {label: numbers(run, method) for label, (run, method) in ARMS.items()}
seeds = sorted(arms["Adam 3e-5"]["trait"])
out = {"arms": {label: {"trait": seed_ci(a["trait"][s] for s in seeds), "per_seed_trait": a["trait"],
                        "kl_reduction": a["kl_reduction"], "owl_shift_vs_base": seed_ci(a["whole"][s] for s in seeds)}
                for label, a in arms.items()},
       "paired": {f"{a} minus {b}": seed_ci(arms[a]["trait"][s] - arms[b]["trait"][s] for s in seeds)
                  for a, b in (("SGD 3e-3", "Adam 3e-5"), ("SGD momentum 0.9, 3e-4", "Adam 3e-5"),
                               ("SGD momentum 0.9, 3e-4", "SGD 3e-3"))}}
atomic_write_json(HERE / "compare.json", out)
print(json.dumps(out, indent=1))
