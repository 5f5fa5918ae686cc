"""`sublim llm ...`: the LLM area's entry. Each module below registers its subcommands with
`add_parsers(llm_subparsers)`; adding an area is one line here.

    pipeline/cli.py    sublim llm run | finetune | filter
    alignment/cli.py   sublim llm align
    distill/cli.py     sublim llm distill
    probes/cli.py      sublim llm probe entangle
"""

from __future__ import annotations

import importlib

SUBCOMMAND_MODULES = (
    "sublim.llm_validation.pipeline.cli",
    "sublim.llm_validation.alignment.cli",
    "sublim.llm_validation.distill.cli",
    "sublim.llm_validation.probes.cli",
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("llm", help="subliminal learning on causal LMs")
    llm_sub = parser.add_subparsers(dest="llm_command", metavar="COMMAND")
    llm_sub.required = True
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parsers(llm_sub)
