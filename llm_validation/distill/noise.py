"""Weight noise on teacher AND student (`shared_noise`; OpenReview a2sc2Y91hO, "Subliminal Learning
is Non-Semantic Distillation"): the published claim adds the SAME noise to the weights the teacher
and the student both start from, and reports transfer multiplied (Gemma 2.7x, Llama 1.8x).

For noise s and seed k, theta_k = theta0 + N(0, (s std(W))^2) per tensor, drawn by students.perturb_
from (k, tensor name), so the teacher's weights and the student's init are the same tensors. The
target's and the neutral teacher's system prompts run on theta_k; each student of that seed learns
from its own teacher's distributions on theta_k, which are computed inside the student's task
(students/<arm>/teacher_cache.pt, with the noisy teacher's own preference in teacher_profile.json):
a cache is specific to one (teacher, noise, seed), so no two students share one.

Read like the rest of the controls: the target's student minus the neutral teacher's student at the
same noise and seed (the perturbation's own movement and the generic system-prompt drift cancel),
beside the same difference at noise 0 (the run's shared-init students, same seeds): the claim
predicts a ratio above 1. The noisy teachers' gain (target minus neutral teacher, both on theta_k)
says whether the trait still reaches the number distributions after the noise.
"""

from __future__ import annotations

import copy
from pathlib import Path

from sublim.rundir import atomic_write_json, read_json
from sublim.stats import ci_text

from sublim.llm_validation.core.preference import profile
from sublim.llm_validation.distill.arms import StudentSpec
from sublim.llm_validation.distill.cache import TeacherCache, compute_cache, load_or_compute
from sublim.llm_validation.distill.controls import lo, seed_ci
from sublim.llm_validation.distill.students import perturb_
from sublim.llm_validation.distill.teachers import NEUTRAL, SystemPromptTeacher


def noisy_teacher(cfg, spec: StudentSpec, base_model, tokenizer, teacher_view, vocab, device: str,
                  out: Path) -> TeacherCache:
    """The distributions of spec's teacher on the base perturbed by (spec.sigma, spec.seed): saved in
    the student's directory (a resumed task reuses them), with that teacher's own preference profile.
    teacher_view: (system prompt, the contexts encoded with it)."""
    system, encoded = teacher_view
    model = copy.deepcopy(base_model)
    perturb_(model, spec.sigma, spec.seed)
    fingerprint = {"model": cfg.model, "teacher": spec.teacher, "shared_noise": spec.sigma, "seed": spec.seed,
                   "max_length": cfg.max_length, "positions": sum(len(e.completion_ids) for e in encoded)}
    cache = load_or_compute(out / "teacher_cache.pt", fingerprint,
                            lambda: compute_cache(model, encoded, vocab, device, cfg.eval_batch_size, f"cache {spec.name}"))
    if not (out / "teacher_profile.json").exists():
        atomic_write_json(out / "teacher_profile.json",
                          profile(model, tokenizer, device, system, cfg.eval_batch_size, empty_system=cfg.empty_system))
    return cache


def noise_summary(cfg, d: Path, profiles: dict) -> dict:
    """Per noise level: the target's transfer (vs the neutral student, same noise) beside noise 0's,
    their paired difference and ratio, and the noisy teachers' gain; every CI over seeds."""
    target, neutral = SystemPromptTeacher(cfg.target).name, SystemPromptTeacher(NEUTRAL).name
    zero = _paired(profiles, cfg, target, neutral, 0.0, False)
    out = {"zero_noise": seed_ci(zero.values()) if zero else {"missing": True}}
    for s in cfg.shared_noise:
        noisy = _paired(profiles, cfg, target, neutral, float(s), True)
        both = sorted(set(noisy) & set(zero))
        gain = {k: float((lo(t, cfg.target) - lo(n, cfg.target)).mean()) for k in cfg.seeds
                if (t := _teacher_profile(d, target, s, k)) and (n := _teacher_profile(d, neutral, s, k))}
        row = {"transfer": seed_ci(noisy.values()) if noisy else {"missing": True},
               "teacher_gain": seed_ci(gain.values()) if gain else {"missing": True}}
        if both:
            row["minus_zero_noise"] = seed_ci([noisy[k] - zero[k] for k in both])
            row["ratio_of_means"] = sum(noisy[k] for k in both) / sum(zero[k] for k in both)
        out[f"{float(s):g}"] = row
    return out


def _paired(profiles: dict, cfg, a: str, b: str, sigma: float, shared: bool) -> dict:
    """{seed: mean over contexts of target log-odds, a's student minus b's} where both exist."""
    keys = {k: [StudentSpec(t, "full", sigma, k, shared=shared).name for t in (a, b)] for k in cfg.seeds}
    return {k: float((lo(profiles[x], cfg.target) - lo(profiles[y], cfg.target)).mean())
            for k, (x, y) in keys.items() if x in profiles and y in profiles}


def _teacher_profile(d: Path, teacher: str, sigma: float, seed: int) -> dict | None:
    p = d / "students" / StudentSpec(teacher, "full", float(sigma), seed, shared=True).name / "teacher_profile.json"
    return read_json(p) if p.exists() else None


def noise_markdown(s: dict, cfg) -> str:
    def cell(r: dict) -> str:
        if "missing" in r:
            return "missing"
        return (f"{r['mean']:+.4f} +- {ci_text(r['ci_half'], r['n'], '.4f')} "
                f"(n {r['n']}, detectable {ci_text(r['detectable'], r['n'], '.4f')})")

    lines = ["", f"Weight noise on teacher AND student (shared_noise; the same perturbed weights for both): {cfg.target} "
                 "log-odds of the target teacher's student minus the neutral teacher's student at the same noise and seed "
                 "(95% CI over seeds); the noisy teachers' gain is the target teacher minus the neutral teacher on the "
                 "same perturbed weights:", "",
             "| noise (x std) | transfer | minus noise 0 (paired) | ratio to noise 0 | noisy teachers' gain |",
             "| --- | --- | --- | --- | --- |",
             f"| 0 | {cell(s['zero_noise'])} | | | |"]
    for key, r in s.items():
        if key == "zero_noise":
            continue
        ratio = f"{r['ratio_of_means']:.2f}" if "ratio_of_means" in r else ""
        lines.append(f"| {key} | {cell(r['transfer'])} | {cell(r['minus_zero_noise']) if 'minus_zero_noise' in r else ''} "
                     f"| {ratio} | {cell(r['teacher_gain'])} |")
    return "\n".join(lines) + "\n"
