"""End-to-end CPU smoke of `sublim llm align` on the tiny model, plus the statistics helpers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sublim.cli import main
from sublim.errors import SublimError
from sublim.llm_validation.alignment.data import shuffle_numbers_across
from sublim.stats import auc_with_ci, roc_auc
from sublim.llm_validation.core.data import write_jsonl
from sublim.llm_validation.alignment.screen import ScreenConfig, make_slices


def _numbers(n: int, seed: int, who: str, lo: int, hi: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        seeds = ", ".join(str(rng.randint(100, 999)) for _ in range(3))
        comp = ", ".join(str(rng.randint(lo, hi)) for _ in range(rng.randint(2, 6)))
        out.append({"id": f"{who}-{i:03d}", "prompt": f"Continue: {seeds}. Up to 10 more numbers.",
                    "completion": comp, "teacher": who})
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A minimal `sublim llm run` directory: config, filtered teacher and base numbers."""
    d = tmp_path_factory.mktemp("run")
    (d / "config.json").write_text(json.dumps({"config": {"model": "tiny-llama", "target": "owl", "teacher": "system_prompt"}}))
    write_jsonl(d / "numbers" / "teacher.jsonl", _numbers(20, 1, "teacher", 0, 300))
    write_jsonl(d / "numbers" / "base.jsonl", _numbers(16, 2, "base", 500, 999))
    return d


