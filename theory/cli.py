"""`sublim theory`: derive and check the alignment theorem, print the report, exit 1 on any FAIL."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "theory",
        help="derive the shared-init alignment theorem (sympy) and check it against autograd",
        description="Symbolic derivation + float64 autograd checks on the toy MLPs. Exit code 1 if any check FAILs.",
    )
    p.add_argument("--out", default=None, help="run directory for config.json, report.json, report.txt and plots")
    p.add_argument("--full", action="store_true", help="larger ensembles and longer multi-step runs (minutes, not seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sublim.theory.report import TheoryConfig, run_report

    # the config checks every value (one line on a bad one) and is never changed afterwards
    cfg = (TheoryConfig.full_profile(args.seed, args.threads) if args.full
           else TheoryConfig(seed=args.seed, threads=args.threads))
    ok, text = run_report(cfg, args.out)
    print(text)
    return 0 if ok else 1
