"""`sublim llm align` (registered by llm_validation/cli.py): flags generated from AlignConfig
(alignment/config.py), the run directory shortcut, and the printed summary; the work is
alignment/run.py. No torch import at parse time: a bad option fails in well under a second.

    sublim llm align --run-dir runs/owl --limit 2000 [--screen]
    sublim llm align --model smollm2-135m --data teacher=t.jsonl --data base=b.jsonl \\
        --shuffled teacher --traits owl,cat --teacher-model RUN/teacher --out runs/align
"""

from __future__ import annotations

import argparse

from sublim.config_cli import add_config_flags, overrides_from_args

from sublim.llm_validation.alignment.config import OTHER_ANIMALS, AlignConfig

HELPS = {
    "model": "base model (alias, .gguf, HF directory or name; with --run-dir the run's)",
    "data": "NAME=PATH numbers JSONL to score (repeatable; the first is the reference)",
    "shuffled": "also score NAME's numbers shuffled across responses (repeatable)",
    "traits": "comma-separated animals, one trait direction each (first = target; with --run-dir the run's "
              "target then " + ",".join(OTHER_ANIMALS) + ")",
    "teacher_model": "fine-tuned teacher: direction theta_teacher - theta_base",
    "out": "output directory (with --run-dir: RUN_DIR/alignment)",
    "arms": "NAME=DIR fine-tuned students to relate to the alignment (student=..., control=...; --run-dir finds them)",
    "limit": "score a seeded random subset of this many records per data set (0 = all)",
    "n_boot": "bootstrap resamples for AUC CIs",
    "screen": "also run the gradient screen (fine-tunes one student per arm)",
}


def config_from_args(args) -> AlignConfig:
    given = overrides_from_args(args, AlignConfig)
    if args.run_dir:
        from sublim.llm_validation.alignment.run import config_from_run_dir

        return config_from_run_dir(args.run_dir, given)
    if "traits" not in given and given.get("teacher_model"):
        given["traits"] = ()  # only the teacher's weight delta
    return AlignConfig(**given)


def _cmd(args) -> int:
    cfg = config_from_args(args)
    from sublim.llm_validation.alignment.run import run_align

    print_summary(run_align(cfg))
    return 0


def add_parsers(llm_subparsers) -> argparse.ArgumentParser:
    p = llm_subparsers.add_parser("align", help="per-example gradient alignment of number data sets with a teacher direction",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=None, help="a `sublim llm run` directory: takes its model, target, numbers and teacher")
    add_config_flags(p.add_argument_group("AlignConfig fields (alignment/config.py)"), AlignConfig, helps=HELPS)
    p.set_defaults(func=_cmd)
    return p


def print_summary(summary: dict) -> None:
    labels = summary["directions"]
    for lab in dict.fromkeys([labels[0]] + [x for x in labels if x == "teacher_delta"]):
        _print_direction(summary, lab)
    rel = summary.get("transfer_vs_alignment", {})
    if "correlation" in rel:
        c = rel["correlation"]
        print(f"  transfer vs alignment across {c['n']} animals: Pearson r = {c['pearson_r']} "
              f"[{c.get('low')}, {c.get('high')}], Spearman {c.get('spearman_rho')}; target signs agree: {rel['target_signs_agree']}")
    if "screen" in summary:
        for arm, r in summary["screen"]["arms"].items():
            print(f"  screen {arm:>12}: transfer dlogp = {r['transfer_logprob']:+.4f}, held-out loss {r['heldout_loss']:.4f}")


def _print_direction(summary: dict, lab: str) -> None:
    print(f"alignment with D_{lab} (a_i summed over completion tokens; mean +- 95% CI):")
    for name, d in summary["datasets"].items():
        a = d["directions"][lab]["alignment"]
        c = d["directions"][lab]["cosine"]
        sp = d["directions"][lab]["share_positive"]
        print(f"  {name:>20}: a = {a['mean']:+.4g} +- {a['ci95']:.2g}   cos = {c['mean']:+.3g} +- {c['ci95']:.2g}   "
              f"a>0: {100 * sp['rate']:.1f}%   (n={a['n']})")
    for comp, v in summary["vs_reference"].items():
        if lab in v:
            auc = v[lab]["auc_alignment"]
            diff = v[lab]["alignment_diff"]
            print(f"  {comp}: diff {diff['diff']:+.4g} +- {diff['ci95']:.2g}, AUC {auc['auc']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]")
