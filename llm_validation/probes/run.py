"""`sublim llm probe entangle`: the orchestration (run directory, resume, summary).

Run directory:
  config.json                       written once (sublim.rundir.claim_run_dir)
  candidates.json                   per animal: each number's log P shift under the animal prompt
                                    (mean over the favorite-number questions), the chosen candidates,
                                    the paper-style top numbers (highest log P under the prompt)
  profiles/<prompt>.json            per system prompt: per-context log-odds of every scanned animal
  summary.json, summary.md          the contrasts (entangle_report.py)
  timings.json                      one record per invocation (a resume adds one)
Each file is written atomically once; a rerun skips what exists (a killed run resumes).
"""

from __future__ import annotations

import time
from pathlib import Path

from sublim.rundir import atomic_write_json, atomic_write_text, claim_run_dir, read_json
from sublim.seeding import numpy_rng

from sublim.llm_validation.core.prompts import trait_system_prompt
from sublim.llm_validation.probes import entangle as E
from sublim.llm_validation.probes.config import EntangleConfig
from sublim.llm_validation.probes.entangle_report import animal_contrasts, markdown, number_prompt_name


def _candidates(run_dir: Path, cfg: EntangleConfig, model, tok) -> dict:
    path = run_dir / "candidates.json"
    if path.exists():
        return read_json(path)
    shifts = E.number_shifts(model, tok, {a: trait_system_prompt(a) for a in cfg.animals},
                             cfg.n_number_questions, cfg.max_number)
    out = {}
    for animal in cfg.animals:
        r = shifts[animal]
        out[animal] = {"entangled": E.top_numbers(r["shift"], cfg.n_entangled),
                       "paper_style_top_logp": E.top_numbers(r["logp"], 20),
                       "shift": [round(float(v), 5) for v in r["shift"]],
                       "logp_with_prompt": [round(float(v), 5) for v in r["logp"]]}
    chosen = sorted({n for a in cfg.animals for n in out[a]["entangled"]})
    pool = [n for n in range(cfg.max_number + 1) if n not in chosen]
    # random controls drawn from every number that is no animal's candidate (seeded by name)
    picks = numpy_rng("probe_entangle", "random_numbers", cfg.seed).choice(len(pool), cfg.n_random, replace=False)
    result = {"animals": out, "random": sorted(int(pool[i]) for i in picks)}
    atomic_write_json(path, result)
    return result


def scan_prompts(cand: dict, animals) -> dict[str, str | None]:
    """Every system prompt of the scan: none, number-free, each animal's own trait prompt (the
    scale a real teacher reaches), and one number-love prompt per candidate and random number."""
    prompts = {"none": None, "number_free": E.NUMBER_FREE_PROMPT}
    prompts.update({f"trait:{a}": trait_system_prompt(a) for a in animals})
    numbers = sorted({n for a in animals for n in cand["animals"][a]["entangled"]} | set(cand["random"]))
    prompts.update({number_prompt_name(n): E.number_love_prompt(n) for n in numbers})
    return prompts


def _profiles(run_dir: Path, prompts: dict, animals, measure, model, tok) -> dict:
    out = {}
    for name, system in prompts.items():
        path = run_dir / "profiles" / f"{name.replace(':', '_')}.json"
        if not path.exists():
            row = E.subliminal_scan(measure, model, tok, {name: system}, animals)[name]
            atomic_write_json(path, {"prompt": name, "system": system, "log_odds": row})
        out[name] = read_json(path)["log_odds"]
    return out


def summarize(cand: dict, lo: dict, animals) -> dict:
    contrasts = {}
    for a in animals:
        others = [n for b in animals if b != a for n in cand["animals"][b]["entangled"]
                  if n not in cand["animals"][a]["entangled"]]
        contrasts[a] = animal_contrasts(lo, a, cand["animals"][a]["entangled"], cand["random"], others)
    return {"entangled": {a: cand["animals"][a]["entangled"] for a in animals}, "random": cand["random"],
            "paper_style_top_logp": {a: cand["animals"][a]["paper_style_top_logp"][:10] for a in animals},
            "n_contexts": len(lo["none"][animals[0]]), "contrasts": contrasts}


def _append_timings(path: Path, times: dict) -> None:
    """One record per invocation: a resumed run's near-zero stage times must not replace the
    times of the invocation that did the work."""
    runs = read_json(path)["runs"] if path.exists() else []
    atomic_write_json(path, {"runs": [*runs, {**times, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]})


def run_entangle(run_dir: Path, cfg: EntangleConfig, measure=None) -> dict:
    """measure(model, tokenizer, system) -> {animal: per-context log-odds}; default: the one
    cfg.measure names (entangle.MEASURES)."""
    from sublim.llm_validation.core.models import load_model

    measure = measure or E.MEASURES[cfg.measure]
    with claim_run_dir(run_dir, cfg):
        times = {}
        t0 = time.perf_counter()
        model, tok = load_model(cfg.model)
        model.eval()
        times["load_s"] = time.perf_counter() - t0
        cand = _candidates(run_dir, cfg, model, tok)
        times["candidates_s"] = time.perf_counter() - t0 - times["load_s"]
        lo = _profiles(run_dir, scan_prompts(cand, cfg.animals), cfg.animals, measure, model, tok)
        times["scan_s"] = time.perf_counter() - t0 - times["load_s"] - times["candidates_s"]
        summary = summarize(cand, lo, cfg.animals)
        atomic_write_json(run_dir / "summary.json", summary)
        atomic_write_text(run_dir / "summary.md", markdown(summary))
        _append_timings(run_dir / "timings.json", times)
    return summary
