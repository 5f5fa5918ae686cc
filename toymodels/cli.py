"""`sublim toy` (the paper's experiment) and `sublim toy sweep` (grids over any knobs).

Every knob of ToyConfig is an option (--n-aux / --m, --width, --distill-input, ...); only the
ones given override the paper defaults. Examples:

    sublim toy                                   # paper settings, 10 models, ~3-4 min on 2 CPU cores
    sublim toy --n-models 100 --device cuda --fast-matmul tf32
    sublim toy sweep --grid n_aux=1,3,10 --grid width=128,256 --seeds 0,1 --out runs/toy_sweep/m_width
    sublim toy sweep --grid n_aux=1,3,10 --seeds 0,1,2 --executor ray --address auto --cpus-per-cell 2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from dataclasses import fields
from pathlib import Path

from sublim.progress import is_quiet, log, set_quiet
from sublim.rundir import check_run_config, claim_run_dir, read_json

from .config import ARMS, ToyConfig, from_overrides


def _timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _add_knobs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knobs (default: the paper's settings)")
    for f in fields(ToyConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag, "--m"] if f.name == "n_aux" else [flag]
        default = "+".join(ARMS) if f.name == "arms" else f.default
        hint = " (arms joined by '+')" if f.name == "arms" else ""
        g.add_argument(*names, dest=f"knob_{f.name}", default=None, metavar="V", help=f"default {default}{hint}")
    p.add_argument("-q", "--quiet", dest="toy_quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="run even when the memory estimate exceeds the memory available now")


def _config_from_args(args) -> ToyConfig:
    overrides = {k[len("knob_"):]: v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}
    return from_overrides(overrides)


def _one_line_errors(parser: argparse.ArgumentParser, name: str) -> None:
    """argparse errors (unknown option, bad choice) as the project's one line + exit 2, no usage wall."""

    def error(message: str):
        bad = re.search(r"invalid choice: '([^']*)'", message)
        if bad:  # `--unknown 3`: argparse sees the 3 as a subcommand
            message = f"unexpected argument {bad.group(1)!r} (after an unknown --option? see `sublim {name} --help`)"
        print(f"sublim: error: {name}: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("toy", help="MNIST auxiliary-logit subliminal learning (the paper's toy experiment)",
                              description="Train teachers, distill students on noise, report all six arms.")
    _add_knobs(p)
    p.add_argument("--out", default=None, help="run directory (default runs/toy/<timestamp>)")
    p.set_defaults(func=run_toy)
    _one_line_errors(p, "toy")
    sub = p.add_subparsers(dest="toy_cmd", metavar="{sweep,claims}")
    s = sub.add_parser("sweep", help="a grid over any knobs, resumable",
                       description="Run every cell of a grid; rerun with the same --out to resume.")
    s.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2",
                   help="a knob and its values (repeatable), e.g. --grid n_aux=1,3,10")
    s.add_argument("--seeds", default=None, metavar="S1,S2", help="seeds per cell (pooled in the summary)")
    s.add_argument("--out", default=None, help="sweep directory (default runs/toy_sweep/<timestamp>)")
    s.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where missing cells run: local (this process, one after another) or ray "
                        "(one Ray task per cell; needs sublim-lab[ray])")
    s.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to join (default: start a private local Ray instance)")
    s.add_argument("--cpus-per-cell", type=int, default=None, metavar="N",
                   help="torch threads per cell, and the CPUs each Ray task asks for "
                        "(default: torch's thread count here, i.e. all cores)")
    _add_knobs(s)
    s.set_defaults(func=run_sweep_cmd)
    _one_line_errors(s, "toy sweep")
    c = sub.add_parser("claims", help="one published claim as a controlled arm set (claims_run.CLAIMS)",
                       description="Distill every arm of a claim from one set of teachers; rerun with the same --out to resume.")
    c.add_argument("claim", metavar="NAME", help="heads | optimizer | alignment | sigma")
    c.add_argument("--tiny", action="store_true", help="a seconds-long smoke (3 models, width 32, 2,048 examples, 1+1 epochs)")
    c.add_argument("--out", default=None, help="run directory (default runs/toy_claims/<name>-<timestamp>)")
    _add_knobs(c)
    c.set_defaults(func=run_claims_cmd)
    _one_line_errors(c, "toy claims")


