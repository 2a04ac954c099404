"""The real `ray start --head` + `ray job submit` path, on 127.0.0.1 only."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n):
    """n distinct ports the OS says are free now (held open together so they differ)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env():
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


def _wait_for_dashboard(proc, port, timeout=120):
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # e.g. 401 without the token: the server is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the head's dashboard did not come up")


@pytest.fixture
def ray_head(tmp_path):
    env = _env()
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    # Every port of its own: the session's local Ray (tests marked `ray`) already holds the defaults, and a second
    # dashboard agent that cannot bind 52365 never registers, so job submission answers "No available agent" forever.
    gcs, dash, agent_http, agent_grpc, metrics, runtime_env, client = _free_ports(7)
    temp_dir = Path("/tmp") / f"rjs{os.getpid()}"  # short: Ray's socket paths have a length limit
    # --block keeps every daemon a child of this process group, so the test stops exactly its own cluster
    # (a plain `ray stop` would stop every Ray on the machine).
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client}", "--dashboard-host=127.0.0.1", "--num-cpus=3",
         "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_dashboard(proc, dash)
        yield f"http://127.0.0.1:{dash}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_pipeline_through_ray_job_submit(ray_head, tmp_path):
    out = tmp_path / "pipeline"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
           "python", "-m", "jobs.pipeline", "--config", "configs/pipeline.yaml", "--smoke",
           "--set", f"output_dir={out}"]
    for _ in range(24):  # bounded (2 min): the dashboard can answer before the node's job agent has registered
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800, cwd=REPO)
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    report = (out / "report.md").read_text()
    assert "| digits | digits_cnn | digits |" in report and "| scenes | scenes_cnn | scenes |" in report
    for section in ("## CNN-INTE", "## FLINT", "## InterpNET", "## Saliency", "## Semantic captioner"):
        assert section in report
    # Every picture the report shows was written next to it.
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert "cnn_inte/route_0.png" in pictures and "saliency/overlay_00.png" in pictures
    assert any(p.startswith("flint/") for p in pictures)
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pictures)
    assert (out / "checkpoints" / "digits" / "weights.safetensors").is_file()
