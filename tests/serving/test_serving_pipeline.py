"""What the main job trained is what the shipped serve config serves: the session's smoke main job (submitted
once, tests/main_job.py), then `serve run serving/serve_config.yaml` against its output, and an explanation from
every method over HTTP.

`serve run` runs on one `ray start --head` of its own (tests/ray_head.py: free ports of 127.0.0.1, its own process
group and temp dir), started in the main job's working directory, laid out like the repository after the main job
(outputs/pipeline/), so the config's relative paths are resolved as a user's would be. Only the HTTP port is
changed in the copy of the config. The main job wrote what the service loads (the classifiers, CNN-INTE, FLINT,
InterpNET, the Dong et al. captioner, served over an image as a one-frame clip).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray_head import ray_head

from serving.client import ExplainClient, ServiceError

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "pipeline-serve-token"
SERVE_TIMEOUT_S = 420
SAMPLES = REPO / "serving" / "web" / "samples"
# Cheap settings for the slow methods: the point is that they are served, not their quality.
PARAMS = {"feature_inversion": {"stage1_iterations": 2, "stage2_iterations": 2}}


def env() -> dict[str, str]:
    e = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", INTERP_RAY_SERVE_TOKEN=TOKEN,
             PATH=f"{BIN}:{os.environ['PATH']}",
             PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for k in ("RAY_ADDRESS", "INTERP_RAY_ROOT"):
        e.pop(k, None)
    return e


def wait_healthy(client: ExplainClient, serve: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise AssertionError(f"serve run exited with {serve.returncode}")
        try:
            return client.health()
        except (OSError, ServiceError):
            time.sleep(2)
    raise TimeoutError(f"{client.prefix or '/'} was not healthy within {timeout} s")


def sample(dataset: str) -> bytes:
    return (SAMPLES / f"{dataset}_1.png").read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory, smoke_main_job):
    smoke_main_job.check()
    tmp = tmp_path_factory.mktemp("pipeline_serve")
    workdir = smoke_main_job.workdir
    info: dict = {}
    with open(tmp / "ray_start.log", "w") as ray_log, \
            ray_head(env(), cwd=workdir, log=ray_log, extra_ports=1, info=info) as (_, (port,)):
        cfg = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
        cfg["http_options"]["port"] = port
        config = tmp / "serve_config.yaml"
        config.write_text(yaml.safe_dump(cfg))
        t0 = time.monotonic()
        with open(tmp / "serve_run.log", "w") as serve_log:
            serve = subprocess.Popen([str(BIN / "serve"), "run", str(config), "--address", info["gcs"]],
                                     cwd=workdir, env=env(), stdout=serve_log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            try:
                url = f"http://127.0.0.1:{port}"
                clients = {"digits": ExplainClient(url, token=TOKEN, timeout=120),
                           "scenes": ExplainClient(url + "/scenes", token=TOKEN, timeout=120),
                           "fashion_mnist": ExplainClient(url + "/fashion-mnist", token=TOKEN, timeout=120)}
                health = {k: wait_healthy(c, serve, SERVE_TIMEOUT_S) for k, c in clients.items()}
                print(f"main job {smoke_main_job.seconds:.0f} s, serve run healthy after "
                      f"{time.monotonic() - t0:.0f} s")
                yield {"clients": clients, "health": health, "url": url, "workdir": workdir}
                for c in clients.values():
                    c.close()
            finally:
                os.killpg(serve.pid, signal.SIGTERM)  # a backgrounded `serve run` ignores SIGINT
                try:
                    serve.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(serve.pid, signal.SIGKILL)
                    serve.wait(timeout=30)


def test_every_method_the_main_job_trained_is_served(served):
    digits, scenes, fm = (served["health"][k] for k in ("digits", "scenes", "fashion_mnist"))
    assert {"flint", "cnn_inte", "gradcam", "gradient", "occlusion", "feature_inversion", "center"} <= \
        set(digits["methods"]), digits
    assert {"interpnet", "semantic", "gradcam", "feature_inversion"} <= set(scenes["methods"]), scenes
    assert {"flint", "cnn_inte", "gradcam", "feature_inversion"} <= set(fm["methods"]), fm
    assert (digits["model"], scenes["model"], fm["model"]) == ("digits_cnn", "scenes_cnn", "flint_mnist")
    for client in served["clients"].values():  # nothing the main job wrote is reported missing
        assert not client.methods()["skipped"], client.methods()["skipped"]


@pytest.mark.parametrize("app", ["digits", "scenes", "fashion_mnist"])
def test_an_explanation_from_every_served_method_over_http(served, app):
    client = served["clients"][app]
    png = sample(app)
    methods = {m["name"]: m for m in client.methods()["methods"]}
    model = client.methods()["model"]
    c, h, w = model["input_shape"]
    predicted = client.predict(png)["predictions"][0]["label"]
    seen = {}
    for name, meta in methods.items():
        body = client.explain(png, name, params=PARAMS.get(name), asynchronous=meta["slow"])
        (exp,) = body["explanations"]
        assert body["method"] == name and 0 <= exp["label"] < model["num_classes"]
        if "saliency" in meta["produces"]:
            assert exp["label"] == predicted, name
            assert np.asarray(exp["saliency"]).shape == (h, w), name
            assert np.isfinite(np.asarray(exp["saliency"], dtype=float)).all(), name
        if name == "flint":
            relevance, tau = np.asarray(exp["extra"]["relevance"]), exp["extra"]["tau"]
            assert relevance.size > 0 and exp["attributes"] is not None
            # the relevant attributes are those at or over 1/τ, each with its relevance
            assert len(exp["attributes"]) == int((relevance >= 1 / tau - 1e-6).sum())
            # (attributes carry r rounded to 6 decimals; relevance is float32)
            assert all(relevance[int(a.rsplit("_", 1)[1])] == pytest.approx(r, abs=1e-6)
                       for a, r in exp["attributes"].items())
        if name == "cnn_inte":
            votes = {int(k): v for k, v in exp["path"]["votes"].items()}
            assert votes[exp["label"]] == max(votes.values()) and sum(votes.values()) == pytest.approx(1.0)
        if name == "interpnet":
            assert isinstance(exp["sentence"], str) and exp["sentence"].strip()
        if name == "semantic":  # the image as a one-frame clip (a 1-epoch smoke captioner may say nothing)
            assert isinstance(exp["sentence"], str) and isinstance(exp["neurons"], dict)
        seen[name] = exp
    assert seen.keys() == methods.keys()
    picture = client.picture(png, "interpnet" if app == "scenes" else "cnn_inte")
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 1000


def test_errors_name_the_method_never_a_server_path(served):
    scenes = served["clients"]["scenes"]
    with pytest.raises(ServiceError) as e:
        scenes.explain(sample("scenes"), "no_such_method")
    assert e.value.status == 404 and "no_such_method" in e.value.message
    with pytest.raises(ServiceError) as e:
        served["clients"]["digits"].explain(sample("scenes"), "gradcam")  # a 64×64 RGB image to the 8×8 model
    assert e.value.status == 422 and "8" in e.value.message
    for client in served["clients"].values():
        text = str(client.methods())
        assert str(served["workdir"]) not in text and "outputs/pipeline" not in text


def test_the_page_is_served_by_each_application_without_a_token(served):
    import urllib.request

    for prefix in ("/", "/scenes/", "/fashion-mnist/"):
        with urllib.request.urlopen(served["url"] + prefix, timeout=30) as r:
            html = r.read().decode()
        assert r.status == 200 and "static/app.js" in html and f"&quot;base&quot;: &quot;{prefix}&quot;" in html
        with urllib.request.urlopen(served["url"] + prefix + "static/app.js", timeout=30) as r:
            assert r.status == 200 and b"v1/methods" in r.read()
