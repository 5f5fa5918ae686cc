"""`sublim llm probe ...`: forward-only probes of the published accounts (issue 23).

    sublim llm probe entangle --run-dir runs/probe_entangle            # SmolLM2-135M, ~10 min on 2 cores
    sublim llm probe entangle --preset tiny --run-dir /tmp/e            # tiny random model (tests)

Every EntangleConfig field is a flag (probes/config.py). A rerun with the same flags (or none)
resumes; other flags on the same directory are refused before anything is touched. The
steering readout (core/steering.py, shared with distill) and the divergence-token masks (core/divergence.py, shared with distill) are
library functions called on trained students and teacher caches; they have no command.
"""

from __future__ import annotations

from pathlib import Path

from sublim.config_cli import add_config_flags, overrides_from_args

from sublim.llm_validation.probes.config import PRESETS, EntangleConfig, from_overrides


def add_parsers(llm_sub) -> None:
    p = llm_sub.add_parser("probe", help="forward-only probes of the accounts (token entanglement scan)",
                           description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="probe_command", metavar="PROBE")
    sub.required = True
    e = sub.add_parser("entangle", help="subliminal prompting scan with random-number and number-free controls",
                       description="Entangled numbers vs random numbers vs a number-free prompt (Zur et al.)")
    e.add_argument("--run-dir", required=True, help="run directory (created; rerun to resume)")
    e.add_argument("--preset", choices=sorted(PRESETS), help="size preset")
    e.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default). On a shared 2-core machine 1 thread ran a "
                        "SmolLM2 forward 3.5x faster than 2 (0.83 s vs 2.8-3.3 s at load 6); not saved in config.json")
    add_config_flags(e.add_argument_group("knobs (EntangleConfig fields)"), EntangleConfig)
    e.set_defaults(func=cmd_entangle)


def config_from_args(args) -> EntangleConfig:
    from sublim.rundir import read_json

    saved_file = Path(args.run_dir) / "config.json"
    saved = read_json(saved_file)["config"] if saved_file.exists() else None
    return from_overrides(args.preset, overrides_from_args(args, EntangleConfig), saved)


def cmd_entangle(args) -> int:
    # Imported here: run.py pulls in torch and transformers (seconds); --help and a bad flag must not.
    from sublim.llm_validation.probes.run import run_entangle

    cfg = config_from_args(args)  # every value is checked before any directory exists
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_entangle(Path(args.run_dir), cfg)
    print((Path(args.run_dir) / "summary.md").read_text())
    return 0
