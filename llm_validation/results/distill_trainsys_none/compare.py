"""One-off (not part of the package): Nief et al.'s shared-context condition as a 2 x 2 (issue #23).
Rows: the system turn the students TRAINED with; columns: the one their preference was MEASURED with
("default" = SmolLM2's chat template fills the missing system turn with its default prompt, "none" =
an empty system turn). Every cell is the laptop-long design (same contexts, teacher caches, seeds and
batch order), so the cells pair by seed:

    train default / eval default   distill_laptop_long
    train default / eval none      distill_evalsys (the same students, measured another way)
    train none    / eval default   distill_trainsys_none (this directory)
    train none    / eval none      distill_trainsys_none_evalnone (when it exists)

Per cell: the owl trait (owl teacher's student minus the neutral teacher's student, mean over the 55
contexts), the neutral student's drift vs the base model, and the students' KL reduction; then each
cell minus train-default/eval-default, paired by seed, and the interaction (default/default - default/none
- none/default + none/none: what the prompt adds when it is in both); 95% CI over the 3 seeds.

    .venv/bin/python llm_validation/results/distill_trainsys_none/compare.py
"""
import json
from pathlib import Path

from sublim.rundir import atomic_write_json
from sublim.llm_validation.distill.controls import seed_ci

HERE = Path(__file__).resolve().parent
CELLS = {"train default / eval default": HERE.parent / "distill_laptop_long",
         "train default / eval none": HERE.parent / "distill_evalsys",
         "train none / eval default": HERE,
         "train none / eval none": HERE.parent / "distill_trainsys_none_evalnone"}


def controls(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["controls"]


def kl_reduction(run: Path, teacher: str) -> dict:
    """Per seed: 1 - last loss / first loss of the teacher's full student (the imitation it reached)."""
    out = {}
    for p in sorted((run / "students").glob(f"{teacher}_system_prompt.full.sigma0.seed*/profile.json")):
        losses = json.loads(p.read_text())["train"]["losses"]
        out[int(p.parent.name.rsplit("seed", 1)[1])] = 1 - losses[-1] / losses[0]
    return out


cells = {name: run for name, run in CELLS.items() if (run / "summary.json").exists()}
trait = {n: {int(k): v for k, v in controls(r)["neutral_matrix"]["cells"]["owl"]["owl"]["per_seed"].items()}
         for n, r in cells.items()}
drift = {n: {int(k): v for k, v in controls(r)["generic_drift"]["owl"]["per_seed"].items()} for n, r in cells.items()}
ref = "train default / eval default"
seeds = sorted(trait[ref])
out = {"cells": {n: {"trait": seed_ci(trait[n][k] for k in seeds), "drift": seed_ci(drift[n][k] for k in seeds),
                     "kl_reduction_owl": seed_ci(kl_reduction(cells[n], "owl").values()),
                     "per_seed_trait": {k: trait[n][k] for k in seeds}} for n in cells},
       "minus_train_default_eval_default": {n: seed_ci(trait[n][k] - trait[ref][k] for k in seeds)
                                            for n in cells if n != ref}}
if len(cells) == 4:  # the interaction: what the default prompt adds when it is in BOTH training and evaluation
    dd, dn, nd, nn = CELLS
    out["interaction"] = seed_ci(trait[dd][k] - trait[dn][k] - trait[nd][k] + trait[nn][k] for k in seeds)
atomic_write_json(HERE / "compare.json", out)
print(json.dumps(out, indent=1))
