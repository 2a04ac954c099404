"""`serve deploy serving/serve_config.yaml` against a `ray start --head` cluster of its own serves the application.

The head runs in its own process group on free ports of 127.0.0.1 with its own temp dir (so the session's Ray, and
any other Ray on the machine, is neither reached nor stopped: no `ray stop`), from a working directory laid out like
the repository after scripts/run.sh (outputs/pipeline/checkpoints/digits), so the committed config's relative
checkpoint path is tested as it is. Only the HTTP port and the replicas' CPU shares are changed in the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_head import ray_head
from serving_helpers import digit_images, png_bytes

from serving.client import ExplainClient, ServiceError

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "deploy-test-token"
START_TIMEOUT_S = 120
DEPLOY_TIMEOUT_S = 300


def cluster_env() -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
               INTERP_RAY_SERVE_TOKEN=TOKEN, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    env.pop("INTERP_RAY_ROOT", None)
    return env


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ServiceError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout} s")


@pytest.fixture
def head(tmp_path, serving_checkpoints):
    """A `ray start --head --block` in a working directory that holds outputs/pipeline/checkpoints/digits."""
    workdir = tmp_path / "repo"
    ckpts = workdir / "outputs" / "pipeline" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copytree(serving_checkpoints["classifier"], ckpts / "digits")
    with open(tmp_path / "ray_start.log", "w") as log, \
            ray_head(cluster_env(), cwd=workdir, log=log, extra_ports=1, start_timeout=START_TIMEOUT_S,
                     stop_timeout=30) as (dashboard, (serve_port,)):
        yield {"dashboard": dashboard, "serve_port": serve_port, "workdir": workdir}


def config_copy(head: dict, path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    cfg["http_options"]["port"] = head["serve_port"]
    # The digits application (the one this head's working directory has a checkpoint for); test_serving_pipeline.py
    # serves both applications over a real main job's output.
    (app,) = cfg["applications"] = [a for a in cfg["applications"] if a["name"] == "interp_ray"]
    for dep in app["deployments"]:  # a 3-CPU test cluster: small shares, one replica each
        dep["ray_actor_options"]["num_cpus"] = 0.2
        dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_serve_deploy_serves_the_application(head, tmp_path):
    cfg = config_copy(head, tmp_path / "serve_config.yaml")
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(cfg), "--address", head["dashboard"]],
                            env=cluster_env(), cwd=head["workdir"], capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    url = f"http://127.0.0.1:{head['serve_port']}"
    with ExplainClient(url, token=TOKEN, timeout=30) as c:
        try:
            health = wait_until(lambda: c.health(), DEPLOY_TIMEOUT_S, "the application did not become healthy")
        except TimeoutError:
            status = subprocess.run([str(BIN / "serve"), "status", "--address", head["dashboard"]],
                                    env=cluster_env(), capture_output=True, text=True, timeout=60)
            raise AssertionError(status.stdout[-4000:] + status.stderr[-2000:]) from None
        assert "gradcam" in health["methods"]
        png = png_bytes(digit_images(1)[0])
        body = c.explain(png, "gradcam", target=2)
        assert body["explanations"][0]["label"] == 2
        assert len(c.predict(png)["predictions"]) == 1
    with ExplainClient(url, token="", timeout=30) as anonymous:
        with pytest.raises(ServiceError) as e:
            anonymous.explain(png, "gradcam")
        assert e.value.status == 401
    # `serve status` reads the dashboard's Serve API (as do the Serve page and the multi-node tests' replica count):
    # a function among a deployment actor's init_kwargs once made that API answer 500 for good.
    status = subprocess.run([str(BIN / "serve"), "status", "--address", head["dashboard"]], env=cluster_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    app = yaml.safe_load(status.stdout)["applications"]["interp_ray"]
    assert app["status"] == "RUNNING" and sorted(app["deployments"]) == ["Explainer", "Ingress"]
    assert all(d["status"] == "HEALTHY" and set(d["replica_states"]) == {"RUNNING"}
               for d in app["deployments"].values()), app


def test_the_job_actors_init_arguments_are_plain_data():
    """Serve shows a deployment actor's init_kwargs in the instance details the dashboard encodes as JSON."""
    from serving.deployments import SharedJobRunner, jobs_actor_config
    from serving.service import ServeArgs

    cfg = jobs_actor_config(ServeArgs(checkpoint="unused"))
    assert json.loads(json.dumps(cfg.init_kwargs)) == cfg.init_kwargs
    runner = SharedJobRunner(**cfg.init_kwargs)      # what the actor is built with: its backend comes later
    assert runner.max_jobs == cfg.init_kwargs["max_jobs"] and runner._backend is None
