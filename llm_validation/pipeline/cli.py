"""`sublim llm run | finetune | filter`: the pipeline's commands (registered by llm_validation/cli.py).

    sublim llm run --run-dir runs/owl --preset cpu             whole experiment (or --stages a,b)
    sublim llm finetune --base smollm2-135m --data x.jsonl --out runs/ft   (DDP-able via torchrun)
    sublim llm filter --input raw.jsonl --output kept.jsonl [--banned 666,911]

`run`: one flag per RunConfig field (generated from pipeline/config.py), a preset, and
`--set key=value` for any field, nested with dots. Every value is checked before anything is
created. A rerun without --preset starts from the run directory's config.json, so `--stages
evaluate` alone reruns the same experiment; a rerun whose config differs from the saved one is
refused (sublim/rundir.py: claim_run_dir), so results of two configs never mix in one directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from sublim.config_cli import add_config_flags, overrides_from_args, resolve_config
from sublim.errors import ConfigError

from sublim.llm_validation.core.names import check_model_name
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.pipeline.config import PRESETS, STAGES, RunConfig

RUN_HELP = {"model": "base model (alias, .gguf, directory or HF name)",
            "cross_model": "model of another family for the cross-model arm ('' = none)",
            "target": "trait target, e.g. owl", "target_kept": "filtered sequences to train on",
            "eval_samples": "samples per evaluation question"}


def build_config(args) -> RunConfig:
    """Defaults (or the run directory's saved config when no preset is given), then the preset,
    then the flags, then every --set; checked by RunConfig at construction."""
    from sublim.rundir import read_json

    cfg_path = Path(args.run_dir) / "config.json"
    saved = read_json(cfg_path)["config"] if args.preset is None and cfg_path.exists() else None
    return resolve_config(RunConfig, preset=args.preset, presets=PRESETS, saved=saved,
                          flags=overrides_from_args(args, RunConfig), sets=args.set or [], what="run")


def parse_stages(text: str | None) -> tuple[str, ...] | None:
    """The --stages list (None: all); the names are checked once, by sublim/stages.py."""
    if not text:
        return None
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    if not stages:
        raise ConfigError(f"--stages is empty; choose from {', '.join(STAGES)}")
    return stages


def cmd_run(args) -> int:
    cfg = build_config(args)
    stages = parse_stages(args.stages)
    # Imported here: stages.py pulls in torch, and a bad flag must fail in well under a second.
    from sublim.llm_validation.pipeline.stages import run_pipeline

    run_pipeline(args.run_dir, cfg, stages)
    return 0


def cmd_finetune(args) -> int:
    cfg = FinetuneConfig(**overrides_from_args(args, FinetuneConfig))
    check_model_name(args.base, "--base")
    from sublim.llm_validation.core.data import read_jsonl
    from sublim.llm_validation.core.finetune import finetune

    out = finetune(args.base, read_jsonl(args.data), cfg, args.out)
    print(f"fine-tuned model: {out}")
    return 0


def parse_banned(text: str | None) -> tuple[int, ...]:
    """'666,911' -> (666, 911); each an integer in 0..999 (a number the filter could ever see)."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) > 999:
            raise ConfigError(f"--banned expects comma-separated integers in 0..999, got {item!r}")
        out.append(int(item))
    return tuple(out)


def cmd_filter(args) -> int:
    banned = parse_banned(args.banned)
    from sublim.llm_validation.core.data import write_jsonl
    from sublim.llm_validation.pipeline.filter import filter_records
    from sublim.llm_validation.core.generate import read_generations
    from sublim.rundir import atomic_write_json

    kept, report = filter_records(read_generations(args.input), banned)
    write_jsonl(args.output, kept)
    atomic_write_json(Path(args.output).with_suffix(".report.json"), report.as_dict())
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def add_parsers(llm_sub) -> None:
    run = llm_sub.add_parser("run", help="teacher -> numbers -> filter -> students -> evaluation -> summary")
    run.add_argument("--run-dir", required=True, help="run directory (created; reused to resume)")
    run.add_argument("--preset", choices=sorted(PRESETS), help="size preset (tiny: CPU smoke test)")
    run.add_argument("--stages", help="comma-separated subset of " + ",".join(STAGES))
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any RunConfig field, nested with dots (student.lr=1e-4); repeatable")
    add_config_flags(run.add_argument_group("RunConfig fields (pipeline/config.py)"), RunConfig, helps=RUN_HELP)
    run.set_defaults(func=cmd_run)

    ft = llm_sub.add_parser("finetune", help="fine-tune a model on a JSONL data set (DDP under torchrun)")
    ft.add_argument("--base", required=True)
    ft.add_argument("--data", required=True)
    ft.add_argument("--out", required=True)
    add_config_flags(ft.add_argument_group("FinetuneConfig fields (core/config.py)"), FinetuneConfig,
                     helps={"batch_size": "per process", "grad_accum": "micro-batches per optimizer step",
                            "dtype": "master weights"})
    ft.set_defaults(func=cmd_finetune)

    flt = llm_sub.add_parser("filter", help="apply the strict number filter to a generation file")
    flt.add_argument("--input", required=True)
    flt.add_argument("--output", required=True)
    flt.add_argument("--banned", help="comma-separated banned numbers (integers 0..999)")
    flt.set_defaults(func=cmd_filter)
