"""The real `ray start --head` + `ray job submit` path, on 127.0.0.1 only."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_head import ray_head

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


@pytest.fixture
def head_url():
    """A head of its own on free ports of 127.0.0.1 (tests/ray_head.py), beside the session's Ray."""
    with ray_head(_env()) as (url, _):
        yield url


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_pipeline_through_ray_job_submit(head_url, tmp_path):
    out = tmp_path / "pipeline"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head_url, "--working-dir", str(REPO), "--",
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
