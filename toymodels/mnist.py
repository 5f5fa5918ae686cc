"""MNIST, embedded in the project and verified by checksum at load.

The default file is toymodels/data/mnist.npz (a copy of the real MNIST digits, CC BY-SA 3.0,
Y. LeCun, C. Cortes, C. Burges; see toymodels/data/README.md). The embedded file's whole-file
sha256 is checked before it is parsed; any other file (--mnist-path) has each array's sha256
checked. A missing, truncated, edited or undecompressable file fails with one line (DataError)
naming the path and what was expected, never a traceback from zipfile or zlib.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sublim.errors import DataError

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "mnist.npz"

FILE_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}


@dataclass
class MNIST:
    """Images flattened to 784 and scaled to [-1, 1] (float32); labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "MNIST":
        return MNIST(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_embedded_file(path: Path) -> None:
    """The embedded copy must be byte-identical to the published file: one hash of 11 MB settles
    it before np.load sees a byte (and makes the per-array hashes redundant)."""
    got = file_sha256(path)
    if got != FILE_SHA256:
        raise DataError(f"{path}: the embedded MNIST file is corrupt or edited (sha256 {got[:16]}..., expected "
                        f"{FILE_SHA256[:16]}...); restore it with `git checkout -- toymodels/data/mnist.npz`")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays, with every way a damaged .npz fails turned into one DataError line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ARRAY_SHA256}
    except KeyError as e:
        raise DataError(f"{path}: corrupt MNIST file (array {e} missing; expected {sorted(ARRAY_SHA256)})") from None
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        # zlib.error: a damaged deflate stream; BadZipFile: a CRC mismatch or broken directory;
        # ValueError: a damaged .npy header inside the archive.
        kind = "zlib.error" if isinstance(e, zlib.error) else type(e).__name__
        raise DataError(f"{path}: corrupt MNIST file, cannot be read as .npz ({kind}: {e})") from None


def load_raw(path: str | Path | None = None, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The four uint8 arrays, checked against the published file (embedded) or array sha256s."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise DataError(f"{path}: MNIST file not found (expected an .npz with sha256 {FILE_SHA256[:16]}...)")
    embedded = path.resolve() == DEFAULT_PATH.resolve()
    if verify and embedded:
        check_embedded_file(path)
    arrays = read_arrays(path)
    for name, arr in arrays.items():
        if arr.shape != SHAPES[name] or arr.dtype != np.uint8:
            raise DataError(f"{path}: corrupt MNIST file ({name} is {arr.dtype}{arr.shape}, expected uint8{SHAPES[name]})")
        if verify and not embedded:
            got = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
            if got != ARRAY_SHA256[name]:
                raise DataError(f"{path}: corrupt MNIST file ({name} sha256 {got[:16]}..., expected {ARRAY_SHA256[name][:16]}...)")
    return arrays


def load_mnist(path: str | Path | None = None, *, device: str | torch.device = "cpu", verify: bool = True) -> MNIST:
    raw = load_raw(path, verify=verify)

    def images(a: np.ndarray) -> torch.Tensor:
        # [0, 255] -> [-1, 1], as in the paper's code.
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 127.5 - 1.0)

    data = MNIST(
        images(raw["x_train"]),
        torch.from_numpy(raw["y_train"].astype(np.int64)),
        images(raw["x_test"]),
        torch.from_numpy(raw["y_test"].astype(np.int64)),
    )
    return data.to(device)
