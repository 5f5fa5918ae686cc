"""Test-wide setup.

TRITON_INTERPRET must be set before triton is first imported; without a GPU we default it to 1 so
the Triton kernels run in the interpreter on tiny shapes. Tests marked `gpu` skip without CUDA.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, importable from every area folder

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SUBLIM_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
