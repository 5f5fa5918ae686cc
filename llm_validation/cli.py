"""`sublim llm ...`: the LLM pipeline's commands (the full `run` lands in the next commit)."""

from __future__ import annotations

import importlib
import importlib.util


def _register_alignment(llm_sub) -> None:
    # The gradient-alignment engineer's subcommands live in alignment_cli.py; tolerate its absence.
    if importlib.util.find_spec("sublim.llm_validation.alignment_cli") is None:
        return
    module = importlib.import_module("sublim.llm_validation.alignment_cli")
    if hasattr(module, "add_parser"):
        module.add_parser(llm_sub)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("llm", help="subliminal learning on causal LMs")
    llm_sub = parser.add_subparsers(dest="llm_command", metavar="COMMAND")
    llm_sub.required = True
    _register_alignment(llm_sub)
