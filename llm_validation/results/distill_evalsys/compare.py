"""One-off (not part of the package): the same students measured two ways (issue #23, Nief et al.'s
shared-context condition). distill_evalsys retrained laptop-long's owl and neutral students with the
same config (their 24 training losses equal laptop-long's bit for bit: checked here) and measured
them with an EMPTY system turn (`--eval-system none`); distill_laptop_long measured them with
SmolLM2's default system prompt, the one every training context carries. Per seed: the owl trait
(owl teacher's student minus the neutral teacher's student, mean over the 55 contexts) under each
measure, and their difference; 95% CI over the 3 seeds.

    .venv/bin/python llm_validation/results/distill_evalsys/compare.py
"""
import json
from pathlib import Path

from sublim.rundir import atomic_write_json
from sublim.llm_validation.distill.controls import seed_ci

HERE = Path(__file__).resolve().parent
LONG = HERE.parent / "distill_laptop_long"


def trait(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["controls"]["neutral_matrix"]["cells"]["owl"]["owl"]["per_seed"]


def drift(run: Path) -> dict:  # the neutral student minus the base model, per seed
    return json.loads((run / "summary.json").read_text())["controls"]["generic_drift"]["owl"]["per_seed"]


same = {}
for s in sorted(p.name for p in (HERE / "students").glob("*.full.*")):
    a, b = (json.loads((r / "students" / s / "profile.json").read_text())["train"]["losses"] for r in (HERE, LONG))
    same[s] = a == b
empty, default = trait(HERE), trait(LONG)
seeds = sorted(empty)
out = {"same_training_losses": same,
       "trait_default_system": seed_ci(default[k] for k in seeds),
       "trait_empty_system": seed_ci(empty[k] for k in seeds),
       "empty_minus_default": seed_ci(empty[k] - default[k] for k in seeds),
       "ratio_of_means": seed_ci(empty[k] for k in seeds)["mean"] / seed_ci(default[k] for k in seeds)["mean"],
       "per_seed": {k: {"default": default[k], "empty": empty[k]} for k in seeds}}
try:
    out["drift_default_system"] = seed_ci(drift(LONG)[k] for k in seeds)
    out["drift_empty_system"] = seed_ci(drift(HERE)[k] for k in seeds)
except KeyError:
    pass
atomic_write_json(HERE / "compare.json", out)
print(json.dumps(out, indent=1))
