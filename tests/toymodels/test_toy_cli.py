"""`sublim toy` and `sublim toy sweep` end to end at tiny size; bad input -> one line, exit 2."""

import json
import os

import numpy as np
import pytest

from sublim.cli import main

from helpers import one_line_error

TINY = ["--width", "16", "--n-models", "3", "--teacher-epochs", "1", "--distill-epochs", "1",
        "--max-examples-per-epoch", "512", "--batch-size", "256", "--max-test-examples", "1000", "-q"]


def test_toy_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in ("reference (untrained)", "teacher", "student, aux logits only", "cross-model, all logits"):
        assert label in printed
    assert {p.name for p in out.iterdir()} >= {"config.json", "per_model.csv", "per_model.json", "summary.json",
                                               "accuracy.png"}
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["width"] == 16 and cfg["n_models"] == 3 and cfg["lr"] == 3e-4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all"}
    rows = json.loads((out / "per_model.json").read_text())
    assert len(rows) == 6 * 3
    teacher = [r["test_accuracy"] for r in rows if r["arm"] == "teacher"]
    assert summary["arms"]["teacher"]["mean"] == pytest.approx(np.mean(teacher))
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, needle", [
    (["--width", "0"], "width must be a positive integer"),
    (["--m", "0"], "n_aux (m) = 0"),
    (["--optimizer", "lbfgs"], "optimizer must be one of"),
    (["--n-models", "two"], "cannot read 'two' as int"),
])
def test_bad_knobs_stop_before_writing_anything(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert main(["toy", *TINY, *argv, "--out", str(out)]) == 2
    one_line_error(capsys, needle)
    assert not out.exists()


def test_unknown_knob_in_sweep_grid(tmp_path, capsys):
    assert main(["toy", "sweep", "--grid", "nonsense=1,2", "--out", str(tmp_path / "s"), *TINY]) == 2
    one_line_error(capsys, "unknown knob 'nonsense'")


def test_unwritable_output_dir(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not bind, use a path under a file
            target = tmp_path / "file"
            target.write_text("x")
            out = target / "run"
        else:
            out = ro / "run"
        assert main(["toy", *TINY, "--out", str(out)]) == 2
        one_line_error(capsys, "not writable")
    finally:
        os.chmod(ro, 0o700)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_missing_or_corrupt_mnist_is_one_line(tmp_path, capsys, damage):
    from sublim.toymodels.mnist import DEFAULT_PATH

    path = tmp_path / "mnist.npz"
    if damage == "truncated":
        path.write_bytes(DEFAULT_PATH.read_bytes()[:100_000])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--mnist-path", str(path), "--out", str(out)]) == 2
    one_line_error(capsys, str(path))
    assert not (out / "summary.json").exists()


def test_nan_loss_is_one_line_and_leaves_no_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--optimizer", "sgd", "--lr", "1e30", "--out", str(out)]) == 2
    one_line_error(capsys, "non-finite teacher loss")
    assert not (out / "summary.json").exists() and not (out / "per_model.csv").exists()


def test_sweep_resumes_only_missing_cells(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["toy", "sweep", "--grid", "m=1,3", "--seeds", "0,1", "--out", str(out), *TINY,
            "--arms", "teacher+student_aux+cross_aux"]
    assert main(argv) == 0
    cells = sorted((out / "cells").glob("*.json"))
    assert [c.name for c in cells] == ["n_aux=1__seed=0.json", "n_aux=1__seed=1.json",
                                       "n_aux=3__seed=0.json", "n_aux=3__seed=1.json"]
    assert "4 cell(s) computed now" in capsys.readouterr().out
    before = {c.name: (c.stat().st_mtime_ns, c.read_text()) for c in cells}
    victim = out / "cells" / "n_aux=3__seed=0.json"
    victim.unlink()
    assert main(argv) == 0
    assert "1 cell(s) computed now" in capsys.readouterr().out
    for c in sorted((out / "cells").glob("*.json")):
        if c.name != victim.name:
            assert (c.stat().st_mtime_ns, c.read_text()) == before[c.name]  # untouched
    # deterministic: the recomputed cell equals the lost one
    assert json.loads(victim.read_text())["per_model"] == json.loads(before[victim.name][1])["per_model"]
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for r in summary["rows"] if r["arm"] == "teacher"]
    assert sorted(r["n_aux"] for r in rows) == ["1", "3"] and all(r["n"] == 6 for r in rows)
    assert (out / "sweep_n_aux.png").exists() and (out / "summary.csv").exists()


def test_sweep_refuses_a_cell_with_another_config(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["toy", "sweep", "--grid", "m=1", "--out", str(out), *TINY, "--arms", "teacher"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--lr", "1e-3"]) == 2
    one_line_error(capsys, "different config")


@pytest.mark.parametrize("argv", [["toy", "--foo", "3"], ["toy", "--wdith=3"], ["toy", "sweep", "--grid"]])
def test_unknown_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "sublim: error:" in capsys.readouterr().err
