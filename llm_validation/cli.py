"""`sublim llm ...`: the LLM pipeline's commands.

    sublim llm run --run-dir runs/owl --preset cpu             whole experiment (or --stages a,b)
    sublim llm finetune --base smollm2-135m --data x.jsonl --out runs/ft   (DDP-able via torchrun)
    sublim llm filter --input raw.jsonl --output kept.jsonl [--banned 666,911]

Presets fill the RunConfig; explicit flags and `--set key=value` override them. A rerun of `run`
in an existing directory reuses its config.json unless flags are given (then the new config is
saved and stages redo only what their inputs changed... see pipeline.py: finished artifacts are
reused, so change the run directory when you change the experiment).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

from sublim.errors import ConfigError

PRESETS = {
    # The CPU smoke test: tiny random models, constrained to number tokens so that some pass.
    "tiny": dict(model="tiny-llama", cross_model="tiny-gemma", max_prompts=24, first_chunk=24, target_kept=8,
                 max_new_tokens=8, gen_batch_size=24, number_vocab_only=True, teacher_pref_examples=16,
                 teacher_finetune=dict(epochs=1, batch_size=8, lr=1e-3, checkpoint_every=0, max_length=64),
                 student=dict(epochs=1, batch_size=4, lr=1e-3, checkpoint_every=1, max_length=160),
                 eval_questions=5, eval_samples=2, eval_batch_size=16, eval_max_new_tokens=4),
    # A real but small run on SmolLM2-135M on a laptop CPU (minutes).
    "cpu": dict(model="smollm2-135m", cross_model="", max_prompts=512, first_chunk=192, target_kept=128,
                max_new_tokens=56, gen_batch_size=32,
                student=dict(epochs=3, batch_size=16, lr=2e-4, checkpoint_every=20, max_length=160),
                eval_questions=50, eval_samples=2, eval_batch_size=100, eval_max_new_tokens=8),
    # The full experiment on one H100/H200 (llm_validation/gpu_experiment.sh).
    "gpu": dict(model="smollm2-135m", cross_model="", max_prompts=60000, first_chunk=12288, target_kept=10000,
                max_new_tokens=56, gen_batch_size=2048, gen_dtype="bfloat16", gen_few_shot=2,
                salvage_min_numbers=3,
                student=dict(epochs=3, batch_size=66, lr=2e-4, checkpoint_every=50, max_length=192, bf16=True),
                teacher_finetune=dict(epochs=3, batch_size=32, lr=1e-3, checkpoint_every=0, bf16=True),
                teacher_pref_examples=600,
                eval_questions=50, eval_samples=100, eval_batch_size=1250, eval_max_new_tokens=10),
}


def _register_alignment(llm_sub) -> None:
    # The gradient-alignment engineer's subcommands live in alignment_cli.py; tolerate its absence.
    if importlib.util.find_spec("sublim.llm_validation.alignment_cli") is None:
        return
    module = importlib.import_module("sublim.llm_validation.alignment_cli")
    if hasattr(module, "add_parser"):
        module.add_parser(llm_sub)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args) -> "RunConfig":
    from sublim.llm_validation.pipeline import RunConfig, config_from_dict

    base = dataclasses.asdict(RunConfig())
    cfg_path = Path(args.run_dir) / "config.json"
    if args.preset is None and cfg_path.exists():
        from sublim.rundir import read_json

        base = read_json(cfg_path)["config"]  # rerun of an existing run: same experiment
    preset = PRESETS.get(args.preset or "", {})
    for key, value in preset.items():
        if isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    overrides = {"model": args.model, "cross_model": args.cross_model, "target": args.target,
                 "teacher": args.teacher, "target_kept": args.target_kept, "max_prompts": args.max_prompts,
                 "eval_samples": args.eval_samples, "seed": args.seed, "device": args.device}
    for key, value in overrides.items():
        if value is not None:
            base[key] = value
    if args.epochs is not None:
        base["student"]["epochs"] = args.epochs
    if args.method is not None:
        base["student"]["method"] = args.method
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.split(".")
        target = base
        for p in parts[:-1]:
            if not isinstance(target.get(p), dict):
                raise ConfigError(f"--set {key}: {p!r} is not a config section")
            target = target[p]
        if parts[-1] not in target:
            raise ConfigError(f"--set: unknown config key {key!r}")
        target[parts[-1]] = _parse_value(value)
    return config_from_dict(base)


def cmd_run(args) -> int:
    from sublim.llm_validation.pipeline import STAGES, Pipeline

    cfg = build_config(args)
    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
    Pipeline(args.run_dir, cfg).run(stages)
    return 0


def cmd_finetune(args) -> int:
    from sublim.llm_validation.data import read_jsonl
    from sublim.llm_validation.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(method=args.method, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         grad_accum=args.grad_accum,
                         max_length=args.max_length, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         bf16=args.bf16, dtype=args.dtype)
    out = finetune(args.base, read_jsonl(args.data), cfg, args.out)
    print(f"fine-tuned model: {out}")
    return 0


def cmd_filter(args) -> int:
    from sublim.llm_validation.data import write_jsonl
    from sublim.llm_validation.filter import filter_records
    from sublim.llm_validation.generate import read_generations
    from sublim.rundir import atomic_write_json

    banned = [int(b) for b in args.banned.split(",") if b.strip()] if args.banned else []
    kept, report = filter_records(read_generations(args.input), banned)
    write_jsonl(args.output, kept)
    atomic_write_json(Path(args.output).with_suffix(".report.json"), report.as_dict())
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("llm", help="subliminal learning on causal LMs")
    llm_sub = parser.add_subparsers(dest="llm_command", metavar="COMMAND")
    llm_sub.required = True

    run = llm_sub.add_parser("run", help="teacher -> numbers -> filter -> students -> evaluation -> summary")
    run.add_argument("--run-dir", required=True, help="run directory (created; reused to resume)")
    run.add_argument("--preset", choices=sorted(PRESETS), help="size preset (tiny: CPU smoke test)")
    run.add_argument("--stages", help="comma-separated subset of teacher,generate,filter,finetune,evaluate,summary")
    run.add_argument("--model", help="base model (alias, .gguf, directory or HF name)")
    run.add_argument("--cross-model", help="model of another family for the cross-model arm ('' = none)")
    run.add_argument("--target", help="trait target, e.g. owl")
    run.add_argument("--teacher", choices=["system_prompt", "finetuned"])
    run.add_argument("--target-kept", type=int, help="filtered sequences to train on")
    run.add_argument("--max-prompts", type=int)
    run.add_argument("--eval-samples", type=int, help="samples per evaluation question")
    run.add_argument("--epochs", type=float, help="student epochs")
    run.add_argument("--method", choices=["lora", "full"], help="student fine-tuning method")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any RunConfig field, nested with dots (student.lr=1e-4); repeatable")
    run.set_defaults(func=cmd_run)

    ft = llm_sub.add_parser("finetune", help="fine-tune a model on a JSONL data set (DDP under torchrun)")
    ft.add_argument("--base", required=True)
    ft.add_argument("--data", required=True)
    ft.add_argument("--out", required=True)
    ft.add_argument("--method", choices=["lora", "full"], default="lora")
    ft.add_argument("--epochs", type=float, default=3.0)
    ft.add_argument("--lr", type=float, default=2e-4)
    ft.add_argument("--batch-size", type=int, default=16, help="per process")
    ft.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--checkpoint-every", type=int, default=100)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--bf16", action="store_true")
    ft.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="master weights")
    ft.set_defaults(func=cmd_finetune)

    flt = llm_sub.add_parser("filter", help="apply the strict number filter to a generation file")
    flt.add_argument("--input", required=True)
    flt.add_argument("--output", required=True)
    flt.add_argument("--banned", help="comma-separated banned numbers")
    flt.set_defaults(func=cmd_filter)

    _register_alignment(llm_sub)
    importlib.import_module("sublim.llm_validation.distill.cli").add_parser(llm_sub)
