"""`serve deploy serving/serve_config.yaml` against a `ray start --head` cluster of its own serves the application.

The head runs in its own process group on free ports of 127.0.0.1 with its own temp dir (so the session's Ray, and
any other Ray on the machine, is neither reached nor stopped: no `ray stop`), from a working directory laid out like
the repository after scripts/run.sh (outputs/pipeline/checkpoints/digits), so the committed config's relative
checkpoint path is tested as it is. Only the HTTP port and the replicas' CPU shares are changed in the copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from serving_helpers import digit_images, png_bytes

from serving.client import ExplainClient, ServiceError

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "deploy-test-token"
START_TIMEOUT_S = 120
DEPLOY_TIMEOUT_S = 300


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env() -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
               INTERP_RAY_SERVE_TOKEN=TOKEN, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    env.pop("INTERP_RAY_ROOT", None)
    return env


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: ray start exited with {proc.returncode}")
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
    gcs, dash, agent, agent_grpc, metrics, runtime_env, client, serve_port = free_ports(8)
    env = cluster_env()
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    temp_dir = Path(tempfile.mkdtemp(prefix="rsd", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = open(tmp_path / "ray_start.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}", "--num-cpus=3", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import urllib.error
        import urllib.request

        def dashboard_up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
            except urllib.error.HTTPError:  # 401 without the token: it is up
                pass
            return True

        wait_until(dashboard_up, START_TIMEOUT_S, "the head's dashboard did not come up", proc)
        yield {"dashboard": f"http://127.0.0.1:{dash}", "serve_port": serve_port, "workdir": workdir}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # this cluster's processes only
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def config_copy(head: dict, path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    cfg["http_options"]["port"] = head["serve_port"]
    (app,) = cfg["applications"]
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
