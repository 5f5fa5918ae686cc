"""Every notebook runs top to bottom (jupytext .py -> nbformat -> nbclient, python3 kernel).

Notebooks that rot are worse than none, so each one is executed headless at tiny settings
(environment variables that the notebooks' parameter cells read) and the test fails if any cell
raises. Figures and runs go to a temporary directory so the committed figures are untouched.
Budget: all notebooks together stay well under 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# Tiny settings: enough to exercise every cell and every plot, not to measure anything.
TINY = {
    "toy": {
        "TOY_N_MODELS": "2", "TOY_TEACHER_EPOCHS": "1", "TOY_DISTILL_EPOCHS": "1", "TOY_MAX_EXAMPLES": "2048",
        "TOY_MAX_TEST": "500", "TOY_WIDTH": "32",
        "TOY_SWEEP_N_MODELS": "2", "TOY_SWEEP_EPOCHS": "1", "TOY_SWEEP_MAX_EXAMPLES": "1024",
        "TOY_SWEEP_MAX_TEST": "300", "TOY_SWEEP_WIDTH": "16", "TOY_SWEEP_WIDTHS": "8,16",
    },
    "llm": {"LLM_TINY_EVAL_QUESTIONS": "3"},
    "theory": {
        "TH_N_MODELS": "2", "TH_WIDTH": "16", "TH_N_EPS": "4", "TH_STEPS": "5", "TH_TEACHER_EXAMPLES": "512",
        "TH_PROBE_EXAMPLES": "64", "TH_TEACHER_STEPS": "3", "TH_ALL_SYMBOLIC": "0",
    },
}


def execute(name: str, tmp_path: Path, monkeypatch) -> "nbformat.NotebookNode":  # noqa: F821
    from nbclient import NotebookClient

    for key, value in TINY.get(name, {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NB_FIG_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("NB_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("SUBLIM_QUIET", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) when a cell fails
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def test_toy_notebook_runs(tmp_path, monkeypatch):
    nb = execute("toy", tmp_path, monkeypatch)
    for png in ("toy_arms.png", "toy_sweeps.png"):
        assert (tmp_path / "figures" / png).stat().st_size > 5000
    # the run directory and every sweep were written through the project's API
    # one run directory per config (arms_<config hash>), so a changed knob never mixes runs
    (arms,) = (tmp_path / "runs").glob("arms_*")
    assert (arms / "summary.json").exists()
    for knob in ("n_aux", "width", "distill_epochs", "init_scale", "perturb_sigma", "distill_input"):
        assert (tmp_path / "runs" / "sweeps" / knob / "summary.json").exists(), knob
    text = outputs_text(nb)
    assert "student, aux logits only" in text and "aux-only student" in text
    # the notes are computed from this run's numbers, not written in advance
    summary = json.loads((arms / "summary.json").read_text())
    teacher = summary["arms"]["teacher"]
    assert f"teachers reach {100 * teacher['mean']:.1f}% (+- {100 * teacher['ci95']:.1f}%)" in text


def test_toy_notebook_sweeps_only_the_chosen_knobs(tmp_path, monkeypatch):
    """TOY_SWEEP_KNOBS (used to draw a paper-scale root whose other knobs are not finished) runs
    and draws only the named knobs; the default (unset) is every knob, as the test above checks."""
    monkeypatch.setenv("TOY_SWEEP_KNOBS", "n_aux,init_scale")
    nb = execute("toy", tmp_path, monkeypatch)
    assert (tmp_path / "figures" / "toy_sweeps.png").stat().st_size > 5000
    made = sorted(p.name for p in (tmp_path / "runs" / "sweeps").iterdir() if p.is_dir())
    assert made == ["init_scale", "n_aux"], made
    drawn = read_knobs(tmp_path / "runs" / "sweeps" / "all_sweeps.csv")
    assert drawn == {"n_aux", "init_scale"}, drawn
    text = outputs_text(nb)
    assert "**n_aux**" in text and "**init_scale**" in text and "**width**" not in text


def read_knobs(path: Path) -> set:
    import csv

    with open(path, newline="") as f:
        return {row["knob"] for row in csv.DictReader(f)}


@pytest.mark.skipif(not (NOTEBOOKS / "llm.py").exists(), reason="llm notebook not written yet")
def test_llm_notebook_runs(tmp_path, monkeypatch):
    nb = execute("llm", tmp_path, monkeypatch)
    figs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {"llm_target_rates.png", "llm_filter.png"} <= figs, figs
    text = outputs_text(nb)
    assert "target rate" in text
    # the note quotes the rates the evaluation stage measured
    run = tmp_path / "runs" / "tiny"
    student = json.loads((run / "eval" / "student.json").read_text())["sampled"]["mentions"]
    assert f"sampled target rate {100 * student['rate']:.1f}% [{100 * student['ci_low']:.1f}%" in text
    assert (run / "alignment" / "per_example_scores.csv").exists()
    # the distillation section reads a run's summary (the committed laptop run, else a tiny one)
    # and states the main arm's shift from its numbers
    assert "Main arm (owl system-prompt teacher, full fine-tuning, shared init)" in text
    assert "llm_distill_alignment.png" in figs and "a_i > 0 for " in text
    # section 5 reads the committed controls runs and quotes their numbers
    results = NOTEBOOKS.parent / "llm_validation" / "results"
    if (results / "distill_laptop_matrix" / "summary.json").exists():
        assert "llm_matrix.png" in figs
    if (results / "distill_laptop_finetuned" / "summary.json").exists():
        diff = json.loads((results / "distill_laptop_finetuned" / "summary.json").read_text())
        owl = diff["controls"]["finetuned_matched"]["difference"]["owl"]
        assert f"owl {owl['mean']:+.3f} +- {owl['ci_half']:.3f}" in text
    if (results / "dose_response" / "dose.json").exists():
        assert "Largest owl trait shift: " in text
    ranks = results / "distill_lora_ranks" / "summary.json"
    lora = ranks if ranks.exists() else results / "distill_lora4" / "summary.json"
    if lora.exists():  # the methods block quotes each arm's shift from its run's summary
        shift = json.loads(lora.read_text())["controls"]["methods"]["lora4"]["shift"]
        assert "llm_methods.png" in figs
        label = lora.parent.name.removeprefix("distill_")
        assert f"lora4 ({label}) {shift['mean']:+.3f} +- {shift['ci_half']:.3f}" in text
    rank_curve = results / "lora_rank_curve" / "compare.json"
    if rank_curve.exists():  # every rank's trait, quoted from compare.json
        for name, arm in json.loads(rank_curve.read_text())["arms"].items():
            assert f"{name} (lr {arm['lr']}) {arm['trait']['mean']:+.3f} +- {arm['trait']['ci_half']:.3f}" in text, name
    parts = results / "distill_sigma_parts" / "summary.json"
    if parts.exists():  # the body / head arms, quoted from their run's summary
        head = json.loads(parts.read_text())["shifts"]["owl"]["owl_system_prompt.full.sigma0.1_head"]["over_seeds"]
        assert f"head only {head['mean']:+.3f} +- {head['ci_half']:.3f}" in text
    steer = results / "distill_steering" / "summary.json"
    if steer.exists():  # the steering readout's figure and its owl-minus-neutral count
        st = json.loads(steer.read_text())["steering"]
        diff = [r["difference"] for r in st["variants"]["paper"][st["target"]] if "mean" in r["difference"]]
        above = sum(d["mean"] - d["ci_half"] > 0 for d in diff)
        assert "llm_steering.png" in figs
        assert f"more aligned with the owl prompt's than the neutral students' at {above} of {len(diff)} layers" in text
    grid = results / "distill_trainsys_none" / "compare.json"
    if grid.exists():  # the shared-context 2 x 2, each cell quoted from compare.json
        for name, cell in json.loads(grid.read_text())["cells"].items():
            assert f"{name} {cell['trait']['mean']:+.3f} +- {cell['trait']['ci_half']:.3f}" in text
    noise = results / "distill_shared_noise" / "summary.json"
    if noise.exists():  # weight noise on teacher and student: each level's transfer, quoted
        for key, row in json.loads(noise.read_text())["shared_noise"].items():
            if key != "zero_noise" and "mean" in row["transfer"]:
                assert f"noise {key} {row['transfer']['mean']:+.3f} +- {row['transfer']['ci_half']:.3f}" in text
    cross = results / "cross_architecture" / "compare.json"
    if cross.exists():  # the teacher -> student families, each run's trait quoted from compare.json
        for name, run in json.loads(cross.read_text())["runs"].items():
            assert f"{name} {run['trait']['mean']:+.3f} +- {run['trait']['ci_half']:.3f}" in text, name


@pytest.mark.skipif(not (NOTEBOOKS / "theory.py").exists(), reason="theory notebook not written yet")
def test_theory_notebook_runs(tmp_path, monkeypatch):
    execute("theory", tmp_path, monkeypatch)
    figs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {"theory_alignment_vs_eps.png", "theory_vs_simulation.png"} <= figs, figs


def test_notebooks_are_percent_format_and_pair_with_ipynb():
    """Every notebook is a jupytext percent script that JupyterLab can open (jupytext converts it)."""
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    assert "toy" in names
    for name in names:
        text = (NOTEBOOKS / f"{name}.py").read_text()
        assert "format_name: percent" in text, name
        nb = jupytext.reads(text, fmt="py:percent")
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= 2, name
        assert sum(c.cell_type == "code" for c in nb.cells) >= 2, name
