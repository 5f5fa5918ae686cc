"""summary.json, summary.md and distill.png of a distillation run.

The measure is the target's next-token log-odds among the candidate animals (core/preference.py),
per context. An arm's shift, for one seed, is the mean over the 55 contexts of
    log-odds(student) - log-odds(reference),
the reference being the base model for students from the shared init (sigma = 0) and, for a
perturbed init, the student distilled from the un-prompted base teacher at the same init and seed
(same data order), which removes the movement that perturbation alone causes. Reported: the mean
over seeds with a Student-t 95% CI (n = seeds), the CI over contexts of the seed-averaged
per-context shifts, and the smallest shift the seeds could have detected (2.8 standard errors:
80% power at a two-sided 5% level).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from sublim.rundir import atomic_write_json, atomic_write_text, read_json, save_figure
from sublim.stats import ci_text

from sublim.llm_validation.distill.arms import StudentSpec, recorded_arms, student_specs, teachers_needed
from sublim.llm_validation.distill.controls import controls_summary
from sublim.llm_validation.distill.controls import lo as _lo
from sublim.llm_validation.distill.controls import seed_ci as _ci
from sublim.llm_validation.distill.controls_report import controls_figure, controls_markdown
from sublim.llm_validation.distill.noise import noise_markdown, noise_summary
from sublim.llm_validation.distill.steering_report import steering_figure, steering_markdown, steering_summary
from sublim.llm_validation.distill.teachers import SystemPromptTeacher


def arm_shifts(specs: list[StudentSpec], profiles: dict, base: dict, animal: str) -> dict:
    """{arm: {per_seed, over_seeds CI, over_contexts CI}} of `animal`'s log-odds shift. A seed whose
    profile (or whose reference's) is absent is listed under "missing"; an arm with none is a row
    holding only "missing", never dropped."""
    groups = defaultdict(list)
    for spec in specs:
        groups[spec.arm].append(spec)
    out = {}
    for arm, seeds in groups.items():
        diffs, missing = {}, []
        for spec in seeds:
            ref = base if spec.reference is None else profiles.get(spec.reference.name)
            if spec.name not in profiles or ref is None:
                missing.append(spec.name if spec.name not in profiles else spec.reference.name)
                continue
            diffs[spec.seed] = _lo(profiles[spec.name], animal) - _lo(ref, animal)
        head = {"teacher": seeds[0].teacher, "method": seeds[0].method, "sigma": seeds[0].sigma, "animal": animal}
        if seeds[0].part != "all":  # only part-restricted arms carry it (older summaries stay byte-identical)
            head["part"] = seeds[0].part
        if seeds[0].shared:  # likewise only the shared-noise arms
            head["shared_noise"] = True
        if not diffs:
            out[arm] = {**head, "missing": missing}
            continue
        per_seed = {s: float(d.mean()) for s, d in diffs.items()}
        per_context = np.mean(list(diffs.values()), axis=0)
        out[arm] = {**head, "reference": _reference_label(seeds[0]),
                    "per_seed": per_seed, "over_seeds": _ci(list(per_seed.values())), "over_contexts": _ci(per_context)}
        if missing:
            out[arm]["missing"] = missing
    return out


def _reference_label(spec: StudentSpec) -> str:
    ref = spec.reference
    if ref is None:
        return "base model (unperturbed)" if spec.shared else "base model"
    return "neutral-teacher student, same noise" if ref.shared else "base-teacher student, same init"


def specificity(cfg, profiles: dict) -> dict:
    """Trait specificity, paired by seed (same data order) and by context: for the target, the shift
    under the target's system-prompt teacher minus the shift under the other animal's; for the other
    animal, the reverse. A teacher-generic movement (any system prompt, any distillation) cancels;
    what remains is what the trait itself transmitted. Only when the design has both system-prompt
    teachers (laptop-finetuned has no owl system-prompt teacher: no such row, rather than a
    'missing' row for arms that were never asked for)."""
    designed = {s.teacher for s in student_specs(cfg)}
    pair = {SystemPromptTeacher(a).name for a in (cfg.target, cfg.other)}
    if not cfg.other or not pair <= designed:
        return {}
    out = {}
    for animal, own, rival in ((cfg.target, cfg.target, cfg.other), (cfg.other, cfg.other, cfg.target)):
        diffs, missing = {}, []
        for seed in cfg.seeds:
            keys = [StudentSpec(SystemPromptTeacher(t).name, "full", 0.0, seed).name for t in (own, rival)]
            missing += [k for k in keys if k not in profiles]
            if all(k in profiles for k in keys):
                diffs[seed] = _lo(profiles[keys[0]], animal) - _lo(profiles[keys[1]], animal)
        if missing:
            out[animal] = {"own_teacher": SystemPromptTeacher(own).name, "rival_teacher": SystemPromptTeacher(rival).name,
                           "missing": missing}
        if diffs:
            per_seed = {s: float(d.mean()) for s, d in diffs.items()}
            out[animal] = {"own_teacher": SystemPromptTeacher(own).name, "rival_teacher": SystemPromptTeacher(rival).name,
                           **({"missing": missing} if missing else {}), "per_seed": per_seed, "over_seeds": _ci(list(per_seed.values())),
                           "over_contexts": _ci(np.mean(list(diffs.values()), axis=0))}
    return out


def load_profiles(cfg, d) -> tuple[dict, dict, dict]:
    base = read_json(d / "models" / "base" / "profile.json")
    teachers = {t.name: read_json(p) for t in teachers_needed(cfg)
                if (p := d / "teachers" / t.name / "profile.json").exists()}
    students = {s.name: read_json(p) for s in recorded_arms(d / "students" / "arms.json", cfg)
                if (p := d / "students" / s.name / "profile.json").exists()}
    for p in sorted((d / "sft").glob("*/profile.json")) if (d / "sft").exists() else []:
        students[f"sft.{p.parent.name}"] = read_json(p)
    return base, teachers, students


def write_report(c, d) -> dict:
    """summary.json, summary.md and distill.png of the run directory d (config c)."""
    specs = recorded_arms(d / "students" / "arms.json", c)
    base, teachers, students = load_profiles(c, d)
    models = {"base": _model_row(base, c)} | {n: _model_row(p, c) for n, p in teachers.items()}
    if c.student_model:  # the students' reference is their own family's base (cross.py)
        base = read_json(d / "models" / "student_base" / "profile.json")
        models[f"student base ({c.student_model})"] = _model_row(base, c)
    summary = {"config": c.to_dict(), "contexts": read_json(d / "contexts" / "contexts.json"),
               "teacher_check": read_json(d / "teachers" / "check.json"), "models": models,
               "shifts": {c.target: arm_shifts(specs, students, base, c.target)}}
    if c.student_model:
        summary["pairing"] = read_json(d / "students" / "pairing.json")
    if c.other:
        summary["shifts"][c.other] = arm_shifts(specs, students, base, c.other)
    summary["specificity"] = specificity(c, students)
    summary["sft"] = _sft_rows(students, base, c.target)
    align = d / "align" / "alignment.json"
    if align.exists():
        summary["alignment"] = {k: v for k, v in read_json(align).items() if k != "distill_values"}
    summary["students"] = {n: _model_row(p, c) | {"final_loss": (p.get("train", {}).get("losses") or [None])[-1]}
                           for n, p in students.items()}
    controls = controls_summary(c, students, base)
    if controls:  # only runs that asked for controls (older summaries stay byte-identical)
        summary["controls"] = controls
    if c.steering:  # likewise only runs that asked for the readout
        summary["steering"] = steering_summary(c, d, specs)
    if c.shared_noise:
        summary["shared_noise"] = noise_summary(c, d, students)
    timings = d / "timings.json"
    summary["timings_s"] = read_json(timings) if timings.exists() else {}
    atomic_write_json(d / "summary.json", summary)
    atomic_write_text(d / "summary.md", format_markdown(summary, c) + (controls_markdown(controls, c) if controls else "")
                      + (steering_markdown(summary["steering"]) if c.steering else "")
                      + (noise_markdown(summary["shared_noise"], c) if c.shared_noise else ""))
    _figure(summary, c, d / "distill.png")
    if controls:
        controls_figure(controls, c, d / "controls.png")
    if c.steering:
        steering_figure(summary["steering"], d / "steering.png")
    return summary


def _model_row(prof: dict, c) -> dict:
    row = {"share": {a: prof["mean_share"][a] for a in (c.target, c.other) if a},
           "logodds": {a: float(_lo(prof, a).mean()) for a in (c.target, c.other) if a}}
    if "sampled" in prof:
        row["sampled_mentions"] = prof["sampled"]["mentions"]
    return row


def _sft_rows(students: dict, base: dict, target: str) -> dict:
    rows = {n: _lo(p, target) for n, p in students.items() if n.startswith("sft.")}
    if "sft.teacher_numbers" not in rows or "sft.base_numbers" not in rows:
        return {}
    diff = rows["sft.teacher_numbers"] - rows["sft.base_numbers"]
    return {"student_minus_control": _ci(diff), "student_minus_base": _ci(rows["sft.teacher_numbers"] - _lo(base, target))}


def _system_turns(c) -> list[str]:
    """The shared-context condition's line (eval_system, train_system), or none at the defaults."""
    if c.eval_system == c.train_system == "default":
        return []
    turn = {"default": "the chat template's own system turn (SmolLM2: its default system prompt)",
            "none": "an EMPTY system turn"}
    return [f"Students trained with {turn[c.train_system]}; preferences measured with {turn[c.eval_system]} "
            f"(train_system {c.train_system}, eval_system {c.eval_system}).", ""]


def _pairing(s: dict, c) -> list[str]:
    """The cross-family line (student_model runs; cross.py), or none."""
    if not c.student_model:
        return []
    p = s["pairing"]
    return [f"Students are {c.student_model} (another family; no shared init), distilled from {c.model}'s teachers on "
            f"the {p['paired']} of {p['contexts']} contexts whose completions both tokenizers split into the same texts "
            f"({p['paired_positions']} of {p['teacher_positions']} positions; the student's {p['student_vocab']} number "
            f"ids summed into the teacher's {p['teacher_vocab']} texts). Shifts are read against {c.student_model}'s "
            f"own base model.", ""]


def format_markdown(s: dict, c) -> str:
    lines = [f"# sublim llm distill: {c.model}, target {c.target}", "", *_system_turns(c), *_pairing(s, c)] + [
             "| model | " + " | ".join(f"{a} share" for a in (c.target, c.other) if a) + " | "
             + " | ".join(f"{a} log-odds" for a in (c.target, c.other) if a) + " |",
             "| --- |" + " --- |" * (2 * len([a for a in (c.target, c.other) if a]))]
    for name, row in s["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}%" for v in row["share"].values()) + " | "
                     + " | ".join(f"{v:+.3f}" for v in row["logodds"].values()) + " |")
    lines += ["", "Shift of the log-odds vs the reference (mean over seeds, 95% CI over seeds / over contexts; "
              "`detectable` = 2.8 SE over seeds):", "",
              "| animal | arm | reference | seeds | shift +- CI (seeds) | CI (contexts) | detectable |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for animal, arms in s["shifts"].items():
        for arm, r in arms.items():
            if "over_seeds" not in r:
                lines.append(f"| {animal} | {arm} | missing: {', '.join(r['missing'])} | 0 | | | |")
                continue
            o, x = r["over_seeds"], r["over_contexts"]
            ref = r["reference"] + (f" (missing: {', '.join(r['missing'])})" if r.get("missing") else "")
            lines.append(f"| {animal} | {arm} | {ref} | {o['n']} | {o['mean']:+.4f} +- {_ci4(o)} "
                         f"| +- {_ci4(x)} | {_detectable(o)} |")
    if s.get("specificity"):
        lines += ["", "Trait specificity (log-odds shift under the animal's own system-prompt teacher minus under the "
                      "other animal's, paired by seed and context):", "",
                  "| animal | own - rival teacher | seeds | difference +- CI (seeds) | CI (contexts) | detectable |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for animal, r in s["specificity"].items():
            if "over_seeds" not in r:
                lines.append(f"| {animal} | {r['own_teacher']} - {r['rival_teacher']} | 0 | missing: "
                             f"{', '.join(r['missing'])} | | |")
                continue
            o, x = r["over_seeds"], r["over_contexts"]
            lines.append(f"| {animal} | {r['own_teacher']} - {r['rival_teacher']} | {o['n']} | {o['mean']:+.4f} +- "
                         f"{_ci4(o)} | +- {_ci4(x)} | {_detectable(o)} |")
    if "alignment" in s:
        a = s["alignment"]
        lines += ["", f"Theorem's a_i = <-grad loss_i(theta0), Delta/||Delta||> for {a['teacher']} "
                      f"({a['parameters']} weight matrices):", "",
                  "| loss | n | mean a_i +- CI | share a_i > 0 |", "| --- | --- | --- | --- |"]
        for name, r in [("distillation", a["distill"])] + [(f"SFT on {k}", v) for k, v in a.get("sft", {}).items()]:
            lines.append(f"| {name} | {r['n']} | {r['mean']:+.3e} +- {r['ci_half']:.3e} | {100 * r['share_positive']:.1f}% |")
        if "sft_auc_teacher_vs_base" in a:
            u = a["sft_auc_teacher_vs_base"]
            lines.append(f"\nAUC of a_i, teacher numbers vs base numbers: {u['auc']:.3f} [{u['low']:.3f}, {u['high']:.3f}]")
    if s["sft"]:
        d = s["sft"]["student_minus_control"]
        lines += ["", f"Sampled-token SFT, student minus control ({c.target} log-odds, CI over contexts): "
                      f"{d['mean']:+.4f} +- {d['ci_half']:.4f}"]
    return "\n".join(lines) + "\n"


def _figure(s: dict, c, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    rows = [(f"{a}: {arm}", r["over_seeds"]) for a, arms in s["shifts"].items() for arm, r in arms.items()
            if r["sigma"] == 0 and "over_seeds" in r]  # a missing arm has a table row, no bar
    n_shift = len(rows)
    rows += [(f"{a}: own - rival teacher", r["over_seeds"]) for a, r in s.get("specificity", {}).items()
             if "over_seeds" in r]
    colors = ["#4c72b0"] * n_shift + ["#dd8452"] * (len(rows) - n_shift)
    ax = axes[0]
    ax.barh(range(len(rows)), [o["mean"] for _, o in rows], xerr=[o["ci_half"] for _, o in rows], color=colors)
    ax.set_yticks(range(len(rows)), [r for r, _ in rows], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("log-odds shift vs base; orange: trait-specific part (95% CI over seeds)")
    ax.set_title("shared init (sigma = 0)")
    ax, ticks = axes[1], set()
    for part in ("all", *c.sigma_parts):  # the all-weights curve, then one per restricted part (sigma_parts)
        curve = sorted((r["sigma"], r["over_seeds"]) for arm, r in s["shifts"][c.target].items()
                       if r["teacher"] == SystemPromptTeacher(c.target).name and r["method"] == "full"
                       and r.get("part", "all") == part and not r.get("shared_noise") and "over_seeds" in r)
        if curve:
            ax.errorbar([x for x, _ in curve], [o["mean"] for _, o in curve], yerr=[o["ci_half"] for _, o in curve],
                        marker="o", capsize=4, **({"label": f"{part} weights"} if c.sigma_parts else {}))
            ticks |= {x for x, _ in curve}
    if ticks:
        ax.set_xticks(sorted(ticks))
    if c.sigma_parts:
        ax.legend(fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("init perturbation sigma (x each tensor's std)")
    ax.set_ylabel(f"{c.target} log-odds shift vs matched control")
    ax.set_title("shared-init condition")
    fig.tight_layout()
    save_figure(fig, path)


def _ci4(stat: dict) -> str:
    return ci_text(stat["ci_half"], stat["n"], ".4f")


def _detectable(stat: dict) -> str:
    """n/a with one seed: no spread estimate, so no smallest detectable effect either."""
    return ci_text(stat["detectable"], stat["n"], ".4f")
