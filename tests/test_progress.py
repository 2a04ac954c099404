"""interp_ray.progress: the line a log file gets (rate and ETA from the counts), the modes and the quiet switch."""

import io

import pytest

from interp_ray.errors import UserError
from interp_ray.progress import ENV, Progress, format_seconds, progress_mode


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_line_rate_and_eta_come_from_the_counts_since_the_first_update():
    clock, out = Clock(), io.StringIO()
    p = Progress("train rows", 1000, "rows", stream=out, clock=clock, every_s=10)
    clock.t += 30            # start-up: not in the rate
    p.update_to(100, note="1/10 parts written")
    clock.t += 4
    p.update_to(300, note="3/10 parts written")    # 4 s after the last line: none
    clock.t += 6
    p.update_to(400, note="4/10 parts written")    # 10 s: a line; (400 - 100) rows / 10 s = 30 rows/s
    assert lines(out) == ["[progress] train rows: 100/1000 rows (10%), ? rows/s, eta ?; 1/10 parts written",
                          "[progress] train rows: 400/1000 rows (40%), 30 rows/s, eta 20 s; 4/10 parts written"]
    assert p.rate == pytest.approx(30.0) and p.eta_s == pytest.approx(20.0)
    clock.t += 1
    p.update_to(420, force=True)                   # forced (every N parts): printed whatever the period
    clock.t += 2
    p.update_to(1000)                              # within the period: not yet
    assert len(lines(out)) == 3
    p.close()                                      # the last count, at the end
    p.close()
    assert lines(out)[2:] == [
        "[progress] train rows: 420/1000 rows (42%), 29 rows/s, eta 20 s; 4/10 parts written",
        "[progress] train rows: 1000/1000 rows (100%), 69 rows/s, done; 4/10 parts written"]


def test_close_prints_the_last_count_when_the_last_line_is_older():
    clock, out = Clock(), io.StringIO()
    p = Progress("fit epochs", 20, "epochs", stream=out, clock=clock, every_s=600, start_at=5)
    p.update_to(6)
    clock.t += 90
    p.update_to(8)
    p.close()
    # a resumed run: epochs 1-5 were done before, the rate counts only this run's (2 epochs in 90 s)
    assert lines(out) == ["[progress] fit epochs: 6/20 epochs (30%), ? epochs/s, eta ?",
                          "[progress] fit epochs: 8/20 epochs (40%), 45.0 s/epoch, eta 9 min 0 s"]


def test_off_prints_nothing_and_the_env_var_switches_it(monkeypatch):
    out = io.StringIO()
    with Progress("x", 3, "rows", stream=out, mode="off") as p:
        p.update_to(3)
        p.write("a line of the job's")
    assert out.getvalue() == ""
    monkeypatch.setenv(ENV, "off")                 # what --quiet sets
    assert progress_mode(stream=FakeTerminal()) == "off"
    monkeypatch.setenv(ENV, "lines")
    assert progress_mode(stream=FakeTerminal()) == "lines"
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(UserError, match=f"{ENV}='loud'"):
        progress_mode()


def test_auto_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    assert progress_mode(stream=io.StringIO()) == "lines"
    term = FakeTerminal()
    with Progress("train rows", 10, "rows", stream=term) as p:
        assert p.mode == "bar"
        p.update_to(5, note="1/2 parts written")
        p.write("above the bar")
    text = term.getvalue()
    assert "\r" in text and "train rows" in text and "10/10" not in text and "[progress]" not in text
    assert "above the bar" in text and "1/2 parts written" in text


def test_format_seconds():
    assert [format_seconds(s) for s in (float("nan"), 42.4, 725, 11040)] == ["?", "42 s", "12 min 5 s", "3 h 04 min"]
