"""Opt-in reduced-precision matmuls (`fast_matmul`): bf16 matmuls, float32 everything else.

    from sublim.precision import check_fast_matmul, matmul_autocast
    check_fast_matmul("bf16", "cpu")            # one-line ConfigError where the CPU has no bf16 units
    with matmul_autocast("bf16", device):       # matmuls in bf16 (fp32 accumulate), the rest fp32
        hidden = decoder(...)

Modes: "off" (exact float32, the default everywhere: committed results were computed so) and
"bf16". Under "bf16" only the matmuls (linear, bmm, baddbmm, addmm, ...) run in bfloat16 through
torch.autocast: the master weights, their gradients, the optimizer state, normalizations,
softmaxes and every loss stay float32. oneDNN accumulates a bf16 matmul in float32, so a length-K
dot product carries ~2 * 2^-8 relative error from rounding its two inputs (bf16 has an 8-bit
mantissa: unit roundoff u = 2^-8) plus ~K * 2^-24 from the float32 accumulation.

Why refuse on a CPU without bf16 instructions: there, torch still computes bf16 matmuls, but by
converting in software, slower than float32; the knob would only cost accuracy. "Has bf16" means
the avx512_bf16 or amx_bf16 CPU flag (x86: Cooper Lake / Sapphire Rapids / Zen 4 and later), or,
where /proc/cpuinfo does not exist, oneDNN's own bf16 check.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sublim.errors import ConfigError

FAST_MATMUL_MODES = ("off", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bf16 keeps 8 significant bits (7 stored + the implicit one)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first processor, or None where the file does not exist (macOS)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_units(flags: set[str] | None = None) -> list[str]:
    """The bf16 instruction sets this CPU has (empty: none). flags=None reads /proc/cpuinfo."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:  # no /proc/cpuinfo: ask oneDNN (it checks CPUID itself)
        import torch

        return ["onednn_bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else []
    return [f for f in BF16_CPU_FLAGS if f in flags]


def check_fast_matmul(mode: str, device: str) -> None:
    """Refuse, in one line, a mode this device cannot run fast. device: "cpu", "cuda[:N]"."""
    if mode not in FAST_MATMUL_MODES:
        raise ConfigError(f"fast_matmul must be one of {', '.join(FAST_MATMUL_MODES)}, got {mode!r}")
    if mode == "off":
        return
    if str(device).startswith("cpu") and not cpu_bf16_units():
        raise ConfigError("fast_matmul=bf16 needs a CPU with bf16 instructions (avx512_bf16 or amx_bf16); "
                          "this one has neither, so bf16 would be slower than float32: use fast_matmul=off")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError("fast_matmul=bf16 needs a GPU with bf16 support (Ampere or later); use fast_matmul=off")


def matmul_autocast(mode: str, device):
    """A context in which matmuls run in `mode` (bf16 autocast) and nothing else changes;
    "off" is a no-op context (float32 bit for bit)."""
    if mode == "off":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def matmul_error_bound(k: int, n_roundings: int = 2) -> float:
    """Relative error bound of one length-k bf16 dot product accumulated in float32, against
    |a|.|b|: the inputs' roundings (n_roundings * u_bf16) plus the float32 accumulation (k * u_fp32),
    first order (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5)."""
    return n_roundings * BF16_UNIT_ROUNDOFF + k * 2.0 ** -24
