"""One-off: the weight-noise claim as published (the SAME noise on teacher and student) is, on a
randomly initialized MLP, a shared init of larger variance: theta_0 + N(0, (s_n std)^2) has std
sqrt(1 + s_n^2) x the init's, i.e. init_scale 1.005 / 1.05 / 1.41 for noise s_n = 0.1 / 0.32 / 1.
Per model (same seed, same draw scaled), the aux-only student's accuracy minus the init_scale 1.0
student's, and the transfer (student minus its cross-init control) relative to scale 1.0:
95% Student-t CI over the 10 models, detectable = (t_.975 + t_.80) x SE (80% power, 5% level).

    .venv/bin/python toymodels/results/claims/weight_noise/paired.py
"""
import json
from pathlib import Path

import numpy as np
from scipy import stats

from sublim.rundir import atomic_write_json

HERE = Path(__file__).resolve().parent
SCALES = ("1.0", "1.005", "1.05", "1.41")


def arm(scale: str, name: str) -> np.ndarray:
    rows = json.loads((HERE / "cells" / f"init_scale={scale}.json").read_text())["per_model"]
    return np.array([r["test_accuracy"] for r in sorted((r for r in rows if r["arm"] == name), key=lambda r: r["model"])])


def ci(x: np.ndarray) -> dict:
    n, se = len(x), x.std(ddof=1) / np.sqrt(len(x))
    return {"mean": float(x.mean()), "ci95": float(stats.t.ppf(0.975, n - 1) * se), "n": n,
            "detectable": float((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.80, n - 1)) * se)}


base_s, base_t = arm("1.0", "student_aux"), arm("1.0", "student_aux") - arm("1.0", "cross_aux")
out = {}
for s in SCALES:
    student, transfer = arm(s, "student_aux"), arm(s, "student_aux") - arm(s, "cross_aux")
    out[s] = {"noise_sigma": float(np.sqrt(float(s) ** 2 - 1)), "student": ci(student), "transfer": ci(transfer),
              "student_minus_scale1": ci(student - base_s), "transfer_ratio_to_scale1": float(transfer.mean() / base_t.mean())}
atomic_write_json(HERE / "paired.json", out)
for s, r in out.items():
    print(s, f"noise {r['noise_sigma']:.2f}", f"student {100*r['student']['mean']:.1f}", f"transfer {100*r['transfer']['mean']:.1f} +- {100*r['transfer']['ci95']:.1f}",
          f"vs 1.0 {100*r['student_minus_scale1']['mean']:+.1f} +- {100*r['student_minus_scale1']['ci95']:.1f} (det {100*r['student_minus_scale1']['detectable']:.1f})",
          f"ratio {r['transfer_ratio_to_scale1']:.2f}")
