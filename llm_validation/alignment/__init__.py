"""Per-example gradient alignment (issue 6): scores.py (the quantity), data.py, report.py,
screen.py, run.py (orchestration of `sublim llm align`), config.py and the thin cli.py."""
