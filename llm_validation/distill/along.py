"""Measurements along a student's training: its preference profile after chosen optimizer steps
(the dose-response in steps, from one run) and, for students of fine-tuned teachers, how much of the
teacher's update Delta = theta_T - theta_0 they recovered.

    fraction(theta_S) = <theta_S - theta_0, Delta> / ||Delta||^2     (1 = the student reached the teacher
                                                                      along Delta; 0 = no movement along it)
    cosine(theta_S)   = <theta_S - theta_0, Delta> / (||theta_S - theta_0|| ||Delta||)

over every parameter the two models share (for a merged LoRA teacher Delta is zero outside the LoRA
target modules, so those parameters add to ||theta_S - theta_0|| only). Directions: each fine-tuned
teacher's Delta, and with the matched control, "trait" = Delta_target - Delta_other: the part of the
teacher update that the control's identical training did not also make.

Records go to students/<student>/along.json after every chosen step (atomic), so a student killed
and resumed from an earlier checkpoint keeps the measurements it already made (and retakes the same
steps, so any it redoes would be identical).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sublim.rundir import atomic_write_json, read_json


class AlongTraining:
    """on_step hook of train_student: measure(model) after each step in `steps` (once, persisted)."""

    def __init__(self, path: Path, steps, measure):
        self.path, self.steps, self.measure = path, set(steps), measure
        self.records: dict[str, dict] = read_json(path) if path.exists() else {}

    def __call__(self, step: int, model) -> None:
        if step in self.steps and str(step) not in self.records:
            self.records[str(step)] = self.measure(model)
            atomic_write_json(self.path, self.records)


@torch.no_grad()
def flat_params(model) -> dict[str, torch.Tensor]:
    """name -> a float32 CPU copy of every parameter (tied weights once, as named_parameters gives them)."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


@torch.no_grad()
def teacher_delta(base: dict[str, torch.Tensor], teacher_model) -> dict[str, torch.Tensor]:
    """theta_T - theta_0 on the parameters that moved (a merged LoRA teacher moves only its targets)."""
    out = {}
    for n, p in teacher_model.named_parameters():
        d = p.detach().float().cpu() - base[n]
        if torch.count_nonzero(d):
            out[n] = d
    return out


@torch.no_grad()
def recovered(model, base: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]]) -> dict:
    """{direction: {fraction, cosine}} of the student's displacement theta_S - theta_0 along each Delta.
    Sums are accumulated in float64 (the per-tensor products are exact float32 differences)."""
    moved = {n: p.detach().float().cpu() - base[n] for n, p in model.named_parameters() if n in base}
    norm_s = sum(float(torch.sum(d.double() ** 2)) for d in moved.values()) ** 0.5
    out = {}
    for direction, delta in deltas.items():
        dot = sum(float(torch.sum(moved[n].double() * d.double())) for n, d in delta.items())
        norm_d2 = sum(float(torch.sum(d.double() ** 2)) for d in delta.values())
        out[direction] = {"fraction": dot / norm_d2 if norm_d2 else float("nan"),
                          "cosine": dot / (norm_s * norm_d2 ** 0.5) if norm_s and norm_d2 else float("nan"),
                          "delta_norm": norm_d2 ** 0.5, "student_norm": norm_s}
    return out


def delta_directions(deltas_by_animal: dict[str, dict[str, torch.Tensor]], target: str, other: str) -> dict:
    """Each fine-tuned teacher's Delta, plus "trait" = Delta_target - Delta_other when both exist."""
    out = dict(deltas_by_animal)
    if target in out and other in out:
        a, b = out[target], out[other]
        out["trait"] = {n: a.get(n, 0) - b.get(n, 0) for n in set(a) | set(b)}
    return out
