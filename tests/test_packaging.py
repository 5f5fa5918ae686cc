"""The folder layout must not leak import names that belong to PyPI packages.

`kernels/` is imported as `sublim.kernels`; from the repository root Python can also find it as a
bare `kernels` (an unrelated PyPI package that transformers probes for). That must read as "not
installed" and must not import our code twice.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bare_kernels_name_is_an_empty_namespace_from_the_repo_root():
    r = run_from_root(
        "import kernels, sys\n"
        "assert kernels.__file__ is None, kernels.__file__\n"
        "assert not hasattr(kernels, 'PerExampleGradStats')\n"
        "assert 'sublim.kernels.model_stats' not in sys.modules\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_transformers_does_not_mistake_our_folder_for_the_pypi_kernels_package():
    r = run_from_root(
        "from transformers.utils import import_utils as iu\n"
        "ok, version = iu._is_package_available('kernels', return_version=True)\n"
        "assert version == 'N/A' and not iu.is_kernels_available(), (ok, version)\n"
        "import peft  # imports transformers' modeling utilities, which run the probe\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_areas_import_under_the_sublim_namespace():
    import sublim.kernels
    import sublim.llm_validation
    import sublim.theory
    import sublim.toymodels

    assert sublim.kernels.PerExampleGradStats.__module__ == "sublim.kernels.model_stats"
    for mod in (sublim.kernels, sublim.theory, sublim.toymodels, sublim.llm_validation):
        assert Path(mod.__file__).parent.parent == ROOT
