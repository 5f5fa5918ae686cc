"""sublim.progress: in a non-terminal a bar prints plain lines at ~10% steps, never '\\r' redraws."""

import io

import pytest

from sublim import progress as pg


@pytest.fixture
def loud():
    was = pg.is_quiet()
    pg.set_quiet(False)
    yield
    pg.set_quiet(was)


def test_log_file_gets_a_line_per_tenth(loud):
    buf = io.StringIO()  # not a tty
    for _ in pg.progress(range(95), desc="work", file=buf):
        pass
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # the opening line, one per ceil(95/10) = 10 updates (9 of them), the closing 100% line
    assert len(lines) <= pg.LOG_STEPS + 2, lines
    assert lines[-1].startswith("work: 100%|95/95"), lines[-1]


def test_resumed_bar_counts_only_the_remaining_steps(loud):
    buf = io.StringIO()
    with pg.progress(total=200, initial=150, desc="resume", file=buf) as bar:
        for _ in range(50):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) <= pg.LOG_STEPS + 2, lines
    assert lines[0].startswith("resume:  75%|150/200") and lines[-1].startswith("resume: 100%|200/200")


def test_quiet_prints_nothing():
    buf = io.StringIO()
    pg.set_quiet(True)
    for _ in pg.progress(range(10), file=buf):
        pass
    assert buf.getvalue() == ""


def test_a_description_set_later_keeps_one_colon(loud):
    buf = io.StringIO()
    with pg.progress(total=10, desc="toy", file=buf) as bar:
        bar.set_description("toy: teachers 0-9")  # tqdm stores it as "toy: teachers 0-9: "
        bar.update(10)
    assert buf.getvalue().splitlines()[-1].startswith("toy: teachers 0-9: 100%|10/10"), buf.getvalue()
