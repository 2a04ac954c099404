"""A classifier whose ``module:callable`` model code exists in the driver but was not shipped to the replicas, served
on the session's Ray over real HTTP on 127.0.0.1: the replica stays up (no crash loop) and /v1/health, the explain
and predict routes answer 503 JSON naming the model spec and the fix, in one line."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from serving_helpers import digit_images, png_bytes

pytestmark = pytest.mark.ray

APP = "interp_ray_unimportable"
MODULE = "driver_only_net"
SPEC = f"{MODULE}:build"
CODE = ("from torch import nn\n"
        "def build(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(2, num_classes))\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, verb: str, path: str, body: bytes | None = None, ctype: str | None = None):
    """(status, headers, parsed JSON body) of one request, read as a plain HTTP client would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(verb, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        raw = r.read()
        assert r.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def driver_only_checkpoint(tmp_path_factory):
    """A classifier checkpoint of ``driver_only_net:build``, a module on this driver's sys.path only: the session's
    Ray started before it existed and nothing ships it (no working_dir, no py_modules, not on PYTHONPATH)."""
    import sys

    from interp_ray.checkpoint import load_classifier, save_classifier
    from interp_ray.models import build_model

    code = tmp_path_factory.mktemp("driver_only_code")
    (code / f"{MODULE}.py").write_text(CODE)
    sys.path.insert(0, str(code))
    try:
        options = {"num_classes": 3, "in_channels": 1, "image_size": 8}
        path = tmp_path_factory.mktemp("driver_only_ckpt") / "clf"
        save_classifier(path, build_model(SPEC, **options), model_name=SPEC, model_options=options,
                        class_names=["a", "b", "c"])
        assert load_classifier(path).model.num_classes == 3   # the driver, which has the code, loads it
        yield {"checkpoint": str(path), "code": str(code)}
    finally:
        sys.path.remove(str(code))
        sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def served(ray_session, driver_only_checkpoint):
    from ray import serve

    from serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    replica = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    args = {"checkpoint": driver_only_checkpoint["checkpoint"], "methods": ["gradient"],
            "token_env": "INTERP_RAY_TEST_UNSET_TOKEN"}
    # serve.run waits for RUNNING: a replica whose constructor failed would retry until the deploy failed.
    serve.run(build_app(args, ingress_options=replica, explainer_options=replica), name=APP, route_prefix="/")
    try:
        yield port
    finally:
        serve.delete(APP)
        serve.shutdown()


def assert_names_spec_and_fix(status: int, headers: dict, body: dict, code: str) -> None:
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    error = body["error"]
    assert error["code"] == "model_not_importable", error
    message = error["message"]
    assert f"model spec {SPEC!r}" in message and f"No module named {MODULE!r}" in message, message
    assert "interp-ray serve CONFIG --working-dir DIR" in message and "runtime_env.py_modules" in message, message
    assert "\n" not in message and code not in message, message   # one line; the server's paths are not shown


def test_health_and_routes_name_the_unimportable_model_spec_without_a_crash_loop(served, driver_only_checkpoint):
    from ray import serve

    code = driver_only_checkpoint["code"]
    assert_names_spec_and_fix(*call(served, "GET", "/v1/health"), code)
    png = png_bytes(digit_images(1)[0])
    assert_names_spec_and_fix(*call(served, "POST", "/v1/explain/gradient", png, "image/png"), code)
    assert_names_spec_and_fix(*call(served, "POST", "/v1/predict", png, "image/png"), code)
    assert_names_spec_and_fix(*call(served, "POST", "/v1/jobs/gradient", png, "image/png"), code)
    time.sleep(2)   # a crash-looping replica would be restarting by now
    assert_names_spec_and_fix(*call(served, "GET", "/v1/health"), code)
    app = serve.status().applications[APP]
    assert app.status == "RUNNING", app
    for name, dep in app.deployments.items():
        assert dep.status == "HEALTHY" and dict(dep.replica_states) == {"RUNNING": 1}, (name, dep)
