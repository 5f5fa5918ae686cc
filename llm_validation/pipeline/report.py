"""The summary of a run: one row per arm (target rate with Wilson 95% CI, next-token share with
95% CI over prompt wordings), the filter's rejection rates, as CSV + Markdown + a bar plot."""

from __future__ import annotations

from pathlib import Path

from sublim.errors import DataError
from sublim.rundir import atomic_write_text, read_json, save_figure

ARM_LABELS = {"base": "base model", "teacher": "teacher", "student": "student (teacher numbers)",
              "control": "control (base numbers)", "cross_base": "cross-model base",
              "cross_student": "cross-model student (teacher numbers)"}


def collect_rows(run_dir: Path, arms: list[str], cfg) -> list[dict]:
    rows = []
    for arm in arms:
        path = run_dir / "eval" / f"{arm}.json"
        if not path.exists():
            raise DataError(f"{path}: not found; run the 'evaluate' stage first")
        ev = read_json(path)
        s, nt = ev["sampled"], ev["next_token"]
        rows.append({
            "arm": arm, "model": cfg.cross_model if arm.startswith("cross") else cfg.model,
            "n_samples": s["n"],
            "target_rate": s["mentions"]["rate"], "target_ci_low": s["mentions"]["ci_low"],
            "target_ci_high": s["mentions"]["ci_high"],
            "first_word_rate": s["first_word"]["rate"], "first_word_ci_low": s["first_word"]["ci_low"],
            "first_word_ci_high": s["first_word"]["ci_high"], "one_word_rate": s["one_word"]["rate"],
            "next_token_share": nt["share"]["mean"], "next_token_share_ci": nt["share"]["ci_half"],
            "next_token_p": nt["p_target"]["mean"], "next_token_p_ci": nt["p_target"]["ci_half"],
            "next_token_rank": nt["rank"]["mean"],
            "top_answers": " ".join(f"{w}:{k}" for w, k in s["top_first_words"][:5]),
        })
    return rows


def _plot(rows: list[dict], target: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import seaborn as sns

        sns.set_theme(style="whitegrid")
        colors = sns.color_palette("deep", len(rows))
    except ImportError:  # a bare GPU image: plain matplotlib colours
        colors = [f"C{i}" for i in range(len(rows))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [r["arm"] for r in rows]
    rate = [100 * r["target_rate"] for r in rows]
    err = [[100 * (r["target_rate"] - r["target_ci_low"]) for r in rows],
           [100 * (r["target_ci_high"] - r["target_rate"]) for r in rows]]
    axes[0].bar(labels, rate, yerr=err, color=colors, capsize=4)
    axes[0].set_ylabel(f"answers naming '{target}' (%)")
    axes[0].set_title("sampled answers (Wilson 95% CI)")
    share = [100 * r["next_token_share"] for r in rows]
    axes[1].bar(labels, share, yerr=[100 * r["next_token_share_ci"] for r in rows], color=colors, capsize=4)
    axes[1].set_ylabel(f"P('{target}') share among candidates (%)")
    axes[1].set_title("next-token probability (95% CI over wordings)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(run_dir: Path, arms: list[str], cfg) -> list[dict]:
    rows = collect_rows(run_dir, arms, cfg)
    atomic_write_text(run_dir / "summary.csv", _csv(rows))
    lines = [f"# Subliminal learning run: target '{cfg.target}', model {cfg.model}, teacher {cfg.teacher}", "",
             "| arm | model | n | target rate (95% CI) | first word (95% CI) | next-token share (+-95% CI) | top answers |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {ARM_LABELS.get(r['arm'], r['arm'])} | {r['model']} | {r['n_samples']} | "
                     f"{100 * r['target_rate']:.1f}% [{100 * r['target_ci_low']:.1f}, {100 * r['target_ci_high']:.1f}] | "
                     f"{100 * r['first_word_rate']:.1f}% [{100 * r['first_word_ci_low']:.1f}, {100 * r['first_word_ci_high']:.1f}] | "
                     f"{100 * r['next_token_share']:.2f}% +- {100 * r['next_token_share_ci']:.2f} | {r['top_answers']} |")
    filt = run_dir / "numbers" / "filter_report.json"
    if filt.exists():
        lines += ["", "## Filter", "", "| numbers from | total | kept | rejection rate | used | rejected by rule |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for which, rep in read_json(filt).items():
            by_rule = ", ".join(f"{k} {v}" for k, v in rep["rejected_by_rule"].items() if v)
            lines.append(f"| {which} | {rep['total']} | {rep['kept']} | {100 * rep['rejection_rate']:.1f}% | "
                         f"{rep['used_for_training']} | {by_rule} |")
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
    try:
        _plot(rows, cfg.target, run_dir / "summary.png")
    except ImportError as e:  # matplotlib missing (bare GPU image): the table is the result
        print(f"summary: no plot ({e})")
    print("\n".join(lines))
    return rows
