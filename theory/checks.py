"""The result type every theory check returns, so reports, tests and notebooks share one shape.

A check is a function that derives or measures something and compares it with what the theorem
says. It returns a CheckResult: a name, PASS/FAIL, and details (numbers, formulas) that explain
the verdict. Formulas are carried in plain text and LaTeX so the report can print both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    name: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    section: str = ""
    formula_text: str = ""
    formula_latex: str = ""

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        return f"[{self.status}] {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "section": self.section,
            "passed": bool(self.passed),
            "details": self.details,
            "formula_text": self.formula_text,
            "formula_latex": self.formula_latex,
        }


def all_passed(results: list[CheckResult]) -> bool:
    return all(r.passed for r in results)
