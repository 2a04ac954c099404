"""Progress of a long step (rows extracted, parts written, epochs trained) on the driver's terminal.

One ``Progress`` per step, fed real counts as they arrive (``update_to``): never an estimate. How it shows:

- ``bar``: a tqdm bar on stderr, redrawn in place, with the rate and the ETA tqdm computes from the counts;
- ``lines``: one plain line at the first count, then every ``every_s`` seconds (or when the job forces one), and
  the last count at ``close()``: "[progress] train rows: 1200/5000 (24%),
  310 rows/s, eta 12 s; 3/10 parts", for log files and ``ray job submit``'s log, where a redrawn bar would leave
  hundreds of lines (or one unreadable line of carriage returns);
- ``off``: nothing.

``mode="auto"`` (the default) is ``bar`` when stderr is a terminal and ``lines`` otherwise. The environment variable
``INTERP_RAY_PROGRESS`` (``auto``, ``bar``, ``lines`` or ``off``) overrides it; the jobs' ``--quiet`` sets it to
``off``. Ray-free: the jobs (jobs/) feed it from Ray's records.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, TextIO

from interp_ray.errors import UserError

ENV = "INTERP_RAY_PROGRESS"
MODES = ("auto", "bar", "lines", "off")
EVERY_S = 10.0   # the lines mode's period: a line per 10 s keeps an hour's log at a few hundred lines


def progress_mode(mode: str | None = None, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``off``: ``mode``, else ``INTERP_RAY_PROGRESS``, else auto (bar on a terminal)."""
    chosen = (mode or os.environ.get(ENV) or "auto").strip().lower()
    if chosen not in MODES:
        raise UserError(f"{ENV}={chosen!r}: expected one of {', '.join(MODES)}")
    if chosen == "auto":
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return chosen


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress from this process (nor from the jobs it runs in-process, e.g. the pipeline's)."""
    if quiet:
        os.environ[ENV] = "off"


def format_seconds(s: float) -> str:
    """"42 s", "12 min 5 s", "3 h 04 min"; "?" before any rate is known."""
    if not math.isfinite(s) or s < 0:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def format_rate(rate: float, unit: str) -> str:
    if not math.isfinite(rate) or rate <= 0:
        return f"? {unit}/s"
    if rate >= 1:
        return f"{rate:.0f} {unit}/s" if rate >= 10 else f"{rate:.1f} {unit}/s"
    return f"{1 / rate:.1f} s/{unit.rstrip('s') or unit}"


class Progress:
    """One long step's progress. ``update_to(done, note=…)`` with the count so far (rows written, epochs reported);
    ``note`` is shown after the figures (parts written, the epoch's loss). Use as a context manager, or ``close()``.

    The rate is measured from the first count on (``steady``): what came before it is start-up (actors, torch
    import, a model load), which would make the ETA of a long run wrong for its whole first half. ``start_at`` is
    where a resumed step starts (epochs already done): it counts in the total, not in the rate.
    """

    def __init__(self, what: str, total: int, unit: str, *, mode: str | None = None, stream: TextIO | None = None,
                 every_s: float = EVERY_S, start_at: int = 0, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit = what, int(total), unit
        self.stream = sys.stderr if stream is None else stream
        self.mode = progress_mode(mode, self.stream)
        self.every_s, self.clock = every_s, clock
        self.done = self.start_at = int(start_at)
        self.note = ""
        self.first: tuple[float, int] | None = None   # (time, count) of the first update: the rate's origin
        self.last: tuple[float, int] | None = None
        self.printed_at: float | None = None
        self.closed = False
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc=what, unit=f" {unit}", file=self.stream,
                            dynamic_ncols=True, smoothing=0.1, leave=True)

    # --- counts ---------------------------------------------------------------------------------------------------

    def update_to(self, done: int, note: str = "", *, force: bool = False) -> None:
        """``done``: the count so far; ``force``: print the line now (lines mode) whatever the period."""
        now = self.clock()
        done = int(done)
        if self.first is None:
            self.first = (now, done)
        self.last = (now, done)
        step, self.done = done - self.done, done
        if note:
            self.note = note
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(step)
        elif self.mode == "lines" and (force or self.printed_at is None or now - self.printed_at >= self.every_s):
            self._print(now)

    def update(self, n: int = 1, note: str = "") -> None:
        self.update_to(self.done + int(n), note)

    @property
    def rate(self) -> float:
        """Units per second from the first update to the last (NaN until two updates apart in time)."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return float("nan")
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    @property
    def eta_s(self) -> float:
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else float("nan")

    def line(self) -> str:
        """The lines mode's line: counts, share, rate, ETA, note."""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = "done" if self.done >= self.total else f"eta {format_seconds(self.eta_s)}"
        note = f"; {self.note}" if self.note else ""
        return (f"[progress] {self.what}: {self.done}/{self.total} {self.unit}{share}, "
                f"{format_rate(self.rate, self.unit)}, {eta}{note}")

    def write(self, text: str) -> None:
        """A line of the job's own beside the bar (tqdm redraws the bar under it); plain print otherwise."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _print(self, now: float) -> None:
        self.printed_at = now
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.last is not None and (self.printed_at is None
                                                                  or self.printed_at < self.last[0]):
            self._print(self.clock())   # the final count, when the last line printed was older

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