def preflight(cfgs, force: bool, local: bool = True):
    """Everything that can be found wrong before a run directory is claimed, so that such an error
    leaves nothing behind: memory, device, and the MNIST file (missing, corrupt or edited).
    Returns the verified MNIST when every config reads the same file (else None: loaded per cell).
    On Ray (local=False) the device is the workers' (a CPU driver may send cells to GPU nodes) and
    the workers load MNIST themselves: the file is still verified here, nothing is returned."""
    from .memory import check_fits
    from .mnist import load_mnist, load_raw
    from .train import resolve_device

    for cfg in cfgs:
        check_fits(cfg, force)
        if local:
            resolve_device(cfg.device)
    paths = sorted({cfg.mnist_path for cfg in cfgs})
    if len(paths) == 1 and local:
        return load_mnist(paths[0] or None)
    for path in paths:
        load_raw(path or None)
    return None


def run_toy(args) -> int:
    """Train, evaluate and write one run directory.

    A directory that already holds a finished run with the same config is reused: its table is
    printed from summary.json and nothing is recomputed (the run is deterministic for a config
    and machine; use another --out to rerun). A directory holding another config is refused
    before anything in it is touched; an unfinished one with the same config is recomputed."""
    from .results import format_table, write_run
    from .train import run_experiment

    set_quiet(is_quiet() or args.toy_quiet)
    cfg = _config_from_args(args)
    out = Path(args.out or f"runs/toy/{_timestamp()}")
    check_run_config(out, cfg.to_dict())
    if (out / "config.json").is_file() and (out / "summary.json").is_file():
        print(format_table(read_json(out / "summary.json")))
        print(f"{out} already holds this finished run (same config): reused, not recomputed")
        return 0
    data = preflight([cfg], args.force)
    with claim_run_dir(out, cfg.to_dict()):
        log(f"sublim toy: {cfg.n_models} models on {cfg.device}; writing {out}")
        result = run_experiment(cfg, data)
        summary = write_run(out, result)
    print(format_table(summary))
    print(f"wall time {result.wall_s:.1f} s; results in {out}")
    return 0


def run_sweep_cmd(args) -> int:
    from sublim.errors import ConfigError

    from .sweep import format_table, grid_configs, parse_grid, run_sweep, sweep_config

    set_quiet(is_quiet() or args.toy_quiet)
    base = _config_from_args(args)
    specs = list(args.grid)
    if args.seeds:
        specs.append(f"seed={args.seeds}")
    if not specs:
        raise ConfigError("sweep needs at least one --grid knob=v1,v2 (or --seeds)")
    grid = parse_grid(specs)
    out = Path(args.out or f"runs/toy_sweep/{_timestamp()}")
    check_run_config(out, sweep_config(base, grid))  # another sweep's directory: refused, untouched
    data = preflight(grid_configs(base, grid), args.force, local=args.executor == "local")
    rows, computed = run_sweep(out, base, grid, data, executor=args.executor, address=args.address,
                               cpus_per_cell=args.cpus_per_cell)
    print(format_table(rows, grid))
    print(f"{len(computed)} cell(s) computed now; results in {out}")
    return 0


def run_claims_cmd(args) -> int:
    """One claim's run directory (claims_run.run_claim); the sigma claim adds the theorem's curve."""
    from .claims_run import claim_config, format_claim, run_claim

    set_quiet(is_quiet() or args.toy_quiet)
    overrides = {k[len("knob_"):]: v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}
    claim, cfg = claim_config(args.claim, overrides, tiny=args.tiny)
    out = Path(args.out or f"runs/toy_claims/{claim.name}-{_timestamp()}")
    from .claims_run import run_config

    check_run_config(out, run_config(claim, cfg))
    data = preflight([cfg], args.force)
    summary = run_claim(out, claim, cfg, data)
    if claim.name == "sigma":
        from sublim.theory.claims import write_sigma_prediction

        write_sigma_prediction(out, cfg, summary)
    print(format_claim(summary))
    print(f"results in {out}")
    return 0
