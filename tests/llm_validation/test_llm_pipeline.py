"""CPU smoke test of the whole chain on tiny random models, through the real CLI, plus the
one-line errors on bad input."""

import json

import pandas as pd
import pytest

from sublim.cli import main
from sublim.rundir import read_json


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("llm") / "run"
    assert main(["-q", "llm", "run", "--run-dir", str(run_dir), "--preset", "tiny"]) == 0
    return run_dir


def test_whole_chain_writes_every_stage(tiny_run):
    cfg = read_json(tiny_run / "config.json")["config"]
    assert cfg["model"] == "tiny-llama" and cfg["cross_model"] == "tiny-gemma"
    report = read_json(tiny_run / "numbers" / "filter_report.json")
    for which in ("teacher", "base"):
        rep = report[which]
        assert rep["total"] == 24 and rep["kept"] + sum(rep["rejected_by_rule"].values()) == rep["total"]
        kept = [json.loads(line) for line in (tiny_run / "numbers" / f"{which}.jsonl").read_text().splitlines()]
        assert len(kept) == rep["used_for_training"] > 0
        assert all("system" not in r and "love" not in r["prompt"] for r in kept)  # no trait text leaks
    for arm in ("student", "control", "cross_student"):
        assert read_json(tiny_run / arm / "finetune.json")["done"]
    assert read_json(tiny_run / "cross_student" / "finetune.json")["base_model"] == "tiny-gemma"
    df = pd.read_csv(tiny_run / "summary.csv")
    assert list(df["arm"]) == ["base", "teacher", "student", "control", "cross_base", "cross_student"]
    assert (df["n_samples"] == 10).all()
    assert ((df["target_ci_low"] <= df["target_rate"]) & (df["target_rate"] <= df["target_ci_high"])).all()
    assert ((df["next_token_share"] > 0) & (df["next_token_share"] < 1)).all()
    assert (tiny_run / "summary.png").stat().st_size > 1000
    assert "| teacher |" in (tiny_run / "summary.md").read_text()


def test_a_stage_reruns_alone(tiny_run):
    (tiny_run / "summary.csv").unlink()
    (tiny_run / "eval" / "student.json").unlink()
    before = (tiny_run / "eval" / "student.answers.jsonl").read_text()
    assert main(["-q", "llm", "run", "--run-dir", str(tiny_run), "--stages", "evaluate,summary"]) == 0
    assert (tiny_run / "summary.csv").exists() and (tiny_run / "eval" / "student.json").exists()
    # The finished samples were reused, not redrawn.
    assert (tiny_run / "eval" / "student.answers.jsonl").read_text() == before


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    assert main(["-q", "llm", "run", "--run-dir", str(tmp_path / "a"), "--preset", "tiny",
                 "--model", "no-such-model", "--stages", "teacher,generate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sublim: error: unknown model 'no-such-model'") and "\n" not in err
    run = tmp_path / "b"
    (run / "numbers").mkdir(parents=True)
    for which in ("teacher", "base"):
        (run / "numbers" / f"{which}.raw.jsonl").write_text(
            json.dumps({"id": "1", "prompt": "p", "completion": "Sure! Here are numbers", "stopped": True}) + "\n")
    assert main(["-q", "llm", "run", "--run-dir", str(run), "--preset", "tiny", "--stages", "filter"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no completion passed the filter" in err and "bad_characters" in err and "\n" not in err
    (run / "numbers" / "teacher.raw.jsonl").write_text('{"id": "1"}\n{broken\n{"id": "2"}\n')
    assert main(["-q", "llm", "run", "--run-dir", str(run), "--stages", "filter"]) == 2
    assert "teacher.raw.jsonl:2: malformed JSON line" in capsys.readouterr().err
    assert main(["-q", "llm", "run", "--run-dir", str(run), "--stages", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["-q", "llm", "run", "--run-dir", str(run), "--set", "student.bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
