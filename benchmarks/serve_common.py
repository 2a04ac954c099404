"""What the two serving benchmarks share: the machine-wide lock that keeps them from timing each other, and the
latency summary they print."""

from __future__ import annotations

import fcntl
import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = Path(tempfile.gettempdir()) / "interp-ray-tests.lock"


def summarise(latencies: list[float], errors: int, wall: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    pick = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]) if ms else (lambda q: float("nan"))
    return {"requests": len(ms), "errors": errors, "rps": len(ms) / wall, "p50_ms": pick(0.50),
            "p99_ms": pick(0.99), "mean_ms": statistics.fmean(ms) if ms else float("nan")}


@contextmanager
def machine_lock(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with open(LOCK_FILE, "w") as f:
        print(f"[serve_load] waiting for {LOCK_FILE} …", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
