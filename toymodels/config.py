"""Every knob of the MNIST subliminal-learning experiment, in one validated dataclass.

Defaults are the paper's settings (docs/reference.md section 2): 784-256-256-(10+m), m = 3,
N(0, 1/d_in) weights, zero biases, Adam lr 3e-4, batch 1024, 5 teacher epochs, 5 distillation
epochs on uniform noise in [-1, 1]. Only the model count differs: 10 models keep the default run
to a few minutes on a 2-core CPU (the paper used 100; the benchmark's GPU entry runs 100).

Bad values raise a ConfigError with one line naming the knob, so the CLI can stop before any
work is done. `from_overrides` turns "knob=value" strings (CLI, sweep grids) into a config.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields

from sublim.config_cli import parse_text
from sublim.errors import ConfigError
from sublim.precision import check_fast_matmul

from .model import INIT_SCHEMES, MLPSpec

ARMS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
STUDENT_ARMS = ("student_aux", "student_all", "cross_aux", "cross_all")
AUX_ARMS = ("student_aux", "cross_aux")
ARM_LABELS = {
    "reference": "reference (untrained)",
    "teacher": "teacher",
    "student_aux": "student, aux logits only",
    "student_all": "student, all logits",
    "cross_aux": "cross-model, aux only",
    "cross_all": "cross-model, all logits",
}
OPTIMIZERS = ("adam", "sgd")
DISTILL_INPUTS = ("uniform", "gaussian", "mnist", "shuffled_pixels")
STUDENT_INITS = ("shared", "independent", "perturbed")
DTYPES = ("float32", "float64")
FAST_MATMUL = ("off", "tf32", "bf16")
# Short names a researcher is likely to type; "m" is the paper's name for the aux-logit count.
ALIASES = {"m": "n_aux", "models": "n_models"}


@dataclass(frozen=True)
class ToyConfig:
    ## Architecture
    n_aux: int = 3  # m, the auxiliary ("ghost") logits that are never trained on labels
    width: int = 256  # hidden units per layer
    depth: int = 2  # hidden layers
    init: str = "normal"  # normal = N(0, scale^2/d_in) (paper) | kaiming_normal | torch_default
    init_scale: float = 1.0  # multiplies the init std of every layer
    ## Training
    teacher_epochs: int = 5  # teacher epochs on MNIST digits (cross-entropy on the 10 digit logits)
    distill_epochs: int = 5  # student epochs of distillation on the distill_input images
    lr: float = 3e-4  # learning rate of teacher and students
    optimizer: str = "adam"  # adam | sgd (plain gradient descent, as in the theorem)
    batch_size: int = 1024  # examples per step, per model
    # Examples per epoch (teacher and distillation); 0 = the full 60,000. Smoke tests use less.
    max_examples_per_epoch: int = 0
    max_test_examples: int = 0  # test digits scored; 0 = all 10,000 (benchmarks and smoke tests use less)
    distill_input: str = "uniform"  # uniform [-1,1] | gaussian N(0,1) | mnist | shuffled_pixels
    # False (paper): each model distills on ONE fixed set of noise images, revisited every epoch
    # (the public script drew 60k noise images per model once). True: fresh noise every epoch.
    # The fixed set is regenerated from its seed each epoch, never stored.
    distill_resample: bool = False
    # Student arms' init: the teacher's own (shared), a fresh one (independent), or the
    # teacher's plus Gaussian noise of perturb_sigma x the layer's init std (perturbed).
    student_init: str = "shared"
    perturb_sigma: float = 0.0  # noise scale for student_init=perturbed, in units of each layer's init std
    ## Ensemble
    n_models: int = 10  # models trained in parallel (one batched tensor); the CIs are over them
    seed: int = 0  # every init, noise set and data order is a function of it
    arms: tuple = ARMS  # the arms to train and score
    # True: every model draws its own noise / MNIST order (independent models, honest CIs).
    # False: one batch shared by all models (one big matmul instead of a batched one; faster
    # on some hardware, but the models' results are then correlated through the shared data).
    independent_batches: bool = True
    # Models trained at once (teachers + their students); 0 = auto (all on CUDA, <= 20 on CPU
    # so 100 models fit in a few GB). Results depend on it only through the noise streams.
    chunk_models: int = 0
    # "" = the embedded, checksum-verified copy (toymodels/data/mnist.npz)
    mnist_path: str = ""
    ## Hardware
    device: str = "cpu"  # cpu | cuda[:N]
    dtype: str = "float32"  # float32 | float64 (the reference engine of the tests)
    fast_matmul: str = "off"  # off = exact fp32 | tf32 (CUDA tensor cores) | bf16 (CPU: bf16 matmuls, fp32 masters; CUDA: autocast)

    def __post_init__(self):
        ints_pos = ("width", "depth", "batch_size", "n_models")
        for name in ints_pos:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("teacher_epochs", "distill_epochs", "max_examples_per_epoch", "max_test_examples", "chunk_models", "n_aux"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("lr", "init_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be positive and finite, got {v!r}")
        choices = {
            "init": INIT_SCHEMES, "optimizer": OPTIMIZERS, "distill_input": DISTILL_INPUTS,
            "student_init": STUDENT_INITS, "dtype": DTYPES, "fast_matmul": FAST_MATMUL,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not self.arms:
            raise ConfigError("arms is empty; choose from " + ", ".join(ARMS))
        for a in self.arms:
            if a not in ARMS:
                raise ConfigError(f"unknown arm {a!r}; choose from {', '.join(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms lists an arm twice: {', '.join(self.arms)}")
        if self.n_aux == 0 and any(a in AUX_ARMS for a in self.arms):
            raise ConfigError("n_aux (m) = 0 leaves nothing to distill for the aux-only arms; "
                              "set n_aux >= 1 or drop student_aux/cross_aux from arms")
        if any(a.startswith("cross") for a in self.arms) and self.n_models < 2:
            raise ConfigError("cross-model arms need n_models >= 2 (a student must take another model's init)")
        if self.student_init == "perturbed":
            if not (math.isfinite(self.perturb_sigma) and self.perturb_sigma > 0):
                raise ConfigError(f"student_init=perturbed needs perturb_sigma > 0, got {self.perturb_sigma!r}")
        elif self.perturb_sigma != 0:
            raise ConfigError(f"perturb_sigma={self.perturb_sigma} only applies with student_init=perturbed")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.fast_matmul == "tf32" and not self.device.startswith("cuda"):
            raise ConfigError("fast_matmul=tf32 needs a CUDA device (CPUs have no TF32 matmul)")
        if self.fast_matmul == "bf16" and self.device == "cpu":
            check_fast_matmul("bf16", "cpu")  # one line where the CPU has no bf16 units

    # Derived pieces
    @property
    def spec(self) -> MLPSpec:
        return MLPSpec(width=self.width, depth=self.depth, n_aux=self.n_aux, init=self.init, init_scale=self.init_scale)

    @property
    def student_arms(self) -> tuple:
        return tuple(a for a in STUDENT_ARMS if a in self.arms)

    @property
    def trains_teachers(self) -> bool:
        return "teacher" in self.arms or bool(self.student_arms)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d


KNOBS = tuple(f.name for f in fields(ToyConfig))


def canonical_knob(name: str) -> str:
    """The field name for a knob as typed (dashes allowed, aliases resolved)."""
    key = name.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in KNOBS:
        raise ConfigError(f"unknown knob {name!r}; known knobs: {', '.join(KNOBS)} (alias m = n_aux)")
    return key


def parse_knob_value(name: str, text: str):
    """A knob's value from its string form, typed by the dataclass field exactly as every other
    config of the project reads it (NaN refused; arms joined by '+' or ',')."""
    key = canonical_knob(name)
    return parse_text(key, text, typing.get_type_hints(ToyConfig)[key])


def from_overrides(overrides: dict | None = None, base: ToyConfig | None = None) -> ToyConfig:
    """A config from {knob: value} (values may be strings, as typed on a command line)."""
    base = base or ToyConfig()
    changes = {}
    for name, value in (overrides or {}).items():
        key = canonical_knob(name)
        if isinstance(value, str):
            value = parse_knob_value(key, value)
        if key == "arms" and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(base, **changes)


def from_dict(d: dict) -> ToyConfig:
    """Inverse of to_dict (used to check a resumed sweep cell's stored config)."""
    return from_overrides({k: (tuple(v) if k == "arms" else v) for k, v in d.items()})
