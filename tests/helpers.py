"""Helpers shared by the tests (tests/conftest.py puts this folder on sys.path)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root


def one_line_error(capsys, needle: str = "") -> str:
    """The project's promise for bad input: exactly one line on stderr, `sublim: error: ...`,
    naming the problem, and no traceback. Returns the line."""
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sublim: error:") and needle in err, err
    assert "Traceback" not in err, err
    return err
