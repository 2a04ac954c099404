"""The machine-wide test lock (tests/machine_lock.py): other processes wait while this one holds it, and a second
holder in the same process (a test that takes it inside a session whose Ray already holds it) does not wait for
itself. Run on a lock file of its own, so it never queues behind the machine's other test sessions."""

import fcntl
import subprocess
import sys
import threading

from machine_lock import MACHINE_LOCK, MachineLock

# Another process asks for the lock without waiting: exit 0 if it got it, 1 if someone holds it.
TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "w") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
"""


def other_process_gets(path) -> bool:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode == 0


def enters_within(lock: MachineLock, seconds: float) -> bool:
    """Whether ``with lock`` gets in (and out) within ``seconds`` (in a thread, so a wrong lock fails, not hangs)."""
    done = threading.Event()

    def take():
        with lock:
            done.set()

    threading.Thread(target=take, daemon=True).start()
    return done.wait(seconds)


def test_the_holder_takes_it_again_without_waiting_and_others_wait_until_the_last_lets_go(tmp_path):
    lock = MachineLock(tmp_path / "tests.lock")
    assert other_process_gets(lock.path) and not lock.held
    with lock:  # the session's ray_session fixture
        assert lock.held and not other_process_gets(lock.path)
        assert enters_within(lock, 10)  # the machine_lock fixture of a test in the same session
        assert lock.held and not other_process_gets(lock.path)  # still the session's
    assert not lock.held and other_process_gets(lock.path)


def test_a_second_plain_flock_in_the_holding_process_is_refused(tmp_path):
    """Why the lock counts its holders: flock belongs to an open file, so opening the file again in the process that
    holds the lock and asking for it blocks (here: refused without waiting) — the hang test_store_scale.py had."""
    lock = MachineLock(tmp_path / "tests.lock")
    with lock, open(lock.path, "w") as again:
        try:
            fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
    assert not taken


def test_the_sessions_lock_is_the_machine_wide_file():
    assert MACHINE_LOCK.path.name == "interp-ray-tests.lock"