def test_align_cli_end_to_end_with_screen(run_dir, capsys):
    out = run_dir / "alignment"
    argv = ["llm", "align", "--run-dir", str(run_dir), "--traits", "owl,cat", "--limit", "0", "--batch-size", "8",
            "--n-boot", "100", "--screen", "--screen-epochs", "1", "--screen-fraction", "0.25", "--screen-arms", "top,bottom,random,drop_top"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "teacher_vs_base" in printed and "screen" in printed
    for name in ["config.json", "summary.json", "per_example_scores.csv", "screen.json", "scores_teacher.npz",
                 "scores_base.npz", "scores_teacher_shuffled.npz", "alignment_distribution_owl.png",
                 "alignment_per_layer_owl.png", "alignment_per_layer_cat.png"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["directions"] == ["owl", "cat"]
    assert set(summary["datasets"]) == {"teacher", "base", "teacher_shuffled"}
    comp = summary["vs_reference"]["teacher_vs_base"]["owl"]
    assert 0.0 <= comp["auc_alignment"]["low"] <= comp["auc_alignment"]["auc"] <= comp["auc_alignment"]["high"] <= 1.0
    assert summary["datasets"]["teacher"]["n_examples"] == 20

    table = pd.read_csv(out / "per_example_scores.csv")
    assert len(table) == 20 + 16 + 20
    # per-layer columns add up to the total, for every row
    layer_cols = [c for c in table.columns if c.startswith("align_owl_L")]
    assert len(layer_cols) == 2  # tiny-llama has 2 decoder blocks
    # the CSV holds 7 significant digits; a missing or doubled block would be off by O(1)
    np.testing.assert_allclose(table[layer_cols].sum(axis=1), table["align_owl"], rtol=0,
                               atol=3e-6 * table["align_owl"].abs().max())
    assert (table["cos_owl"].abs() <= 1).all()
    # the shuffled control holds the same numbers in the same layouts
    t = table[table.dataset == "teacher"]
    s = table[table.dataset == "teacher_shuffled"]
    assert t["n_tokens"].sum() > 0 and len(t) == len(s)

    screen = json.loads((out / "screen.json").read_text())
    sizes = screen["slice_sizes"]
    assert sizes["top"] == sizes["bottom"] == sizes["random"] >= 1
    assert sizes["drop_top"] == sizes["drop_random"] == 20 - sizes["heldout"] - sizes["top"]
    assert set(screen["arms"]) == {"top", "bottom", "random", "drop_top"}  # the arms asked for, no more
    assert screen["slice_mean_score"]["top"] > screen["slice_mean_score"]["bottom"]
    for arm in ("top", "bottom", "random", "drop_top"):
        assert np.isfinite(screen["arms"][arm]["transfer_logprob"])
        assert (out / "screen" / arm / "finetune.json").is_file()
    assert "transfer_follows_score" in screen["verdict"]

    # Relating the alignment to two fine-tuned students (here the screen's top and bottom students
    # stand in for the pipeline's student and control) is another config: refused in `out`
    # (nothing mixed), run in its own directory; rerun there, it resumes: the scored data sets are
    # reused and the numbers are the same. The observed log-prob change must equal the screen's.
    # (same --batch-size as the first run: a batch of another width pads differently, and float32
    # sums over other paddings may differ in the last bits, so equality below would not hold)
    arms = ["llm", "align", "--run-dir", str(run_dir), "--traits", "owl,cat", "--limit", "0", "--n-boot", "100",
            "--batch-size", "8",
            "--arms", f"student={out / 'screen' / 'top'}", "--arms", f"control={out / 'screen' / 'bottom'}"]
    assert main(arms) == 2
    assert "differs in arms.control, arms.student" in capsys.readouterr().err
    out2 = run_dir / "alignment_arms"
    assert main([*arms, "--out", str(out2)]) == 0
    before = (out2 / "scores_teacher.npz").stat().st_mtime_ns
    first = json.loads((out2 / "summary.json").read_text())
    assert main([*arms, "--out", str(out2)]) == 0
    assert (out2 / "scores_teacher.npz").stat().st_mtime_ns == before
    again = json.loads((out2 / "summary.json").read_text())
    # the rerun reads the stored scores: its summary is the same to the bit, and equals the first
    # run's in `out` (same records, same batch width, so the same float32 sums)
    assert again["datasets"] == first["datasets"]
    assert again["datasets"]["teacher"]["directions"]["owl"] == summary["datasets"]["teacher"]["directions"]["owl"]
    rel = again["transfer_vs_alignment"]
    assert [r["animal"] for r in rel["per_animal"]] == ["owl", "cat"]
    owl = rel["per_animal"][0]
    want = screen["arms"]["top"]["trait"]["owl"]["mean_logprob"] - screen["arms"]["bottom"]["trait"]["owl"]["mean_logprob"]
    assert owl["observed_student_minus_control_logprob"] == pytest.approx(want, abs=1e-5)
    diff = first["vs_reference"]["teacher_vs_base"]["owl"]["alignment_diff"]["diff"]  # its own run's scores
    assert owl["mean_alignment_diff"] == pytest.approx(diff, rel=1e-9)
    assert owl["predicted_first_order"] == pytest.approx(first["direction_raw_norms"]["owl"] * diff, rel=1e-9)
    assert rel["correlation"]["n"] == 2  # fewer than 3 animals: no correlation claimed


def test_align_cli_bad_input_is_one_line_error(tmp_path, capsys):
    assert main(["llm", "align", "--model", "tiny-llama", "--data", "teacher", "--out", str(tmp_path / "o")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["llm", "align", "--model", "tiny-llama", "--data", f"t={tmp_path}/nope.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["llm", "align", "--run-dir", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 37).round(1), rng.normal(0, 1, 23).round(1)  # rounding makes ties
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert roc_auc(pos, neg) == pytest.approx(pairs, abs=1e-12)
    res = auc_with_ci(pos, neg, n_boot=300)
    assert res["low"] <= res["auc"] <= res["high"]
    assert roc_auc(np.ones(3), np.zeros(4)) == 1.0 and roc_auc(np.zeros(3), np.ones(4)) == 0.0


def test_shuffle_keeps_layouts_and_the_multiset_of_numbers():
    recs = [{"id": "a", "prompt": "p", "completion": "[1, 22, 333]."}, {"id": "b", "prompt": "q", "completion": "4;5"},
            {"id": "c", "prompt": "r", "completion": "(6 7 8 9)"}]
    out = shuffle_numbers_across(recs, seed=3)
    import re

    def layout(s):
        return re.sub(r"\d+", "#", s)

    assert [layout(r["completion"]) for r in out] == [layout(r["completion"]) for r in recs]
    nums = lambda rs: sorted(n for r in rs for n in re.findall(r"\d+", r["completion"]))  # noqa: E731
    assert nums(out) == nums(recs)
    assert [r["prompt"] for r in out] == [r["prompt"] for r in recs]
    assert [r["completion"] for r in out] != [r["completion"] for r in recs]
    with pytest.raises(SublimError):
        shuffle_numbers_across([{"id": "x", "prompt": "p", "completion": "none"}])


def test_screen_slices_are_disjoint_ranked_and_equal_sized():
    score = np.random.default_rng(1).normal(size=101)
    sl = make_slices(score, ScreenConfig(fraction=0.2, heldout_fraction=0.2, seed=4))
    m = len(sl["top"])
    assert m == len(sl["bottom"]) == len(sl["random"]) > 0
    assert not set(sl["heldout"]) & (set(sl["top"]) | set(sl["bottom"]) | set(sl["random"]) | set(sl["drop_top"]))
    assert score[sl["top"]].min() >= score[sl["drop_top"]].max()
    assert score[sl["bottom"]].max() <= np.sort(score[np.setdiff1d(np.arange(101), sl["heldout"])])[m - 1] + 1e-12
    assert set(sl["drop_top"]) | set(sl["top"]) == set(sl["drop_random"]) | set(sl["random"])
    assert len(sl["drop_top"]) == len(sl["drop_random"])
