"""Memory and time of the toy claims' longest ensemble: optimizer_matched's three matched SGD arms
(30 students: 10 models x 3 arms, paper sizes, real MNIST, teachers = inits + 0.01 noise, targets
never reached), `train_arms` for EPOCHS epochs. Prints and writes the process RSS after every epoch
and the seconds per epoch. Before 6f713ef (the Alignment rows appended per step) the same script gave
1.8 / 2.8 / 3.3 / 4.3 / 5.5 / 6.7 GB after epochs 1-6 on the 2-core AMD EPYC (17 MB a step);
after it, flat.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/claims_memory.py [EPOCHS]
"""
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from sublim.rundir import atomic_write_json
from sublim.toymodels import claims as C
from sublim.toymodels.claims_run import _optimizer_matched
from sublim.toymodels.config import from_overrides
from sublim.toymodels.model import init_params
from sublim.toymodels.sweep import cached_mnist

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
OUT = Path(__file__).resolve().parent / "results" / "claims_memory.json"


def rss_mb() -> int:
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


class Epochs:
    """A progress-bar stand-in: records RSS and time at each epoch's end, stops after EPOCHS."""

    def __init__(self, steps: int):
        self.steps, self.n, self.t0, self.rows = steps, 0, time.perf_counter(), []

    def update(self, k: int) -> None:
        self.n += k
        if self.n % self.steps == 0:
            self.rows.append({"epoch": self.n // self.steps, "rss_mb": rss_mb(), "seconds": time.perf_counter() - self.t0})
            print(self.rows[-1], flush=True)
            if len(self.rows) == EPOCHS:
                raise StopIteration


cfg = from_overrides({"n_models": 10, "distill_epochs": 1})
data = cached_mnist({}, cfg)
inits = init_params(cfg.spec, 10, seed=0, device=torch.device("cpu"), dtype=torch.float32)
teachers = [p + 0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) for p in inits]
arms = [a for a in _optimizer_matched() if a.match]
bar = Epochs(C.steps_per_epoch(C.distill_examples(cfg, data.x_train.shape[0]), cfg.batch_size))
try:
    C.train_arms(cfg, arms, teachers, inits, data, 0, bar, np.zeros((10, len(arms))))
except StopIteration:
    pass
atomic_write_json(OUT, {"students": 10 * len(arms), "epochs": bar.rows, "machine": platform.processor() or platform.machine(),
                        "torch_threads": 1, "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                                                if l.startswith("model name")), "")})
