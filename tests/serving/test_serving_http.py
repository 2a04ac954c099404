"""The application on Ray Serve (the session's local Ray), over real HTTP on 127.0.0.1: one test per route family,
the error mapping end to end, and a replica killed under load."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
from serving_helpers import digit_images, library_explanation, png_bytes
from torch_settings import torch_threads

from interp_ray.data.images import decode_image
from serving.client import ExplainClient, ServiceError

pytestmark = pytest.mark.ray

APP = "interp_ray_test"
TOKEN_ENV = "INTERP_RAY_HTTP_TEST_TOKEN"
TOKEN = "http-test-token"
PNG = "image/png"
# float32 sums change with the thread count (occlusion's normalised map amplifies that to ~3e-4), so both sides of
# an equality test compute with the same count, whatever the test process or an earlier test left set.
REPLICA_THREADS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_session, serving_checkpoints):
    """The application with 2 Ingress and 2 Explainer replicas, token on, on a free port of 127.0.0.1."""
    from ray import serve

    from serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    # torch_threads: the replicas compute with the thread count the library side of the equality test uses.
    args = {"checkpoint_dir": serving_checkpoints["checkpoint_dir"], "classifier": "digits", "token_env": TOKEN_ENV,
            "torch_threads": REPLICA_THREADS,
            "max_body_bytes": 100_000, "max_images_per_request": 8,
            "batching": {"default": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}}}
    replica = {"num_cpus": 0.1}
    app = build_app(args,
                    ingress_options={"num_replicas": 2, "ray_actor_options": {
                        **replica, "runtime_env": {"env_vars": {TOKEN_ENV: TOKEN}}}},
                    explainer_options={"num_replicas": 2, "max_ongoing_requests": 32, "ray_actor_options": replica})
    serve.run(app, name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(APP)
        serve.shutdown()


@pytest.fixture
def client(served):
    with ExplainClient(served, token=TOKEN, timeout=60) as c:
        yield c


def raw(client: ExplainClient, path: str, body: bytes, ctype: str, **kw) -> ServiceError:
    with pytest.raises(ServiceError) as e:
        client.request("POST", path, body=body, content_type=ctype, **kw)
    return e.value


def test_health_and_methods(served, client, service):
    with ExplainClient(served, token="") as anonymous:
        assert anonymous.health()["methods"] == sorted(service.explainers)  # health needs no token
        with pytest.raises(ServiceError) as e:
            anonymous.methods()
        assert e.value.status == 401
    listed = client.methods()
    assert sorted(m["name"] for m in listed["methods"]) == sorted(service.explainers)
    assert client.method("gradcam")["routes"]["explain"] == "/v1/explain/gradcam"
    assert client.request("GET", "/openapi.json")["info"]["title"].startswith("interp-ray")


def test_each_method_over_http_equals_the_library(client, service):
    png = png_bytes(digit_images(1)[0])
    pixels = decode_image(png, None, "L")
    for method in sorted(service.explainers):
        params = {"stage2_iterations": 5} if method == "feature_inversion" else {}
        body = client.explain(png, method, params=params)
        (http,) = body["explanations"]
        with torch_threads(REPLICA_THREADS):
            lib = library_explanation(service, method, pixels, params=params)
        assert http["label"] == lib["label"] and http["method"] == lib["method"], method
        for key in ("saliency", "attributes", "sentence", "path", "neurons"):
            if lib[key] is None:
                assert http[key] is None, (method, key)
            elif key == "saliency":
                np.testing.assert_allclose(http[key], lib[key], atol=1e-6, err_msg=method)
            else:
                assert http[key] == lib[key], (method, key)


def test_predict_over_http(client, service):
    from serving.service import Row

    images = digit_images(3)
    body = client.predict(images)
    expected = [o.prediction["label"] for o in service.predict_rows([Row(image=i) for i in images])]
    assert [p["label"] for p in body["predictions"]] == expected


def test_bad_inputs_over_http(served, client):
    png = png_bytes(digit_images(1)[0])
    tensor = digit_images(1)
    nan = tensor.copy()
    nan[0, 0, 0, 0] = np.nan
    cases = [
        ("not an image", dict(body=b"not an image", ctype=PNG), 400),
        ("wrong content type", dict(body=b"x", ctype="text/plain"), 415),
        ("wrong size", dict(body=json.dumps({"tensor": np.zeros((1, 1, 7, 8)).tolist()}).encode()), 422),
        ("wrong channels", dict(body=json.dumps({"tensor": np.zeros((1, 3, 8, 8)).tolist()}).encode()), 422),
        ("NaN", dict(body=json.dumps({"tensor": nan.tolist()}).encode()), 422),
        ("class out of range", dict(body=png, ctype=PNG, query={"target": "10"}), 422),
        ("bad params", dict(body=png, ctype=PNG, query={"params": '{"window": -1}'}), 422),
        ("oversize body", dict(body=b"\0" * 100_001, ctype=PNG), 413),
    ]
    for label, kw, status in cases:
        err = raw(client, "/v1/explain/occlusion", kw["body"], kw.get("ctype", "application/json"),
                  query=kw.get("query"))
        assert err.status == status, (label, err)
        assert err.code != "http" and err.message, (label, err)  # our JSON error body, not a bare page
    assert raw(client, "/v1/explain/nope", png, PNG).status == 404
    with ExplainClient(served, token="") as anonymous:
        assert raw(anonymous, "/v1/explain/gradcam", png, PNG).status == 401


def test_slow_request_times_out_with_408(client):
    # The proxy's per-request timeout header stands in for request_timeout_s (which would slow every other test).
    body = json.dumps({"tensor": digit_images(1).tolist(), "params": {"stage2_iterations": 1000}}).encode()
    conn = client._connection()
    conn.request("POST", "/v1/explain/feature_inversion", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
                          "X-Request-Timeout-Seconds": "0.3"})
    resp = conn.getresponse()
    resp.read()
    client.close()
    assert resp.status == 408


def test_async_job_over_http(client):
    images = digit_images(4)
    job = client.submit(images, "feature_inversion", params={"stage1_iterations": 2, "stage2_iterations": 4})
    assert job["status"] in ("queued", "running", "succeeded")
    # two Ingress replicas: the polls land on either; both see the job (one runner per application)
    for _ in range(4):
        assert client.job(job["id"])["id"] == job["id"]
    done = client.wait(job["id"], timeout=120)
    assert len(done["result"]["explanations"]) == 4
    with pytest.raises(ServiceError) as e:
        client.job("0" * 32)
    assert e.value.status == 404


def explainer_replicas() -> list:
    """Handles to the live Explainer replica actors of the test application."""
    import ray

    # Through this driver's own cluster (the state API would autodetect, and may find another Ray on the machine).
    named = ray.util.list_named_actors(all_namespaces=True)
    names = [a["name"] for a in named if a["namespace"] == "serve"
             and a["name"].startswith(f"SERVE_REPLICA::{APP}#Explainer#")]
    return [ray.get_actor(n, namespace="serve") for n in names]


def wait_for_replicas(n: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(explainer_replicas()) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"Explainer did not get back to {n} replicas")


@pytest.mark.slow
def test_killed_replica_under_load_recovers(served):
    """8 clients for ~20 s; one of the two Explainer replicas is killed after 5 s; < 1% of requests fail."""
    import ray

    wait_for_replicas(2)
    png = png_bytes(digit_images(1)[0])
    stop = time.monotonic() + 20
    ok, failed, errors = [0], [0], []
    lock = threading.Lock()

    def worker() -> None:
        with ExplainClient(served, token=TOKEN, timeout=30) as c:
            while time.monotonic() < stop:
                try:
                    c.explain(png, "gradient")
                    with lock:
                        ok[0] += 1
                except Exception as e:  # any failure counts, whatever its kind
                    with lock:
                        failed[0] += 1
                        errors.append(repr(e)[:200])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(5)
    victim = explainer_replicas()[0]
    ray.kill(victim, no_restart=True)
    for t in threads:
        t.join(timeout=60)
    total = ok[0] + failed[0]
    print(f"requests: {total}, failed: {failed[0]}")
    assert total > 50, total
    assert failed[0] / total < 0.01, (failed[0], total, errors[:5])
    wait_for_replicas(2)  # Serve replaced the replica
    with ExplainClient(served, token=TOKEN) as c:
        assert c.explain(png, "gradient")["explanations"]
