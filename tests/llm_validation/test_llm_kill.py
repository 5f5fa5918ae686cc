"""kill -9 loses nothing and mixes nothing: a `sublim llm run` killed during generation and again
during fine-tuning, then rerun, ends with the same results, byte for byte, as an uninterrupted run.

Legitimately time-dependent files, not compared: config.json's environment.time_utc, timings.json,
finetune.json's train_seconds_this_session / tokens_per_s_all_ranks, train_log.jsonl (tokens/s,
and the steps after the last checkpoint appear twice), the *.throughput.jsonl logs.

Three real processes on tiny models (~2 min on 2 cores): batch size 1 for generation (48 batches,
so the kill lands inside it) and 3 student epochs with a checkpoint every step (so it lands inside
fine-tuning).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FLAGS = ["--preset", "tiny", "--set", "gen_batch_size=1", "--set", "student.epochs=3"]
COMPARED = ["summary.csv", "summary.md", "numbers/teacher.raw.jsonl", "numbers/base.raw.jsonl",
            "numbers/teacher.jsonl", "numbers/base.jsonl", "numbers/filter_report.json",
            "eval/student.answers.jsonl", "eval/student.json", "eval/control.json",
            "eval/cross_student.json", "student/adapter/adapter_model.safetensors"]


def _command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sublim.cli", "-q", "llm", "run", "--run-dir", str(run_dir), *FLAGS]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(run_dir: Path, ready, timeout_s: float = 300) -> None:
    proc = subprocess.Popen(_command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill point: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _run(run_dir: Path) -> None:
    done = subprocess.run(_command(run_dir), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SUBLIM_QUIET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_kill_during_generation_and_finetuning_then_rerun_equals_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(straight)

    _kill_when(killed, lambda: _lines(killed / "numbers" / "teacher.raw.jsonl") >= 1)
    assert _lines(killed / "numbers" / "base.raw.jsonl") < 24  # killed inside generation
    student = killed / "student"
    _kill_when(killed, lambda: _lines(student / "train_log.jsonl") >= 2 and (student / "checkpoint.pt").exists())
    assert not (student / "finetune.json").exists()  # killed inside fine-tuning
    _run(killed)

    for rel in COMPARED:
        assert (killed / rel).read_bytes() == (straight / rel).read_bytes(), rel
