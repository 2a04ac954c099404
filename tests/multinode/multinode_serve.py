"""The Serve scenarios' shared pieces: the shipped serve_config.yaml's digits application adapted to a test cluster,
`serve deploy` of it, the Explainer's replicas as the dashboard lists them, and steady HTTP load from loopback."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).parent / "serve")
APP = "interp_ray"


def save_digits_checkpoint(path: str) -> None:
    """A random-weight digits CNN (serving plumbing, not accuracy, is under test) at ``path`` (s3://…)."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    save_classifier(path, build_model("digits_cnn", **opts), model_name="digits_cnn", model_options=opts,
                    class_names=[str(i) for i in range(10)], data={"name": "digits"})


def digits_png() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def deploy(cluster, checkpoint: str, port: int, path: Path,
           change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
    """`serve deploy` of the shipped serve_config.yaml's digits application over ``checkpoint`` on HTTP ``port``,
    with two methods (center, gradient) and no explainer checkpoints; ``change`` edits its deployments
    ({"Ingress": …, "Explainer": …}) for the scenario."""
    import yaml

    cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    cfg["http_options"]["port"] = port
    (app,) = cfg["applications"] = [a for a in cfg["applications"] if a["name"] == APP]
    app["args"].update(checkpoint=checkpoint, explainer_checkpoints={}, methods=["center", "gradient"], links={})
    change({d["name"]: d for d in app["deployments"]})
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([SERVE, "deploy", str(path), "--address", cluster.dashboard], env=cluster.driver_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def shutdown(cluster) -> None:
    subprocess.run([SERVE, "shutdown", "-y", "--address", cluster.dashboard], env=cluster.driver_env(), cwd=REPO,
                   capture_output=True, text=True, timeout=180)


def serve_applications(cluster) -> dict[str, Any]:
    """The dashboard's Serve API: every application's details (raises when it does not answer)."""
    with urllib.request.urlopen(f"{cluster.dashboard}/api/serve/applications/", timeout=30) as r:
        return json.load(r).get("applications", {})


def explainer_replicas(cluster) -> list[dict[str, Any]]:
    """The Explainer's replicas (state, node_id, …) from the dashboard's Serve API; [] while it cannot tell."""
    try:
        return serve_applications(cluster)[APP]["deployments"]["Explainer"]["replicas"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def serve_status(cluster) -> str:
    """What Serve itself says of the application (status, message, each deployment's replicas' states), or why it
    cannot be read: the failure text of a wait that timed out, so it says *why* no replica ran."""
    try:
        apps = serve_applications(cluster)
    except (OSError, ValueError) as e:
        return f"the dashboard's Serve API did not answer: {type(e).__name__}: {e}"
    app = apps.get(APP)
    if app is None:
        return f"no application {APP!r}; Serve lists {sorted(apps)}"
    deps = {name: {"status": d.get("status"), "message": (d.get("message") or "")[-600:],
                   "replicas": [(r.get("state"), r.get("node_id")) for r in d.get("replicas", [])]}
            for name, d in app.get("deployments", {}).items()}
    return json.dumps({"status": app.get("status"), "message": (app.get("message") or "")[-1500:],
                       "deployments": deps})


def node_resources(cluster) -> str:
    """`ray status` of the cluster (each node's use, the resource demands nothing can place), for failure texts."""
    proc = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", cluster.address],
                          env=cluster.driver_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr)[-2500:]


def running_on(cluster) -> list[str]:
    """The node of every RUNNING Explainer replica."""
    return sorted(r["node_id"] for r in explainer_replicas(cluster) if r.get("state") == "RUNNING")


def wait_for(check: Callable[[], Any], timeout: float, what: Callable[[], str] | str, every: float = 1.0) -> float:
    """Poll ``check`` until true; the time.time() it became true. Fails with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what() if callable(what) else what} (after {timeout:.0f} s)"
        time.sleep(every)
    return time.time()


class Load:
    """Steady load from loopback HTTP clients: ``n`` threads, each POSTing ``body`` to ``url`` in a loop, one new
    connection per request and no retry, so every failure the service lets through is counted."""

    def __init__(self, url: str, body: bytes, n: int = 4, timeout: float = 60):
        self.url, self.body, self.timeout = url, body, timeout
        self.results: list[tuple[float, float, int | str]] = []   # (start, end, status or error name)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        u = urllib.parse.urlsplit(self.url)
        while not self.stop.is_set():
            t0 = time.time()
            try:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout)
                conn.request("POST", u.path, body=self.body, headers={"Content-Type": "image/png"})
                resp = conn.getresponse()
                resp.read()
                outcome: int | str = resp.status
                conn.close()
            except Exception as e:  # noqa: BLE001 - a refused, reset or timed-out request is a failed request
                outcome = type(e).__name__
            self.results.append((t0, time.time(), outcome))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 10)

    def answered(self) -> bool:
        return any(r[2] == 200 for r in self.results)

    def since(self, t: float) -> list[tuple[float, float, int | str]]:
        return [r for r in self.results if r[0] >= t]
