"""The machine-wide test lock: one test session's Ray at a time on this machine (their ports and CPUs would clash).

``flock`` locks belong to an open file description, not to a process: a second ``open`` + ``flock`` in the process
that already holds the lock waits for itself forever. That is what a test that took the lock itself did inside a
session whose ``ray_session`` fixture (tests/conftest.py) already held it. So the session takes it through one
``MachineLock``, which counts its holders: the first takes the file lock, the others only count, the last lets go.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import IO


class MachineLock:
    """A process-reentrant exclusive lock on ``path`` (an advisory ``flock``, shared with other processes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now (through this object)."""
        return self._depth > 0

    def __enter__(self) -> MachineLock:
        if self._depth == 0:
            f = open(self.path, "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX)   # waits for whichever other process holds it
            except BaseException:
                f.close()
                raise
            self._file = f
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# The one every test session on this machine queues on (benchmarks/serve_common.py takes the same file).
MACHINE_LOCK = MachineLock(Path(tempfile.gettempdir()) / "interp-ray-tests.lock")
