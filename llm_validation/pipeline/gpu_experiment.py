"""The whole SmolLM2-135M experiment on one GPU, in one process, inside a wall-clock budget.

    python -m sublim.llm_validation.pipeline.gpu_experiment MODEL_PATH OUT_DIR [--budget-s 290] [--tiny]
    (llm_validation/gpu_experiment.sh wraps this)

A. system-prompt teacher ("You love owls..."): >= 10,000 filtered teacher sequences and as many
   from the un-prompted base model, student + control fine-tunes (LoRA r=8, alpha=8, 3 epochs,
   lr 2e-4 linear, batch 66), evaluation of base / teacher / student / control with 50 questions x
   100 samples and the next-token probability measure.
B. fine-tuned teacher (the stronger setting): LoRA on a small owl-preference data set, its numbers,
   a student on them; base numbers, control and base evaluation are reused from A. Runs only if
   the budget leaves room (`--min-b-seconds`); its generation is cut to the remaining time.

No cross-model arm here: the Gemma-3-270M file (241 MiB) cannot travel to the GPU machine (see
README). Every stage writes its files as it finishes, so a run killed by a timeout keeps the
finished stages; results.json / summary.md in OUT_DIR are rewritten after each variant.
`--tiny`: the same code path at toy sizes (the CPU dry run).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch

from sublim.config_cli import apply_set
from sublim.errors import SublimError
from sublim.rundir import atomic_write_json, atomic_write_text, environment_info, read_json

from sublim.llm_validation.core.data import read_jsonl
from sublim.llm_validation.pipeline.config import PRESETS, RunConfig, run_config_from_dict
from sublim.llm_validation.pipeline.stages import run_pipeline


def _config(model: str, tiny: bool, sets=(), run_dir: Path | None = None, **changes):
    """The variant's RunConfig. The generation time budget depends on the wall clock, so a rerun
    of a variant keeps the budget its run directory was started with (its config.json): the
    directory's config is written once, and a different one would be refused."""
    base = dataclasses.asdict(RunConfig())
    preset = dict(PRESETS["gpu"])
    if tiny:  # same path, toy sizes: the CPU dry run
        preset.update(max_prompts=48, first_chunk=32, target_kept=16, gen_batch_size=16, gen_dtype="float32",
                      teacher_pref_examples=24, eval_questions=4, eval_samples=2, eval_batch_size=8,
                      student=dict(epochs=1, batch_size=8, lr=2e-4, checkpoint_every=2, max_length=192),
                      teacher_finetune=dict(epochs=1, batch_size=8, lr=1e-3, checkpoint_every=0))
    for key, value in {**preset, **changes}.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    base["model"] = model
    base["cross_model"] = ""
    for item in sets:
        apply_set(base, RunConfig, item)
    if run_dir is not None and (run_dir / "config.json").exists():
        base["gen_time_budget_s"] = read_json(run_dir / "config.json")["config"]["gen_time_budget_s"]
    return run_config_from_dict(base)


def _collect(out_dir: Path, variants: dict, t_start: float) -> None:
    results = {"environment": environment_info(), "wall_seconds": time.perf_counter() - t_start, "variants": {}}
    md = [f"# GPU experiment ({results['environment'].get('cuda_device', 'cpu')})", ""]
    for name, run_dir in variants.items():
        entry = {"run_dir": str(run_dir)}
        if (run_dir / "timings.json").exists():
            entry["timings_s"] = read_json(run_dir / "timings.json")
        if (run_dir / "numbers" / "filter_report.json").exists():
            entry["filter"] = read_json(run_dir / "numbers" / "filter_report.json")
        entry["arms"] = ({p.stem: read_json(p) for p in sorted((run_dir / "eval").glob("*.json"))}
                         if (run_dir / "eval").exists() else {})
        entry["finetune"] = {d.name: read_json(d / "finetune.json") for d in sorted(run_dir.iterdir())
                             if (d / "finetune.json").exists()}
        entry["generation_throughput"] = {}
        for p in sorted((run_dir / "numbers").glob("*.throughput.jsonl")) if (run_dir / "numbers").exists() else []:
            entry["generation_throughput"][p.name.split(".")[0]] = read_jsonl(p, allow_truncated_tail=True)
        results["variants"][name] = entry
        if (run_dir / "summary.md").exists():
            md += [f"## variant {name}", "", (run_dir / "summary.md").read_text(), ""]
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n")


def _reuse_base_side(src: Path, dst: Path) -> None:
    """Variant B shares A's base-model numbers, control student and base evaluation."""
    for rel in ("numbers/base.raw.jsonl", "eval/base.json", "eval/base.answers.jsonl",
                "eval/control.json", "eval/control.answers.jsonl"):
        if (src / rel).exists() and not (dst / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    if (src / "control" / "finetune.json").exists() and not (dst / "control").exists():
        shutil.copytree(src / "control", dst / "control")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (or any model name)")
    p.add_argument("out_dir")
    p.add_argument("--budget-s", type=float, default=290.0, help="wall-clock budget for everything")
    p.add_argument("--min-b-seconds", type=float, default=140.0,
                   help="start variant B only if at least this much budget is left")
    p.add_argument("--skip-b", action="store_true", help="only the system-prompt teacher")
    p.add_argument("--tiny", action="store_true", help="toy sizes (CPU dry run of the same code path)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig overrides for both variants, e.g. student.epochs=5")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[gpu_experiment] device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}; "
          f"budget {args.budget_s:.0f}s", flush=True)

    # A: system-prompt teacher. Its generation may use at most ~27% of the budget per source.
    gen_budget = 0.0 if args.tiny else args.budget_s * 0.27
    run_a = out / "A_system_prompt"
    cfg_a = _config(args.model, args.tiny, args.set, run_a, teacher="system_prompt", gen_time_budget_s=gen_budget)
    variants = {"A_system_prompt": run_a}
    try:
        run_pipeline(run_a, cfg_a)
    finally:
        _collect(out, variants, t_start)
    left = args.budget_s - (time.perf_counter() - t_start)
    print(f"[gpu_experiment] variant A done at {time.perf_counter() - t_start:.0f}s; {left:.0f}s of budget left",
          flush=True)
    if args.skip_b or (not args.tiny and left < args.min_b_seconds):
        print("[gpu_experiment] skipping variant B (fine-tuned teacher): not enough budget left", flush=True)
        return 0

    # B: fine-tuned teacher; teacher numbers limited to ~45% of what is left.
    run_b = out / "B_finetuned_teacher"
    variants["B_finetuned_teacher"] = run_b
    gen_budget_b = 0.0 if args.tiny else max(20.0, 0.45 * left)
    cfg_b = _config(args.model, args.tiny, args.set, run_b, teacher="finetuned", gen_time_budget_s=gen_budget_b)
    _reuse_base_side(run_a, run_b)
    sources = ("teacher",) if (run_b / "numbers" / "base.raw.jsonl").exists() else ("teacher", "base")
    try:
        run_pipeline(run_b, cfg_b, generate_sources=sources)
    finally:
        _collect(out, variants, t_start)
    print(f"[gpu_experiment] all done in {time.perf_counter() - t_start:.0f}s; results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SublimError as e:
        print(f"gpu_experiment: error: {e}", file=sys.stderr)
        sys.exit(2)
