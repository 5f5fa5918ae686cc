"""Nothing lost, nothing mixed, never a traceback: `sublim toy`, `sublim toy sweep` and `sublim theory`
run directories under damage (corrupt data, no memory, full disk, other configs, a second process,
kill -9). Every failure is one stderr line and exit 2; what was finished stays byte-identical."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

import sublim.rundir
from sublim.cli import main
from sublim.errors import ConfigError, DataError
from sublim.rundir import claim_run_dir, run_dir_lock
from sublim.toymodels import memory, mnist
from sublim.toymodels.config import ToyConfig
from sublim.toymodels.model import init_params

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--width", "16", "--n-models", "3", "--teacher-epochs", "1", "--distill-epochs", "1",
        "--max-examples-per-epoch", "512", "--batch-size", "256", "--max-test-examples", "1000", "-q"]
SWEEP = ["toy", "sweep", "--grid", "m=1,3", *TINY, "--arms", "teacher+student_aux+cross_aux"]


def one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sublim: error:") and needle in err, err


def snapshot(d: Path) -> dict:
    """Every file under d (bytes and mtime): 'unchanged' means this compares equal."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# --- MNIST ----------------------------------------------------------------------------------------

def damaged_copy(tmp_path: Path, offset: int) -> Path:
    data = bytearray(mnist.DEFAULT_PATH.read_bytes())
    for i in range(16):
        data[offset + i] ^= 0xFF
    path = tmp_path / "mnist.npz"
    path.write_bytes(bytes(data))
    return path


# Offsets inside the deflate streams of the members: 200 bytes into x_test's data makes zlib
# itself fail ("invalid distance too far back"); the middle of x_train decompresses to wrong
# bytes that zipfile's CRC check catches (BadZipFile). Both must end as one DataError line.
@pytest.mark.parametrize("where, kind", [(9_851_366, "zlib.error"), (4_911_034, "BadZipFile")])
def test_corrupt_compressed_member_is_one_line(tmp_path, capsys, where, kind):
    path = damaged_copy(tmp_path, where)
    with pytest.raises(DataError, match=kind):
        mnist.load_raw(path)
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--mnist-path", str(path), "--out", str(out)]) == 2
    one_line_error(capsys, str(path))
    assert not out.exists()  # found before the run directory was claimed


def test_embedded_file_is_checked_by_its_whole_file_sha256(tmp_path, monkeypatch, capsys):
    assert mnist.file_sha256(mnist.DEFAULT_PATH) == mnist.FILE_SHA256
    bad = damaged_copy(tmp_path, 9_851_366)
    monkeypatch.setattr(mnist, "DEFAULT_PATH", bad)
    with pytest.raises(DataError, match="embedded MNIST file is corrupt or edited"):
        mnist.load_raw()
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--out", str(out)]) == 2
    one_line_error(capsys, "sha256")
    assert not out.exists()


# --- memory ---------------------------------------------------------------------------------------

def test_memory_estimate_counts_the_real_parameters_and_grows_with_the_ensemble():
    cfg = ToyConfig(width=64, n_models=2)
    assert cfg.spec.n_params() == sum(p[0].numel() for p in init_params(cfg.spec, 1))
    base = memory.estimate_bytes(cfg)
    assert memory.estimate_bytes(ToyConfig(width=64, n_models=4)) > base
    assert memory.estimate_bytes(ToyConfig(width=128, n_models=2)) > base
    assert memory.estimate_bytes(ToyConfig(width=64, n_models=2, dtype="float64")) > base
    # the paper's defaults (10 models) fit in the few GB of any laptop or CI runner
    assert memory.estimate_bytes(ToyConfig()) < 2 * memory.GIB
    # 100,000 paper-sized models: their inits alone are 2 x 1e5 x 270,093 params x 4 B = 201 GiB
    assert memory.estimate_bytes(ToyConfig(n_models=100_000)) > 200 * memory.GIB


@pytest.mark.parametrize("argv", [["--n-models", "100000"], ["--width", "1000000000"]])
def test_configs_that_cannot_fit_are_refused_before_anything_is_written(tmp_path, capsys, argv):
    # The paper's model size (not TINY's width 16: 100,000 width-16 models need only ~10 GiB, which
    # a big machine has, and the run would then really start). Guarded so that no machine ever
    # tries to train a config that the check lets through.
    cfg = ToyConfig(**{argv[0][2:].replace("-", "_"): int(argv[1])})
    have, _ = memory.available_bytes("cpu")
    if have is None or memory.estimate_bytes(cfg) <= have:
        pytest.skip(f"this machine has {have} bytes available: {argv} would fit")
    small = ["--teacher-epochs", "1", "--distill-epochs", "1", "--max-examples-per-epoch", "512", "-q"]
    out = tmp_path / "run"
    assert main(["toy", *small, *argv, "--out", str(out)]) == 2
    one_line_error(capsys, "GiB")
    assert not out.exists()
    assert main(["toy", "sweep", "--grid", "seed=0,1", *small, *argv, "--out", str(out)]) == 2
    one_line_error(capsys, "GiB")
    assert not out.exists()


