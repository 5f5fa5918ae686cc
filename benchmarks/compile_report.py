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
inputs at a 7B attention layer's shape (B=32, T=128, 4096 x 4096, contiguous), specialised the way
Triton's JIT specialises a real call (unit strides are constants, multiples of 16 are marked
divisible); `--json` path to write elsewhere. Built with the Triton installed HERE (the GPU image
may carry another version), so treat it as a strong hint, not the device's truth.
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


B, T, D_IN, D_OUT, K_DIRS = 32, 128, 4096, 4096, 16  # a 7B attention layer, batch 32 x 128 tokens, contiguous


def _strides(prefix: str) -> dict:
    """Strides of contiguous x (B, T, d_in), g (B, T, d_out), mask absent (0), D (k, d_out, d_in)."""
    return {"sxb": T * D_IN, "sxt": D_IN, "sxd": 1, "sgb": T * D_OUT, "sgt": D_OUT, "sgd": 1, "smb": 0, "smt": 0,
            "sdk": D_OUT * D_IN, "sdo": D_IN, "sdi": 1}


def _specialize(fn, ptrs: dict[str, str], ints: dict[str, int], constexprs: dict):
    """(signature, constexprs, attrs) as Triton's JIT would build them for a call with these values:
    an int equal to 1 becomes a constant, a multiple of 16 (and every 16-byte aligned pointer) gets
    tt.divisibility = 16. Without this a unit stride is unknown at compile time, loads cannot be
    vectorised, and the report would show a kernel that never runs on the device."""
    sig, consts, attrs = {}, dict(constexprs), {}
    for idx, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
            attrs[(idx,)] = [["tt.divisibility", 16]]
        else:
            v = ints[name]
            if v == 1:
                sig[name], consts[name] = "constexpr", 1
            else:
                sig[name] = "i32"
                if v % 16 == 0:
                    attrs[(idx,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def materialize_cases():
    ptrs = {"x_ptr": "*bf16", "g_ptr": "*bf16", "mask_ptr": "*i8", "dir_ptr": "*bf16", "out_sq_ptr": "*fp32",
            "out_dot_ptr": "*fp32"}
    cases = []
    for k in (0, 1, 16):
        plans = {tk.materialize_plan(B, D_IN, D_OUT, k, True, ex) for ex in (None, 1, 2, 4)}
        for BM, BN, BT, ex, warps in sorted(plans):
            ints = dict(B=B, T=T, D_IN=D_IN, D_OUT=D_OUT, EX_PER_PROG=B, N_TILES=(D_OUT // BM) * (D_IN // BN),
                        **_strides("x"))
            c = dict(K=max(k, 1), KP=max(2, triton.next_power_of_2(max(k, 1))), HAS_MASK=False, HAS_DIR=k > 0,
                     BM=BM, BN=BN, BT=BT, PREC="tf32", CDT=BF16, EX=ex)
            cases.append((f"materialize k={k} tile={BM}x{BN} BT={BT} EX={ex}", tk._materialize_kernel, ptrs, ints, c, warps))
        BM, BN, BT, _, warps = tk.materialize_plan(B, D_IN, D_OUT, k, True, 1)
        ints = dict(B=B, T=T, D_IN=D_IN, D_OUT=D_OUT, EX_PER_PROG=B, **_strides("x"))
        c = dict(K=max(k, 1), KP=max(2, triton.next_power_of_2(max(k, 1))), HAS_MASK=False, HAS_DIR=k > 0,
                 BM=BM, BN=BN, BT=BT, PREC="tf32", CDT=BF16)
        cases.append((f"materialize flat k={k} tile={BM}x{BN} BT={BT}", tk._materialize_flat_kernel, ptrs, ints, c, warps))
    return cases


def ghost_cases():
    ptrs = {n: "*bf16" for n in ("x_ptr", "g_ptr")} | {"mask_ptr": "*i8", "pair_t_ptr": "*i32", "pair_s_ptr": "*i32",
                                                        "px_ptr": "*fp32", "pg_ptr": "*fp32", "out_w_ptr": "*fp32",
                                                        "out_b_ptr": "*fp32"}
    cases = []
    for fused, BT, splits in ((True, 64, 1), (False, 128, 4)):
        ints = dict(B=B, T=T, D_IN=D_IN, D_OUT=D_OUT, CH_IN=D_IN // splits, CH_OUT=D_OUT // splits, N_PAIRS=3 if fused else 1,
                    **{k: v for k, v in _strides("x").items() if k[1] in "xgm"})
        c = dict(FUSED=fused, DIAG_ONLY=not fused, HAS_MASK=False, HAS_BIAS=False, BT=BT, BK=64, PREC_X="tf32",
                 PREC_G="tf32", CDT_X=BF16, CDT_G=BF16)
        cases.append((f"ghost {'fused' if fused else 'split'} BT={BT}", tk._ghost_partial_kernel, ptrs, ints, c,
                      8 if BT >= 128 else 4))
    return cases


def gd_cases():
    ptrs = {"x_ptr": "*bf16", "g_ptr": "*bf16", "mask_ptr": "*i8", "dir_ptr": "*bf16", "out_ptr": "*fp32"}
    ints = dict(N=B * T, T=T, D_IN=D_IN, D_OUT=D_OUT, K=K_DIRS, **_strides("x"))
    return [(f"gd tiles {BR}x{BN}x{BO}", tk._gd_kernel, ptrs, ints,
             dict(HAS_MASK=False, BR=BR, BN=BN, BO=BO, PREC="tf32", CDT=BF16), warps)
            for BR, BN, BO, warps in ((64, 128, 64, 4), (128, 128, 64, 8))]


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_case(name, fn, ptrs, ints, constexprs, warps, arch):
    sig, consts, attrs = _specialize(fn, ptrs, ints, constexprs)
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
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
        # software pipelining: asynchronous global->shared copies issued ahead of their use
        async_copies=ttgir.count("async_copy_global_to_local") + ttgir.count("async_tma_copy"),
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
              f"smem={r['shared_bytes'] // 1024:3d} KiB converts={r['layout_conversions']:2d} "
              f"async={r['async_copies']} {r['tensor_core']}",
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
