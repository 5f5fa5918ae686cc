"""Compare two run directories byte for byte, timing fields aside (the refactor check of issue 19).

    python tools/compare_runs.py BEFORE_DIR AFTER_DIR      # exit 0: identical; 1: lists what differs

Not compared, because they legitimately change from run to run (the same list as
tests/test_llm_kill.py): timings.json, train_log.jsonl (tokens/s), *.throughput.jsonl, and inside
any JSON file the keys in TIME_KEYS (config.json's environment: wall clock and git commit, a
student's training seconds, throughput); adapter_config.json's target_modules are compared as a set.
Runs that record absolute paths (align) must be made at the same path to compare. Every other file must be equal byte for byte; a JSON file
with timing keys is compared after removing them (re-serialized the same way on both sides).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SKIP_FILES = {"timings.json", "train_log.jsonl", "time_v.txt"}
SKIP_SUFFIXES = (".throughput.jsonl",)
TIME_KEYS = {"time_utc", "timings_s", "scoring_timings", "git_commit", "train_seconds_this_session", "tokens_per_s_all_ranks",
             "seconds", "examples_per_s", "wall_s", "elapsed_s",
             "phase_s",  # toy: wall seconds per phase (summary.json, sweep cells)
             "fingerprint"}  # align: a hash that includes its data file's mtime (a cache key, not a result)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIME_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = _strip(json.loads(data))
        except ValueError:
            return data
        if path.name == "adapter_config.json" and isinstance(obj.get("target_modules"), list):
            # peft writes target_modules from a Python set: its order follows the per-process string
            # hash seed, so it changes between two runs of the same code.
            obj["target_modules"] = sorted(obj["target_modules"])
        return json.dumps(obj, sort_keys=True).encode()
    return data


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and p.name not in SKIP_FILES and not p.name.endswith(SKIP_SUFFIXES) and p.name != ".lock"}


def compare(a: Path, b: Path) -> list[str]:
    """Human-readable differences between run directories a and b (empty: identical)."""
    fa, fb = _files(a), _files(b)
    out = [f"only in {a}: {r}" for r in sorted(fa - fb)] + [f"only in {b}: {r}" for r in sorted(fb - fa)]
    out += [f"differs: {r}" for r in sorted(fa & fb) if _content(a / r) != _content(b / r)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    diffs = compare(Path(argv[0]), Path(argv[1]))
    print("\n".join(diffs) if diffs else "identical (timings aside)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
