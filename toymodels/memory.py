"""Will a toy config fit in memory? An estimate made before anything is claimed or trained.

`sublim toy --n-models 100000` or `--width 1000000000` would otherwise die minutes later (or take
the machine down with it) instead of failing with one line. The estimate counts what
train.run_experiment keeps alive at its peak, in elements of the run's dtype:

- the inits of ALL n_models models (the cross-model students read any model's init), counted
  twice: init_params stacks the per-model tensors, so the list and the stack coexist for a moment;
- one chunk of models in training: its teachers and its k student arms, each with weights,
  gradients and Adam's two moment buffers (4 copies; plain SGD needs fewer, the bound stays safe);
- one batch of activations per trained model: every layer's output kept for the backward pass,
  its gradient, and the pre-activation (3 per unit), plus the chunk's input batch;
- the MNIST tensors on the device (70,000 x 784 float32) and a fixed allowance for the runtime.

It is an estimate, not a measurement: it errs high for SGD and low by the allocator's slack, so a
config is refused only when the estimate exceeds the memory available now; --force runs it anyway.
"""

from __future__ import annotations

import torch

from sublim.errors import ConfigError

from .config import ToyConfig

GIB = 1024**3
MNIST_BYTES = 70_000 * 784 * 4  # the images as float32 on the run's device
# torch, numpy, matplotlib and the interpreter themselves, plus MNIST's transient uint8 and float
# copies while it loads: a default run measured 0.97 GB resident mid-training on CPU.
RUNTIME_BYTES = 1024**3


def chunk_models(cfg: ToyConfig) -> int:
    """Models trained at once (train.chunk_size without resolving the device)."""
    from .train import CPU_AUTO_CHUNK

    if cfg.chunk_models:
        return min(cfg.chunk_models, cfg.n_models)
    return cfg.n_models if cfg.device.startswith("cuda") else min(cfg.n_models, CPU_AUTO_CHUNK)


def estimate_bytes(cfg: ToyConfig) -> int:
    """Peak bytes of `sublim toy` with cfg (see the module docstring for what is counted)."""
    spec = cfg.spec
    elem = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    n_params = spec.n_params()
    chunk = chunk_models(cfg)
    trained = chunk * (1 + len(cfg.student_arms)) if cfg.trains_teachers else 0
    params = n_params * (2 * cfg.n_models + 4 * trained)
    units = sum(d_out for _, d_out in spec.layer_dims)  # outputs of every layer, per example
    batch = max(cfg.batch_size, 1000)  # evaluation runs 1000 test digits at a time
    activations = 3 * units * batch * max(trained, chunk) + chunk * batch * spec.d_in
    return elem * (params + activations) + MNIST_BYTES + RUNTIME_BYTES


def available_bytes(device: str) -> tuple[int | None, str]:
    """(bytes free now, where) for the run's device; None when it cannot be told."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None, "GPU"  # train.resolve_device reports that with its own line
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), "of GPU memory is free"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "of memory is available"
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "of memory is available"
    except OSError:
        pass
    return None, "memory"


def check_fits(cfg: ToyConfig, force: bool = False) -> None:
    """ConfigError (one line) when cfg's estimate exceeds the memory free now, unless force."""
    if force:
        return
    need = estimate_bytes(cfg)
    have, where = available_bytes(cfg.device)
    if have is not None and need > have:
        raise ConfigError(f"this config needs about {need / GIB:,.1f} GiB (n_models={cfg.n_models}, "
                          f"width={cfg.width}, depth={cfg.depth}) but only {have / GIB:,.1f} GiB {where} now; "
                          "reduce n_models, width or chunk_models, or pass --force")
