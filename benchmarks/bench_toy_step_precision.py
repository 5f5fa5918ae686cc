"""One toy student step (forward + backward of every arm, HandMLP), three ways, interleaved.

    python benchmarks/bench_toy_step_precision.py            # -> benchmarks/results/toy_step_precision_cpu.json
    python benchmarks/bench_toy_step_precision.py --groups 2 --repeats 2 --out /tmp/t.json   # smoke

The default run's student step: `groups` teachers x 4 student arms (784-256-256-13), batch 1024,
one shared input batch per group. Ways: `fp32` (HandMLP, the default engine), `bf16_copies`
(HandMLPBf16, what fast_matmul=bf16 runs: bf16 copies of the fp32 masters), `fpmath` (HandMLP in
float32 with oneDNN's bf16 fpmath mode, torch.backends.mkldnn.matmul.fp32_precision = "bf16": the
GEMMs convert inside, no copies; an alternative, not wired to the knob). On a shared machine each
repeat measures the fp32 and bf16 matmul rates (1024x784 @ 784x1024, the first layer's shape)
and then one step of each way; medians over repeats; os.getloadavg() recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def onednn_bf16_fpmath():
    m = torch.backends.mkldnn.matmul
    old = m.fp32_precision
    m.fp32_precision = "bf16"
    try:
        yield
    finally:
        m.fp32_precision = old


def matmul_rate(dtype) -> float:
    a, b = torch.randn(1024, 784).to(dtype), torch.randn(784, 1024).to(dtype)
    a @ b
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 1024 * 784 * 1024 / min(times) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=10, help="teachers (each with 4 student arms)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_step_precision_cpu.json"))
    args = p.parse_args()
    from sublim.precision import cpu_bf16_units
    from sublim.rundir import atomic_write_json
    from sublim.toymodels.model import HandMLP, HandMLPBf16, MLPSpec, Workspace, init_params

    if not cpu_bf16_units():
        print("bench_toy_step_precision: this CPU has no bf16 units", file=sys.stderr)
        return 2
    spec, k, batch = MLPSpec(), 4, 1024
    g = args.groups
    x = torch.rand(g, batch, spec.d_in, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dz = torch.randn(g * k, spec.d_out, batch, generator=torch.Generator().manual_seed(1))
    nets = {"fp32": HandMLP(init_params(spec, g * k, seed=0), Workspace()),
            "bf16_copies": HandMLPBf16(init_params(spec, g * k, seed=0), Workspace()),
            "fpmath": HandMLP(init_params(spec, g * k, seed=0), Workspace())}
    # forward 2*i*o per layer, weight gradient 2*i*o per layer, input gradient for layers 2 and 3
    per_example = sum(4 * i * o for i, o in spec.layer_dims) + sum(2 * i * o for i, o in spec.layer_dims[1:])
    flops = g * k * batch * per_example

    def step(kind: str) -> float:
        with onednn_bf16_fpmath() if kind == "fpmath" else contextlib.nullcontext():
            t0 = time.perf_counter()
            nets[kind].forward(x)
            nets[kind].backward(dz)
            return time.perf_counter() - t0

    for kind in nets:
        step(kind)  # first touch of the workspaces, oneDNN kernels
    rows = []
    for rep in range(args.repeats):
        row = {"repeat": rep, "matmul_fp32_gflops": matmul_rate(torch.float32),
               "matmul_bf16_gflops": matmul_rate(torch.bfloat16), "loadavg_1min": os.getloadavg()[0]}
        row.update({f"{kind}_s": step(kind) for kind in nets})
        rows.append(row)
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "repeat"}
    out = {"benchmark": "toy_step_precision", "groups": g, "arms": k, "batch": batch, "flops_per_step": flops,
           "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "bf16_units": cpu_bf16_units(), "rows": rows, "median": med, "loadavg_end": os.getloadavg()}
    for kind in nets:
        gf = flops / med[f"{kind}_s"] / 1e9
        out[kind] = {"gflops": gf, "ratio_to_fp32_matmul": gf / med["matmul_fp32_gflops"],
                     "ratio_to_bf16_matmul": gf / med["matmul_bf16_gflops"],
                     "speedup_vs_fp32": med["fp32_s"] / med[f"{kind}_s"]}
        print(f"{kind:12s} {med[f'{kind}_s']:.3f} s  {gf:6.0f} GFLOP/s  {out[kind]['ratio_to_fp32_matmul']:.2f} of fp32 mm, "
              f"{out[kind]['ratio_to_bf16_matmul']:.3f} of bf16 mm, x{out[kind]['speedup_vs_fp32']:.2f}")
    atomic_write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
