"""Compile the Triton kernels for a GPU target WITHOUT a GPU and report what the compiler made of them.

    python benchmarks/compile_report.py            # sm_90 (H100/H200), writes benchmarks/results/kernels_compile_sm90.json
    python benchmarks/compile_report.py --arch 80  # A100

Triton's wheel ships ptxas and cuobjdump, so every launch plan that kernels/ uses on a GPU can be
compiled here, on a CPU-only machine, and checked for the things that make a kernel slow before
any device time is spent: registers per thread and spills (local-memory stack), shared memory,
tensor-core instruction family (wgmma on Hopper or the older mma.sync), and the number of layout
conversions Triton inserted (each one a round trip through shared memory). Device time is scarce:
this is how a plan that spills gets caught on a laptop. It measures nothing about speed.

The plans listed are those of triton_kernels.materialize_plan / ghost_plan / gd_dots for bf16
inputs; `--json` path to write elsewhere.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # must compile, not interpret: set before triton loads

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sublim.kernels import triton_kernels as tk  # noqa: E402
from sublim.rundir import atomic_write_json, environment_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BF16 = tl.bfloat16


def _signature(fn, pointer_types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Argument name -> Triton type: pointers as given, constexprs as such, every other arg i32."""
    return {n: ("constexpr" if n in constexprs else pointer_types.get(n, "i32")) for n in fn.arg_names}


def materialize_cases():
    ptrs = {"x_ptr": "*bf16", "g_ptr": "*bf16", "mask_ptr": "*i8", "dir_ptr": "*bf16", "out_sq_ptr": "*fp32",
            "out_dot_ptr": "*fp32"}
    cases = []
    for k in (0, 1, 16):
        plans = {tk.materialize_plan(32, 4096, 4096, k, True, ex) for ex in (None, 1, 2, 4)}
        for BM, BN, BT, ex, warps in sorted(plans):
            c = dict(K=max(k, 1), KP=max(2, triton.next_power_of_2(max(k, 1))), HAS_MASK=False, HAS_DIR=k > 0,
                     BM=BM, BN=BN, BT=BT, PREC="tf32", CDT=BF16, EX=ex)
            cases.append((f"materialize k={k} tile={BM}x{BN} BT={BT} EX={ex}", tk._materialize_kernel, ptrs, c, warps))
    return cases


def ghost_cases():
    ptrs = {n: "*bf16" for n in ("x_ptr", "g_ptr")} | {"mask_ptr": "*i8", "pair_t_ptr": "*i32", "pair_s_ptr": "*i32",
                                                        "px_ptr": "*fp32", "pg_ptr": "*fp32", "out_w_ptr": "*fp32",
                                                        "out_b_ptr": "*fp32"}
    cases = []
    for fused, BT in ((True, 64), (False, 128)):
        c = dict(FUSED=fused, DIAG_ONLY=True, HAS_MASK=False, HAS_BIAS=False, BT=BT, BK=64, PREC_X="tf32",
                 PREC_G="tf32", CDT_X=BF16, CDT_G=BF16)
        cases.append((f"ghost {'fused' if fused else 'split'} BT={BT}", tk._ghost_partial_kernel, ptrs, c,
                      8 if BT >= 128 else 4))
    return cases


def gd_cases():
    ptrs = {"x_ptr": "*bf16", "g_ptr": "*bf16", "mask_ptr": "*i8", "dir_ptr": "*bf16", "out_ptr": "*fp32"}
    return [(f"gd tiles {BR}x{BN}x{BO}", tk._gd_kernel, ptrs,
             dict(HAS_MASK=False, BR=BR, BN=BN, BO=BO, PREC="tf32", CDT=BF16), warps)
            for BR, BN, BO, warps in ((64, 128, 64, 4), (128, 128, 64, 8))]


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_case(name, fn, ptrs, constexprs, warps, arch):
    src = ASTSource(fn, _signature(fn, ptrs, constexprs), constexprs=constexprs)
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"{name}: cannot read cuobjdump -res-usage output:\n{usage}")
    regs, stack, shared, local = map(int, m.groups())
    ttgir = kernel.asm["ttgir"]
    return dict(
        kernel=name, num_warps=warps, registers=regs, spill_stack_bytes=stack, local_bytes=local,
        shared_bytes=int(kernel.metadata.shared), layout_conversions=ttgir.count("ttg.convert_layout"),
        tensor_core="wgmma" if "warp_group_dot" in ttgir else ("mma.sync" if "#ttg.nvidia_mma" in ttgir else "none"),
        compile_s=round(time.perf_counter() - t0, 2),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200, 80: A100)")
    p.add_argument("--json", default="", help="output path (default benchmarks/results/kernels_compile_sm<arch>.json)")
    args = p.parse_args(argv)
    rows = []
    for case in materialize_cases() + ghost_cases() + gd_cases():
        r = compile_case(*case, arch=args.arch)
        rows.append(r)
        print(f"{r['kernel']:45s} warps={r['num_warps']} regs={r['registers']:3d} spill={r['spill_stack_bytes']:5d} B "
              f"smem={r['shared_bytes'] // 1024:3d} KiB converts={r['layout_conversions']:2d} {r['tensor_core']}",
              flush=True)
    out = Path(args.json) if args.json else RESULTS / f"kernels_compile_sm{args.arch}.json"
    atomic_write_json(out, {"arch": args.arch, "triton": triton.__version__, "environment": environment_info(),
                            "command": " ".join([sys.executable] + sys.argv), "kernels": rows})
    print(f"wrote {out}")
    spilled = [r["kernel"] for r in rows if r["spill_stack_bytes"] or r["local_bytes"]]
    if spilled:
        print("SPILLS: " + "; ".join(spilled))
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
