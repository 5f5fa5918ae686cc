"""`sublim llm align`: per-example gradient alignment of number data sets with a teacher direction.

    sublim llm align --model smollm2-135m \\
        --data teacher=RUN/teacher_numbers.jsonl --data base=RUN/base_numbers.jsonl \\
        --shuffled teacher --traits owl,cat,dog,eagle --teacher-model RUN/teacher \\
        --limit 2000 --out RUN/alignment [--screen]

Directions (k <= 16 in total, all scored in the same backward pass):
  --traits A,B,...   one trait direction per animal: grad of mean log p(" A" | favorite-animal
                     prompts) at the base model; the FIRST is the target (ranked by the screen).
  --teacher-model P  a fine-tuned teacher (a `finetune` directory, LoRA merged, or a full model):
                     direction theta_teacher - theta_base ("teacher_delta").
Data sets: --data NAME=PATH (JSONL numbers, repeatable); --shuffled NAME adds "NAME_shuffled",
numbers permuted across responses. The first --data is the reference of the comparisons.

Writes into --out: config.json, scores_<name>.npz (per data set, reused on rerun when the
fingerprint matches: an interrupted run resumes), per_example_scores.csv, summary.json,
alignment_distribution_<dir>.png, alignment_per_layer_<dir>.png, and with --screen screen.json
plus one student per arm under screen/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sublim.errors import ConfigError, SublimError
from sublim.progress import log
from sublim.rundir import atomic_write_json, prepare_run_dir, read_json


@dataclass
class AlignConfig:
    model: str = "smollm2-135m"
    data: dict = field(default_factory=dict)  # name -> path
    shuffled: list = field(default_factory=list)
    traits: list = field(default_factory=lambda: ["owl"])
    teacher_model: str | None = None
    out: str = "runs/alignment"
    limit: int | None = 1000
    batch_size: int = 16
    max_length: int = 192            # prompt (chat template ~100 tokens) + completion
    include_embedding: bool = False
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    n_boot: int = 1000
    arms: dict = field(default_factory=dict)  # fine-tuned students to relate to the alignment, name -> dir
    screen: bool = False
    screen_fraction: float = 0.25
    screen_epochs: float = 3.0
    screen_lr: float = 2e-4
    screen_rank_by: str = "alignment"
    screen_arms: list = field(default_factory=lambda: ["top", "bottom", "random", "drop_top", "drop_random"])


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return name


def trait_prompt_ids(tokenizer) -> list[list[int]]:
    """Favorite-animal prompts ending where the animal's name starts: the pipeline's 50 questions
    with the forced answer prefix "My favorite animal is the", plus its next-token prompts."""
    from .data import format_prompt, has_chat_template
    from .prompts import EVAL_QUESTIONS, NEXT_TOKEN_PREFIXES

    pairs = [(q, "My favorite animal is the") for q in EVAL_QUESTIONS] + list(NEXT_TOKEN_PREFIXES)
    add_special = not has_chat_template(tokenizer)
    return [tokenizer(format_prompt(tokenizer, q, assistant_prefix=p), add_special_tokens=add_special)["input_ids"]
            for q, p in pairs]


def trait_token_ids(tokenizer, traits) -> dict[str, int]:
    """First token of " <animal>" (the word follows "... is the")."""
    out = {}
    for t in traits:
        ids = tokenizer(" " + t.strip().lower(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"trait {t!r} tokenizes to nothing")
        out[t.strip().lower()] = ids[0]
    return out


def _fingerprint(cfg: AlignConfig, name: str, path: Path, labels: list[str]) -> str:
    st = path.stat()
    key = {"model": cfg.model, "labels": labels, "teacher_model": cfg.teacher_model, "path": str(path.resolve()),
           "size": st.st_size, "mtime": st.st_mtime_ns, "limit": cfg.limit, "seed": cfg.seed, "name": name,
           "max_length": cfg.max_length, "include_embedding": cfg.include_embedding, "dtype": cfg.dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


OTHER_ANIMALS = ("cat", "dog", "eagle", "lion", "dolphin")


def config_from_run_dir(run_dir: str | Path, base: AlignConfig) -> AlignConfig:
    """Fill an AlignConfig from a `sublim llm run` directory: its model, its target animal first
    among the traits (then OTHER_ANIMALS as comparison directions), numbers/teacher.jsonl as the
    reference, numbers/base.jsonl, the shuffled teacher control, and the fine-tuned teacher's
    weight delta when the run fine-tuned one. Explicit options already in `base` win."""
    run_dir = Path(run_dir)
    run_cfg = read_json(run_dir / "config.json").get("config", {})
    target = str(run_cfg.get("target", "owl")).lower()
    data = dict(base.data)
    for which in ("teacher", "base"):
        path = run_dir / "numbers" / f"{which}.jsonl"
        if not path.is_file():
            raise SublimError(f"{path}: not found; run the pipeline's filter stage first")
        data.setdefault(which, str(path))
    data = {"teacher": data.pop("teacher"), **data}  # the teacher's numbers are the reference
    traits = base.traits if base.traits else [target, *[a for a in OTHER_ANIMALS if a != target]]
    teacher_model = base.teacher_model
    arms = dict(base.arms)
    for arm in ("student", "control"):
        if (run_dir / arm / "finetune.json").exists():
            arms.setdefault(arm, str(run_dir / arm))
    if teacher_model is None and run_cfg.get("teacher") == "finetuned" and (run_dir / "teacher" / "finetune.json").exists():
        teacher_model = str(run_dir / "teacher")
    return AlignConfig(**{**asdict(base), "model": base.model or run_cfg.get("model", "smollm2-135m"), "data": data,
                          "shuffled": base.shuffled or ["teacher"], "traits": traits, "teacher_model": teacher_model, "arms": arms,
                          "out": base.out or str(run_dir / "alignment")})


def run_align(cfg: AlignConfig) -> dict:
    from .alignment import (AlignmentScores, Directions, normalize_directions, score_records, scored_parameter_names,
                            trait_direction, weight_delta_direction)
    from .alignment_data import load_records, shuffle_numbers_across
    from .alignment_report import compare, specificity, write_outputs
    from .data import encode_sft_batch
    from .models import load_model

    if not cfg.data:
        raise ConfigError("give at least one --data NAME=PATH")
    for name in cfg.shuffled:
        if name not in cfg.data:
            raise ConfigError(f"--shuffled {name}: no --data with that name")
    if not cfg.traits and not cfg.teacher_model:
        raise ConfigError("no direction: give --traits and/or --teacher-model")
    if len(cfg.traits) + bool(cfg.teacher_model) > 16:
        raise ConfigError("at most 16 directions in total")
    for name, p in cfg.data.items():
        if not Path(p).is_file():
            raise SublimError(f"--data {name}: {p}: file not found")
    device = resolve_device(cfg.device)
    dtype = DTYPES.get(cfg.dtype)
    if dtype is None:
        raise ConfigError(f"--dtype must be one of {list(DTYPES)}")
    out = prepare_run_dir(cfg.out, cfg)

    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, dtype=dtype, device=device)
    names = scored_parameter_names(model, include_embedding=cfg.include_embedding)
    targets = trait_token_ids(tok, cfg.traits)
    prompts = trait_prompt_ids(tok)
    parts: list[Directions] = []
    if targets:
        parts.append(trait_direction(model, prompts, targets, names))
    if cfg.teacher_model:
        teacher = load_variant(cfg.teacher_model, model, dtype, device)
        parts.append(weight_delta_direction(model, teacher, names))
        del teacher
    labels = [lab for d in parts for lab in d.labels]
    # Directions are already unit-norm each; stacking keeps that.
    dirs = normalize_directions(labels, {n: torch.cat([d.tensors[n] for d in parts]) for n in names})
    dirs.raw_norms = [r for d in parts for r in d.raw_norms]
    log(f"align: {len(names)} weight matrices, directions {labels} (raw norms {[f'{r:.3g}' for r in dirs.raw_norms]})")

    def encode(recs):
        return encode_sft_batch(tok, list(recs), max_length=cfg.max_length)

    datasets = {name: load_records(path, limit=cfg.limit, seed=cfg.seed) for name, path in cfg.data.items()}
    sources = {name: Path(path) for name, path in cfg.data.items()}
    for name in cfg.shuffled:
        datasets[f"{name}_shuffled"] = shuffle_numbers_across(datasets[name], seed=cfg.seed)
        sources[f"{name}_shuffled"] = Path(cfg.data[name])

    scores: dict[str, AlignmentScores] = {}
    timings = {}
    for name, recs in datasets.items():
        npz, meta = out / f"scores_{name}.npz", out / f"scores_{name}.json"
        fp = _fingerprint(cfg, name, sources[name], labels)
        if npz.exists() and meta.exists() and read_json(meta).get("fingerprint") == fp:
            log(f"align: reusing {npz.name}")
            scores[name] = AlignmentScores.load_npz(npz)
            continue
        t = time.perf_counter()
        scores[name] = score_records(model, recs, encode, dirs, batch_size=cfg.batch_size, backend=cfg.backend, desc=f"score {name}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        timings[name] = {"seconds": dt, "examples_per_s": len(recs) / dt}
        scores[name].save_npz(npz)
        scores[name] = AlignmentScores.load_npz(npz)  # the summary uses exactly what a rerun would reload
        atomic_write_json(meta, {"fingerprint": fp, "n": len(recs), **timings[name]})

    reference = next(iter(cfg.data))
    summary = {"directions": labels, "direction_raw_norms": dict(zip(labels, dirs.raw_norms)), "reference": reference,
               "n_weight_matrices": len(names), "scoring_timings": timings,
               "sign_convention": "a_i = <-grad loss_i, D>, loss_i = SUM of completion-token CE, D unit norm; a_i > 0 = toward the teacher",
               **compare(scores, reference, n_boot=cfg.n_boot)}
    if targets and len(labels) > 1:
        target = labels[0]
        summary["specificity"] = {name: specificity(s, target) for name, s in scores.items()}
    if cfg.arms and targets:
        summary["transfer_vs_alignment"] = relate_transfer(model, tok, prompts, targets, cfg, scores, dirs, device, dtype)
    written = write_outputs(out, scores, summary)
    log(f"align: wrote {', '.join(written)} to {out} ({time.perf_counter() - t0:.1f}s)")

    if cfg.screen:
        from .screen import ScreenConfig, run_screen

        if not targets:
            raise ConfigError("--screen needs --traits (it measures the trait's transfer)")
        # One load from disk, then deep copies: every student starts from exactly this theta0.
        base_cpu = model.to("cpu")
        del model

        def load_base():
            import copy

            return copy.deepcopy(base_cpu).to(device), tok

        sc = ScreenConfig(direction=labels[0], rank_by=cfg.screen_rank_by, fraction=cfg.screen_fraction,
                          arms=tuple(cfg.screen_arms), epochs=cfg.screen_epochs, lr=cfg.screen_lr,
                          batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                          bf16=device.startswith("cuda"))
        summary["screen"] = run_screen(cfg.model, scores[reference], datasets[reference], encode, prompts, targets, out, sc,
                                       device=device, load_base=load_base)
        atomic_write_json(out / "summary.json", summary)
    return summary


def load_variant(path: str, base_model, dtype, device):
    """A fine-tuned model of the same base: a LoRA adapter directory is merged into a deep copy of
    the base already in memory (loading a GGUF base again costs seconds); anything else (a full
    fine-tune, a model directory) is loaded with load_model."""
    import copy

    from .models import load_model

    p = Path(path)
    info = read_json(p / "finetune.json") if (p / "finetune.json").exists() else {}
    if info.get("done") and info.get("method") == "lora" and (p / "adapter").is_dir():
        from peft import PeftModel

        ours = getattr(base_model, "sublim_name", None)
        if ours and str(info.get("base_model")) != str(ours):
            log(f"align: note: {p} was fine-tuned from {info.get('base_model')!r}; merging its adapter into {ours!r} "
                "(must be the same weights, e.g. an alias and its GGUF file)")
        was = base_model.training
        merged = PeftModel.from_pretrained(copy.deepcopy(base_model), p / "adapter").merge_and_unload()
        base_model.train(was)
        return merged.to(device).eval()
    return load_model(path, dtype=dtype, device=device)[0].to(device).eval()


def relate_transfer(model, tok, prompts, targets, cfg: AlignConfig, scores, dirs, device, dtype) -> dict:
    """Does the data's alignment predict what the students learned, animal by animal?

    First order: a gradient step of size eta on a data set changes the mean log p(animal) by
    eta * ||grad log p(animal)|| * sum_i a_i(animal) (a_i against the UNIT trait direction). So the
    student-minus-control change of log p(animal) should follow
        predicted(animal) = raw_norm(animal) * (mean a_teacher(animal) - mean a_base(animal)).
    We report both per animal and their correlation across animals (Pearson with a Fisher CI:
    few animals, so a wide CI; Spearman too). Students are the pipeline's arms (student on teacher
    numbers, control on base numbers), evaluated here with the same prompts as the directions.
    """
    from .alignment_report import correlation_with_ci
    from .models import load_model
    from .screen import trait_logprobs

    out: dict = {"logprob": {"base": trait_logprobs(model, prompts, targets)}}
    for arm, path in cfg.arms.items():
        m = load_variant(path, model, dtype, device)
        out["logprob"][arm] = trait_logprobs(m, prompts, targets)
        del m
    animals = [a for a in targets if a in scores["teacher" if "teacher" in scores else next(iter(scores))].labels]
    if {"student", "control"} <= out["logprob"].keys() and {"teacher", "base"} <= scores.keys():
        norms = dict(zip(dirs.labels, dirs.raw_norms))
        rows = []
        for a in animals:
            jt, jb = scores["teacher"].labels.index(a), scores["base"].labels.index(a)
            diff = float(scores["teacher"].alignment[:, jt].mean() - scores["base"].alignment[:, jb].mean())
            obs = out["logprob"]["student"][a]["mean_logprob"] - out["logprob"]["control"][a]["mean_logprob"]
            rows.append({"animal": a, "predicted_first_order": norms[a] * diff, "mean_alignment_diff": diff,
                         "observed_student_minus_control_logprob": obs})
        out["per_animal"] = rows
        out["correlation"] = correlation_with_ci([r["predicted_first_order"] for r in rows],
                                                 [r["observed_student_minus_control_logprob"] for r in rows])
        target = animals[0]
        out["target"] = target
        pred, obs = rows[0]["predicted_first_order"], rows[0]["observed_student_minus_control_logprob"]
        out["target_signs_agree"] = None if pred == 0 or obs == 0 else bool((pred > 0) == (obs > 0))
    return out


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


def _cmd(args) -> int:
    from .alignment_data import parse_named_paths

    cfg = AlignConfig(
        model=args.model or ("" if args.run_dir else AlignConfig.model), data={k: str(v) for k, v in parse_named_paths(args.data or [], "--data").items()},
        shuffled=list(args.shuffled or []), traits=[t for t in (args.traits or "").split(",") if t.strip()],
        teacher_model=args.teacher_model, out=args.out or "", limit=args.limit or None, batch_size=args.batch_size,
        max_length=args.max_length, include_embedding=args.include_embedding, backend=args.backend, device=args.device,
        dtype=args.dtype, seed=args.seed, n_boot=args.n_boot, screen=args.screen, screen_fraction=args.screen_fraction,
        screen_epochs=args.screen_epochs, screen_lr=args.screen_lr, screen_rank_by=args.screen_rank_by,
        screen_arms=[a for a in args.screen_arms.split(",") if a],
        arms={k: str(v) for k, v in parse_named_paths(args.arm or [], "--arm").items()})
    if args.run_dir:
        cfg = config_from_run_dir(args.run_dir, cfg)
    elif not args.out:
        raise ConfigError("give --out (or --run-dir, which defaults it to RUN_DIR/alignment)")
    elif not args.traits and not args.teacher_model:
        cfg.traits = ["owl"]
    print_summary(run_align(cfg))
    return 0


def add_parser(llm_subparsers) -> argparse.ArgumentParser:
    d = AlignConfig()
    p = llm_subparsers.add_parser("align", help="per-example gradient alignment of number data sets with a teacher direction",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=None, help="a `sublim llm run` directory: takes its model, target, numbers and teacher")
    p.add_argument("--model", default=None, help=f"base model (alias, .gguf, HF directory or name; default {d.model} or the run's)")
    p.add_argument("--data", action="append", metavar="NAME=PATH", help="numbers JSONL to score (repeatable; first = reference)")
    p.add_argument("--shuffled", action="append", metavar="NAME", help="also score NAME's numbers shuffled across responses")
    p.add_argument("--traits", default=None, help="comma-separated animals; one trait direction each (first = target; "
                   "default owl, or the run's target then " + ",".join(OTHER_ANIMALS) + ")")
    p.add_argument("--teacher-model", default=None, help="fine-tuned teacher: direction theta_teacher - theta_base")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/alignment with --run-dir)")
    p.add_argument("--arm", action="append", metavar="NAME=DIR", help="fine-tuned students to relate to the alignment "
                   "(student=DIR trained on the teacher's numbers, control=DIR on the base's; --run-dir finds them)")
    p.add_argument("--limit", type=int, default=d.limit, help="score a seeded random subset of this many records per data set (0 = all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--include-embedding", action="store_true", help="also score the (tied) embedding")
    p.add_argument("--backend", default=d.backend, choices=["auto", "triton", "torch"])
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples for AUC CIs")
    p.add_argument("--screen", action="store_true", help="also run the gradient screen (fine-tunes one student per arm)")
    p.add_argument("--screen-fraction", type=float, default=d.screen_fraction)
    p.add_argument("--screen-epochs", type=float, default=d.screen_epochs)
    p.add_argument("--screen-lr", type=float, default=d.screen_lr)
    p.add_argument("--screen-rank-by", default=d.screen_rank_by, choices=["alignment", "per_token", "cosine"])
    p.add_argument("--screen-arms", default=",".join(d.screen_arms), help="comma-separated subset of the screen's arms")
    p.set_defaults(func=_cmd)
    return p
