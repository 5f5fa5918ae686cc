"""Nothing mixed, never a traceback: every config value is checked when parsed (one line, exit 2,
nothing created, torch not even imported), a directory holding another config is refused before
anything in it is touched (run, finetune --out, align --out), and broken data files are one-line
errors."""

import json
import os
import subprocess
import sys

import pytest

from sublim.cli import main
from sublim.rundir import claim_run_dir

from helpers import one_line_error

BAD_RUN_FLAGS = [
    (["--set", "student.lr=NaN"], "student.lr"),
    (["--eval-samples", "0"], "eval_samples"),
    (["--cross-model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--set", "gen_temperature=NaN"], "gen_temperature"),
    (["--set", "eval_batch_size=0"], "eval_batch_size"),
    (["--set", "target_kept=abc"], "target_kept"),
    (["--set", "student=5"], "student is a config section"),
    (["--set", "banned_numbers=1000"], "banned_numbers"),
    (["--set", "student.bogus=1"], "unknown config key"),
    (["--device", "gpu"], "device must be"),
    (["--stages", "teacher,nope"], "unknown stage"),
]


@pytest.mark.parametrize("flags,message", BAD_RUN_FLAGS, ids=[" ".join(f) for f, _ in BAD_RUN_FLAGS])
def test_bad_config_values_fail_at_parse_time(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    assert main(["-q", "llm", "run", "--run-dir", str(run_dir), "--preset", "tiny", *flags]) == 2
    one_line_error(capsys, message)
    assert not run_dir.exists()  # nothing created


def test_config_errors_come_before_torch_is_imported(tmp_path):
    # The speed promise (< 1 s) as a deterministic check: validation never imports torch
    # (~1.5 s to import on the CI machine), so the error comes after the ~0.2 s Python start.
    code = ("import sys; from sublim.cli import main; rc = main(['-q', 'llm', 'run', '--run-dir', sys.argv[1], "
            "'--preset', 'tiny', '--set', 'student.lr=NaN']); assert 'torch' not in sys.modules, 'torch imported'; "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "student.lr" in proc.stderr


def test_run_rerun_with_another_config_is_refused_before_anything_is_touched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["-q", "llm", "run", "--run-dir", str(run_dir), "--stages", "teacher"]
    assert main([*base, "--preset", "tiny"]) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert main([*base, "--preset", "tiny", "--set", "eval_samples=3"]) == 2   # preset + a change
    assert main([*base, "--eval-samples", "3"]) == 2                         # saved config + a change
    err = capsys.readouterr().err
    assert err.count("holds a run with a different config (differs in eval_samples)") == 2
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # config.json not rewritten, nothing else touched
    assert main([*base]) == 0 and main([*base, "--preset", "tiny"]) == 0  # the same config resumes


def _records(n, completion="1, 2, 3"):
    return [{"id": f"r{i}", "prompt": f"Continue {i}", "completion": completion} for i in range(n)]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_finetune_out_guards_its_config_and_data(tmp_path, capsys):
    data, other = _write(tmp_path / "d.jsonl", _records(4)), _write(tmp_path / "o.jsonl", _records(4, "4, 5"))
    out = tmp_path / "ft"
    argv = ["-q", "llm", "finetune", "--base", "tiny-llama", "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--max-length", "48", "--checkpoint-every", "0"]
    assert main([*argv, "--data", str(data)]) == 0
    config = (out / "config.json").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--data", str(data), "--lr", "1e-3"]) == 2
    assert "differs in lr" in capsys.readouterr().err
    assert main([*argv, "--data", str(other)]) == 2
    assert "differs in data_sha256" in capsys.readouterr().err
    assert (out / "config.json").read_bytes() == config
    assert main([*argv, "--data", str(data)]) == 0  # same config and data: the finished result is reused


def test_align_out_holding_another_config_is_refused(tmp_path, capsys):
    from sublim.llm_validation.alignment.config import AlignConfig

    data = _write(tmp_path / "t.jsonl", _records(3))
    out = tmp_path / "align"
    with claim_run_dir(out, AlignConfig(model="tiny-llama", data={"teacher": str(data)}, out=str(out), seed=1)):
        pass
    listing = sorted(os.listdir(out))
    assert main(["-q", "llm", "align", "--model", "tiny-llama", "--data", f"teacher={data}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs in seed" in err and "\n" not in err
    assert sorted(os.listdir(out)) == listing


BROKEN = {
    "not_utf8": (b'{"id": "a", "prompt": "p", "completion": "1, 2"}\n{"id": "b", "prompt": "\xff\xfe", '
                 b'"completion": "3"}\n', "not UTF-8"),
    "completion_int": (b'{"id": "a", "prompt": "p", "completion": 123}\n', "'completion' must be a string, got int"),
    "prompt_null": (b'{"id": "a", "prompt": null, "completion": "1"}\n', "'prompt' must be a string, got NoneType"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("command", ["finetune", "align"])
def test_broken_data_files_are_one_line_errors(tmp_path, capsys, case, command):
    content, message = BROKEN[case]
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    if command == "finetune":
        argv = ["finetune", "--base", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "o")]
    else:
        argv = ["align", "--model", "tiny-llama", "--data", f"t={data}", "--out", str(tmp_path / "o")]
    assert main(["-q", "llm", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sublim: error:") and message in err and "\n" not in err
    if case == "not_utf8":
        assert "d.jsonl:2" in err  # the file and line


BAD_DISTILL_FLAGS = [  # issue #23's shared-init part arms and steering readout (distill/config.py)
    (["--sigma-parts", "neck"], "unknown sigma part 'neck'"),
    (["--sigma-parts", "all"], "unknown sigma part 'all'"),
    (["--sigma-parts", "head", "--sigmas", ""], "sigma_parts needs sigmas"),
    (["--steering", "maybe"], "steering"),
    (["--steering", "true", "--teachers", "finetuned", "--other", ""], "steering reads students of system-prompt"),
]


@pytest.mark.parametrize("flags,message", BAD_DISTILL_FLAGS, ids=[" ".join(f) for f, _ in BAD_DISTILL_FLAGS])
def test_bad_distill_knobs_fail_in_one_line_before_torch_is_imported(tmp_path, flags, message):
    code = ("import json, sys; from sublim.cli import main; rc = main(['-q', 'llm', 'distill', '--run-dir', sys.argv[1], "
            "'--preset', 'tiny', *json.loads(sys.argv[2])]); assert 'torch' not in sys.modules, 'torch imported'; "
            "sys.exit(rc)")
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), json.dumps(flags)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not run_dir.exists()
