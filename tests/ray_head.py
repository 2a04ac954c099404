"""A second, real Ray cluster for the tests of the CLI paths (`ray job submit`, `serve deploy`): `ray start --head`
on 127.0.0.1, beside the session's local Ray, stopped with exactly its own processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from local_cluster import free_ports  # scripts/ is on pytest's pythonpath (pyproject.toml)

BIN = Path(sys.executable).parent


def _wait_for_dashboard(proc: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # e.g. 401 without the token: the server is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the head's dashboard did not come up within {timeout} s")


@contextmanager
def ray_head(env: dict[str, str], *, cwd: Path | None = None, log: IO | None = None, extra_ports: int = 0,
             start_timeout: float = 120, stop_timeout: float = 60,
             info: dict | None = None) -> Iterator[tuple[str, list[int]]]:
    """Yields the dashboard URL and ``extra_ports`` more free ports (e.g. for Serve's HTTP proxy); ``info``, when
    given, gets the GCS address (``gcs``: what ``ray.init(address=…)`` and ``serve run --address`` take).

    Every port comes from the OS: the session's local Ray already holds the defaults, and a second dashboard agent
    that cannot bind 52365 never registers, so job submission would answer "No available agent" forever.
    ``--block`` keeps every daemon in this process group, so stopping it never touches another Ray on the machine
    (a plain `ray stop` would)."""
    gcs, dash, agent, agent_grpc, metrics, runtime_env, client, *extra = free_ports(7 + extra_ports)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths have a length limit
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}", "--num-cpus=3", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        cwd=cwd, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True)
    if info is not None:
        info["gcs"] = f"127.0.0.1:{gcs}"
    try:
        _wait_for_dashboard(proc, dash, start_timeout)
        yield f"http://127.0.0.1:{dash}", extra
    finally:
        stop_head(proc, stop_timeout)
        shutil.rmtree(temp_dir, ignore_errors=True)


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (``ray start`` runs in a session of its own: start_new_session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_head(proc: subprocess.Popen, timeout: float, grace: float = 5.0) -> None:
    """SIGTERM to `ray start --block` alone, a few seconds' grace, then SIGKILL to every process left in its session.

    Neither signal to the whole process group ends a test head in reasonable time: a group SIGTERM ends the GCS
    first, and the raylet, the agents and `ray start` then wait out their GCS reconnect timeouts; with Serve running,
    `ray start` does not end within 30 s of its own SIGTERM either. Either way each stop took the full timeout. And
    Ray's workers (Serve's controller and proxy among them) run in process groups of their own, so a group SIGKILL
    left them behind; the session holds them all. Nothing a test reads lives only in these processes."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=min(grace, timeout))
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while (pids := session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    proc.wait(timeout=30)
