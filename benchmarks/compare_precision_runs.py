"""bf16 vs float32 results of the same design, per arm: each run's mean +- 95% CI, the paired
difference (same models / seeds in both runs) with its CI, and whether each bf16 mean lies inside
the float32 CI. Writes a JSON beside printing a Markdown table.

    python benchmarks/compare_precision_runs.py toy RUN_FP32 RUN_BF16 --out OUT.json
    python benchmarks/compare_precision_runs.py distill RUN_FP32 RUN_BF16 --arm owl_system_prompt.full.sigma0 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _ci(values) -> dict:
    from sublim.stats import mean_ci95

    mean, half = mean_ci95(list(values))
    return {"mean": mean, "ci_half": half, "n": len(values)}


def compare(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict:
    """{key: fp32 CI, bf16 CI, paired difference CI, bf16 mean inside the fp32 CI}; a, b: per-unit values."""
    out = {}
    for key in a:
        if key not in b or len(a[key]) != len(b[key]):
            continue
        fa, fb = _ci(a[key]), _ci(b[key])
        diff = _ci(np.asarray(b[key]) - np.asarray(a[key]))
        out[key] = {"float32": fa, "bf16": fb, "bf16_minus_float32_paired": diff,
                    "bf16_mean_inside_float32_ci": abs(fb["mean"] - fa["mean"]) <= fa["ci_half"],
                    "paired_difference_ci_covers_0": abs(diff["mean"]) <= diff["ci_half"]}
    return out


def toy_values(run: Path) -> dict[str, list[float]]:
    rows = json.loads((run / "per_model.json").read_text())
    out: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: (r["arm"], r["model"])):
        out.setdefault(r["arm"], []).append(r["test_accuracy"])
    return out


def distill_values(run: Path, arm: str, animal: str) -> dict[str, list[float]]:
    """Per seed: the student's mean (over the 55 contexts) log-odds shift of `animal` vs that run's base."""
    from sublim.llm_validation.core.preference import animal_log_odds

    base = json.loads((run / "models" / "base" / "profile.json").read_text())
    shifts = []
    for prof_path in sorted((run / "students").glob(f"{arm}.seed*/profile.json")):
        prof = json.loads(prof_path.read_text())
        shifts.append(float((animal_log_odds(prof, animal) - animal_log_odds(base, animal)).mean()))
    return {f"{arm}:{animal}": shifts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["toy", "distill"])
    p.add_argument("fp32")
    p.add_argument("bf16")
    p.add_argument("--arm", default="owl_system_prompt.full.sigma0")
    p.add_argument("--animal", default="owl")
    p.add_argument("--seeds", type=int, default=0, help="distill: compare only the first N seeds both runs have (0 = all)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    fp32, bf16 = Path(args.fp32), Path(args.bf16)
    if args.kind == "toy":
        a, b = toy_values(fp32), toy_values(bf16)
    else:
        a, b = distill_values(fp32, args.arm, args.animal), distill_values(bf16, args.arm, args.animal)
        n = min(len(next(iter(a.values()))), len(next(iter(b.values()))))
        n = min(n, args.seeds) if args.seeds else n
        a, b = ({k: v[:n] for k, v in d.items()} for d in (a, b))
    res = {"kind": args.kind, "float32_run": str(fp32), "bf16_run": str(bf16), "per_unit_float32": a,
           "per_unit_bf16": b, "compare": compare(a, b)}
    from sublim.rundir import atomic_write_json

    atomic_write_json(Path(args.out), res)
    print("| arm | float32 | bf16 | bf16 - float32 (paired) | bf16 mean in fp32 CI |\n| --- | --- | --- | --- | --- |")
    for k, c in res["compare"].items():
        f, g, d = c["float32"], c["bf16"], c["bf16_minus_float32_paired"]
        print(f"| {k} | {f['mean']:.4f} +- {f['ci_half']:.4f} | {g['mean']:.4f} +- {g['ci_half']:.4f} | "
              f"{d['mean']:+.4f} +- {d['ci_half']:.4f} | {'yes' if c['bf16_mean_inside_float32_ci'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
