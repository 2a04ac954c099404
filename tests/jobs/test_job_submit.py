"""The real `ray start --head` + `ray job submit` path, on 127.0.0.1 only."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Ports of their own so this head never clashes with the session's local Ray.
GCS_PORT, DASHBOARD_PORT = 6391, 8275


def _env():
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


def _wait_for_dashboard(proc, timeout=120):
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/version", timeout=2)
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
    temp_dir = Path("/tmp") / f"rjs{os.getpid()}"  # short: Ray's socket paths have a length limit
    # --block keeps every daemon a child of this process group, so the test stops exactly its own cluster
    # (a plain `ray stop` would stop every Ray on the machine).
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={GCS_PORT}",
         f"--dashboard-port={DASHBOARD_PORT}", "--dashboard-host=127.0.0.1", "--num-cpus=3",
         "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_dashboard(proc)
        yield f"http://127.0.0.1:{DASHBOARD_PORT}"
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
    for _ in range(60):  # bounded (5 min): the dashboard can answer before the node's job agent has registered
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    report = (out / "report.md").read_text()
    assert "| digits | digits_cnn | digits |" in report
    assert (out / "checkpoints" / "digits" / "weights.safetensors").is_file()
