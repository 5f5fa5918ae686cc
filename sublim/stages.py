"""The one stage runner of the lab: an experiment is a list of `Stage`s over one run directory.

    STAGES = [Stage("contexts", contexts_stage, inputs=("cfg", "out", "tokenizer"), outputs=("contexts/",)), ...]
    run_stages(run_dir, cfg, STAGES, selected, resources={"cfg": cfg, "tokenizer": Lazy(load_tok)})

A stage is a plain function; it declares its name, the named inputs it receives (keyword
arguments) and the files it writes (for the reader and `--help`; the runner does not check files).
It never sees a run object: whatever it needs is a resource, either a value or a `Lazy` computed on
first use from other resources and then shared by every later stage (the tokenizer is loaded, the
contexts tokenized and the number vocabulary decoded once per process, not once per consumer).

The runner owns what every experiment had written for itself:
- the stage-name check (once, before anything exists; one-line ConfigError),
- the order: always the experiment's canonical order, whatever order the user typed,
- `claim_run_dir` (a directory holding another config is refused, a second live process too),
- timings.json, rewritten after every stage (an interrupted run keeps the finished stages' times).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sublim.errors import ConfigError
from sublim.progress import log
from sublim.rundir import atomic_write_json, claim_run_dir, read_json


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...] = ()      # resource names, passed as keyword arguments
    outputs: tuple[str, ...] = ()     # files/folders it writes, relative to the run directory
    help: str = ""


@dataclass
class Lazy:
    """A resource computed on first use from other resources (its `inputs`), then kept."""

    fn: Callable[..., Any]
    inputs: tuple[str, ...] = ()


@dataclass
class StageInputs:
    """Named values and Lazy providers; `get` computes a Lazy once and memoizes it."""

    items: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name not in self.items:
            raise KeyError(f"no resource {name!r} (have {', '.join(sorted(self.items))})")
        item = self.items[name]
        if isinstance(item, Lazy):
            item = self.items[name] = item.fn(**{k: self.get(k) for k in item.inputs})
        return item


def check_stage_names(selected: Sequence[str] | None, stages: Sequence[Stage], what: str) -> tuple[str, ...]:
    """The selected stage names in canonical order (None: all); an unknown name is one line."""
    names = tuple(s.name for s in stages)
    if selected is None:
        return names
    unknown = [s for s in selected if s not in names]
    if unknown:
        raise ConfigError(f"{what}: unknown stage(s) {', '.join(unknown)} (use {', '.join(names)})")
    return tuple(n for n in names if n in selected)


def run_stages(run_dir: str | Path, config: Any, stages: Sequence[Stage], selected: Sequence[str] | None,
               resources: Mapping[str, Any], *, what: str) -> dict[str, float]:
    """Run the selected stages in canonical order inside the claimed run directory; returns the
    seconds each took (also merged into run_dir/timings.json after every stage)."""
    order = check_stage_names(selected, stages, what)
    res = StageInputs(dict(resources))
    timings: dict[str, float] = {}
    with claim_run_dir(run_dir, config) as out:
        res.items.setdefault("out", Path(out))
        path = Path(out) / "timings.json"
        for stage in (s for s in stages if s.name in order):
            log(f"== {what} stage {stage.name} ==")
            t0 = time.perf_counter()
            stage.fn(**{k: res.get(k) for k in stage.inputs})
            timings[stage.name] = round(time.perf_counter() - t0, 2)
            log(f"{what} stage {stage.name}: {timings[stage.name]:.1f}s")
            old = read_json(path) if path.exists() else {}
            atomic_write_json(path, {**old, **timings})
    return timings
