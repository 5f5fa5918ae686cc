"""`sublim llm distill`: number-token logit distillation from trait teachers (see run.py).

    sublim llm distill --preset laptop --run-dir runs/distill_laptop     # ~1 h on a 2-core CPU
    sublim llm distill --preset tiny --run-dir /tmp/d                     # smoke test, seconds
    sublim llm distill --run-dir D --n-contexts 512 --sigmas 0.01,0.03 --contexts file \
        --contexts-file llm_validation/results/llm_gpu_2026-11-27_h200/base.filtered.jsonl.gz

Every DistillConfig field is a flag (generated from the dataclass; tuples are comma-separated).
A rerun with the same flags resumes; with other flags it is refused before anything is touched.
"""

from __future__ import annotations

from pathlib import Path

from sublim.config_cli import add_config_flags, overrides_from_args

from sublim.llm_validation.distill.config import PRESETS, DistillConfig, from_overrides


def add_parsers(llm_sub) -> None:
    p = llm_sub.add_parser("distill", help="number-token logit distillation from trait teachers (laptop LLM result)",
                           description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="run directory (created; rerun to resume)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="size preset")
    p.add_argument("--stages", help="comma-separated subset of contexts,teachers,cache,align,students,sft,summary")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where students train: this process, or one Ray task each (see sublim/executors.py)")
    p.add_argument("--address", default=None, help="Ray cluster address (auto | HOST:PORT); none = a local instance")
    add_config_flags(p.add_argument_group("knobs (DistillConfig fields)"), DistillConfig)
    p.set_defaults(func=cmd_distill)
    d = llm_sub.add_parser("dose", help="the dose-response of distillation, gathered from finished distill runs",
                           description="Trait shift vs the neutral teacher's student at every profiled step of each run "
                                       "(distill/dose.py): dose.json, dose.md and dose.png in --out.")
    d.add_argument("runs", nargs="+", help="finished `sublim llm distill` run directories (each with --neutral true)")
    d.add_argument("--out", required=True, help="output directory (created; a rerun with the same runs rewrites it)")
    d.set_defaults(func=cmd_dose)


def config_from_args(args) -> DistillConfig:
    return from_overrides(args.preset, overrides_from_args(args, DistillConfig))


def cmd_distill(args) -> int:
    cfg = config_from_args(args)  # every value is checked here, before any directory exists
    # Imported here, after the check, not at the top: run.py pulls in torch (seconds), and `--help`
    # or a bad flag must answer in well under a second.
    from sublim.llm_validation.distill.run import run_distill

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    run_distill(Path(args.run_dir), cfg, stages, executor=args.executor, address=args.address)
    summary = Path(args.run_dir) / "summary.md"
    if summary.exists() and (stages is None or "summary" in stages):
        print(summary.read_text())
    return 0


def cmd_dose(args) -> int:
    from sublim.llm_validation.distill.dose import write_dose  # imports numpy and matplotlib

    write_dose([Path(r) for r in args.runs], Path(args.out))
    print((Path(args.out) / "dose.md").read_text())
    return 0
