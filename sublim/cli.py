"""The `sublim` command: one subcommand per area, each defined in its own folder.

    sublim toy [sweep]   -> toymodels/cli.py
    sublim theory        -> theory/cli.py
    sublim llm ...       -> llm_validation/cli.py

Each area module exposes `add_parser(subparsers)`, which registers its subcommand and sets
`func` on the parsed namespace. A SublimError anywhere becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from sublim.errors import SublimError
from sublim.progress import set_quiet

AREAS = {
    "toy": "sublim.toymodels.cli",
    "theory": "sublim.theory.cli",
    "llm": "sublim.llm_validation.cli",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the usage block before its error; we promise one line (and exit 2).

    Subparsers inherit the class, so every `sublim ...` subcommand behaves the same way.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(areas=None) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="sublim", description="The subliminal learning lab.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="area", metavar="{" + ",".join(AREAS) + "}")
    sub.required = True
    for name, module in AREAS.items():
        if areas is not None and name not in areas:
            continue
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the requested area: `sublim toy` must not pay for importing transformers.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([wanted] if wanted in AREAS else None)
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    try:
        return int(args.func(args) or 0)
    except SublimError as e:
        print(f"sublim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The environment's failures the user can act on (a full disk, a read-only mount): one
        # line. Atomic writes mean the finished results are intact and a rerun resumes.
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"sublim: error: {e.strerror or e}{where}; finished results are kept, rerun to resume",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sublim: interrupted (finished results are kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
