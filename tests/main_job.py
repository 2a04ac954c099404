"""The smoke main job as a user submits it: `ray job submit` of `jobs.pipeline --smoke` to a head of its own
(tests/ray_head.py), every stage, into a directory laid out like the repository after the main job
(``<workdir>/outputs/pipeline``). It takes minutes, so the session runs it once (``smoke_main_job`` in
tests/conftest.py) for the tests of what it writes (tests/jobs/test_job_submit.py) and of serving it
(tests/serving/test_serving_pipeline.py)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from ray_head import ray_head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The stages that train, whose seeds --fixture-seed shifts (tests/conftest.py; README "Tests that train a model").
SEEDED_STAGES = ("classifiers.digits", "classifiers.scenes", "flint", "interpnet", "semantic")
TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class MainJobRun:
    workdir: Path          # the repository's layout after the main job: outputs/pipeline/ below it
    out: Path              # = workdir / "outputs" / "pipeline"
    returncode: int
    stdout: str            # `ray job submit`'s output: the job's own terminal
    stderr: str
    seconds: float

    def check(self) -> None:
        assert self.returncode == 0, self.stdout[-3000:] + self.stderr[-3000:]


def submit_env() -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    return env


def submit_smoke_main_job(workdir: Path, fixture_seed: int = 0) -> MainJobRun:
    out = workdir / "outputs" / "pipeline"
    seeds = [a for key in SEEDED_STAGES for a in ("--set", f"{key}.set.train.seed={fixture_seed}")] \
        if fixture_seed else []
    t0 = time.monotonic()
    with ray_head(submit_env()) as (head_url, _):
        cmd = [str(BIN / "ray"), "job", "submit", "--address", head_url, "--working-dir", str(REPO), "--",
               "python", "-m", "jobs.pipeline", "--config", "configs/pipeline.yaml", "--smoke",
               "--set", f"output_dir={out}", *seeds]
        for _ in range(24):  # bounded (2 min): the dashboard can answer before the node's job agent has registered
            proc = subprocess.run(cmd, env=submit_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                                  cwd=REPO)
            if "No available agent to submit job" not in proc.stderr + proc.stdout:
                break
            time.sleep(5)
    return MainJobRun(workdir, out, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