def test_force_skips_the_memory_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: (1, "of memory is available"))
    with pytest.raises(ConfigError, match="--force"):
        memory.check_fits(ToyConfig())
    memory.check_fits(ToyConfig(), force=True)
    assert main(["toy", *TINY, "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "GiB")
    assert main(["toy", *TINY, "--force", "--out", str(tmp_path / "b")]) == 0


# --- run directories ------------------------------------------------------------------------------

def test_toy_rerun_reuses_a_finished_run_and_refuses_another_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["toy", *TINY, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    before = snapshot(out)
    assert main(["toy", *TINY, "--out", str(out)]) == 0  # same config: reused, not recomputed
    again = capsys.readouterr().out
    assert "reused, not recomputed" in again and first.splitlines()[:7] == again.splitlines()[:7]
    assert snapshot(out) == before
    assert main(["toy", *TINY, "--lr", "1e-3", "--out", str(out)]) == 2  # another config: refused
    one_line_error(capsys, "different config (differs in lr)")
    assert snapshot(out) == before  # config.json and the finished results byte-identical


def test_sweep_rerun_with_another_config_touches_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    before = snapshot(out)
    (out / "cells" / "n_aux=3.json").unlink()  # even an unfinished sweep is not rewritten
    before.pop("cells/n_aux=3.json")
    assert main([*SWEEP, "--lr", "1e-3", "--out", str(out)]) == 2
    one_line_error(capsys, "differs in base.lr")
    assert snapshot(out) == before


def test_a_second_process_on_a_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # flock locks belong to the open file description, so a lock held here blocks main() here too
    with run_dir_lock(out):
        assert main(["toy", *TINY, "--out", str(out)]) == 2
        one_line_error(capsys, f"another sublim process (pid {os.getpid()})")
        assert main([*SWEEP, "--out", str(out)]) == 2
        one_line_error(capsys, "another sublim process")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert main([*SWEEP, "--out", str(out)]) == 0  # the lock dies with its holder


def test_full_disk_is_one_line_and_keeps_finished_cells(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    (out / "cells" / "n_aux=3.json").unlink()
    before = snapshot(out)
    real = sublim.rundir.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name.endswith(".json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(sublim.rundir, "atomic_write_bytes", full_disk)
    assert main([*SWEEP, "--out", str(out)]) == 2
    one_line_error(capsys, "No space left on device")
    assert snapshot(out) == before
    monkeypatch.undo()
    assert main([*SWEEP, "--out", str(out)]) == 0  # space is back: the rerun resumes
    assert "1 cell(s) computed now" in capsys.readouterr().out


def test_theory_run_directory_is_claimed(tmp_path, capsys):
    from sublim.theory.report import TheoryConfig, run_report

    out = tmp_path / "theory"
    with claim_run_dir(out, asdict(TheoryConfig(seed=1))):
        pass
    before = snapshot(out)
    with pytest.raises(ConfigError, match="differs in seed"):
        run_report(TheoryConfig(seed=0), str(out))
    assert main(["theory", "--out", str(out)]) == 2
    one_line_error(capsys, "different config")
    assert snapshot(out) == before


# --- kill -9 --------------------------------------------------------------------------------------

def test_sweep_killed_with_sigkill_resumes_to_the_same_summary(tmp_path):
    """SIGKILL a real sweep process after its first cell file appears; the rerun must finish the
    rest and write a summary byte-identical to an uninterrupted sweep's. summary.json/csv hold
    only accuracies (no wall times), so they compare whole; the cells' own `summary` holds
    wall_s, so cells are compared on their per-model numbers."""
    argv = ["toy", "sweep", "--grid", "m=1,2,3", "--seeds", "0,1", *TINY, "--arms", "teacher+student_aux+cross_aux"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "SUBLIM_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", *argv, "--out", str(killed)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((killed / "cells").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = list((killed / "cells").glob("*.json"))
    assert 1 <= len(done) < 6 and not (killed / "summary.json").exists(), "the kill came too late to test anything"
    assert main([*argv, "--out", str(killed)]) == 0  # resumes (the dead process's lock died with it)
    assert main([*argv, "--out", str(clean)]) == 0
    for name in ("summary.json", "summary.csv"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    for cell in sorted((clean / "cells").glob("*.json")):
        a, b = json.loads(cell.read_text()), json.loads((killed / "cells" / cell.name).read_text())
        assert a["per_model"] == b["per_model"] and a["config"] == b["config"], cell.name
