"""The routes and their error mapping, in-process (the FastAPI app over the service; no Ray, no sockets)."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
from serving_helpers import asgi_client, digit_images, library_explanation, local_app, png_bytes

from interp_ray.data.images import decode_image

PNG = {"content-type": "image/png"}


def tensor_body(images: np.ndarray, **extra) -> dict:
    return {"tensor": images.tolist(), **extra}


def error_of(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == resp.status_code
    return body["error"]


# --------------------------------------------------------------------------- service routes


def test_health_and_methods(local_api, service):
    h = local_api.get("/v1/health").json()
    assert h["status"] == "ok" and h["methods"] == sorted(service.explainers)
    m = local_api.get("/v1/methods").json()
    assert [x["name"] for x in m["methods"]] == sorted(service.explainers)
    assert m["model"]["input_shape"] == [1, 8, 8] and m["skipped"] == service.skipped
    fi = local_api.get("/v1/methods/feature_inversion").json()
    assert fi["slow"] is True and "stage2_iterations" in fi["params"]["properties"]
    assert error_of(local_api.get("/v1/methods/nope"))["code"] == "unknown_method"


# --------------------------------------------------------------------------- every method, and the library's answer


def assert_same(http: dict, lib: dict) -> None:
    assert set(http) == set(lib)
    for key, value in lib.items():
        if key == "saliency" and value is not None:
            np.testing.assert_allclose(np.asarray(http[key]), np.asarray(value), rtol=0, atol=1e-6)
        elif key == "extra":
            assert set(http[key]) == set(value)
        else:
            assert http[key] == value, key


def test_each_method_answers_as_the_library_does(local_api, service):
    png = png_bytes(digit_images(1)[0])
    pixels = decode_image(png, None, "L")  # the library's decoding of the same upload
    for method in sorted(service.explainers):
        params = {"stage2_iterations": 5} if method == "feature_inversion" else {}
        resp = local_api.post(f"/v1/explain/{method}", content=png, headers=PNG,
                              params={"params": json.dumps(params)} if params else None)
        assert resp.status_code == 200, (method, resp.text)
        body = resp.json()
        assert body["method"] == method and body["model"] == service.classifier.digest
        (http,) = body["explanations"]
        assert_same(http, library_explanation(service, method, pixels, params=params))


def test_the_captioner_answers_an_uploaded_image_as_the_library_does(semantic_service, scene_frame_png):
    """semantic over a scenes classifier: an uploaded image is captioned as a one-frame clip."""
    service, png = semantic_service, scene_frame_png
    pixels = decode_image(png, None, "RGB")
    with asgi_client(local_app(service)) as api:
        assert [m["name"] for m in api.get("/v1/methods").json()["methods"]] == ["semantic"]
        resp = api.post("/v1/explain/semantic", content=png, headers=PNG)
        assert resp.status_code == 200, resp.text
        (http,) = resp.json()["explanations"]
        lib = library_explanation(service, "semantic", pixels)
        assert_same(http, lib)
        assert http["sentence"] and http["neurons"] == lib["neurons"]
        # The answer names the class it captions: the classifier's name for its label, not only the index.
        names = service.classifier.class_names
        assert http["label"] >= 0 and http["label_name"] == names[http["label"]]
        picture = api.post("/v1/explain/semantic/picture", content=png, headers=PNG)
        assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n", picture.text[:200]


def test_every_answer_says_whose_prediction_it_explains(local_api, service, flint_services):
    """Each answer carries the served classifier's prediction and whose prediction the method explains: the
    classifier's for the methods built around it and for a FLINT whose f has the classifier's weights (the
    specimen, post hoc), FLINT's own f for one whose f differs (joint), with f's prediction and the agreement."""
    images = digit_images(8)
    predicted = local_api.post("/v1/predict", json=tensor_body(images)).json()["predictions"]
    names = service.classifier.class_names
    for method in sorted(service.explainers):
        params = {"stage2_iterations": 2, "stage1_iterations": 2} if method == "feature_inversion" else {}
        body = local_api.post(f"/v1/explain/{method}", json=tensor_body(images[:2], params=params)).json()
        for p, e in zip(predicted, body["explanations"]):
            w = e["explains"]
            assert w["model"] == "classifier" and w["agrees"] is True, (method, w)
            assert (w["label"], w["classifier_label"]) == (p["label"], p["label"])
            assert w["label_name"] == names[p["label"]]
            assert w["probability"] == pytest.approx(max(p["probabilities"]), abs=1e-6)
    with asgi_client(local_app(flint_services["own"])) as api:
        answers = api.post("/v1/explain/flint", json=tensor_body(images)).json()["explanations"]
    for p, e in zip(predicted, answers):
        w = e["explains"]
        assert w["model"] == "own" and w["about"] == "FLINT's predictor f, trained jointly with its interpreter g"
        # f's prediction as FLINT reports it, the served classifier's as /v1/predict answers
        assert w["label"] == e["extra"]["predictor_class"] and w["label_name"] == e["extra"]["predictor_class_name"]
        assert w["probability"] == pytest.approx(e["extra"]["predictor_probability"], abs=1e-6)
        assert w["classifier_label"] == p["label"] and w["agrees"] == (w["label"] == p["label"])
    assert not all(e["explains"]["agrees"] for e in answers)   # the perturbed f predicts otherwise for some digits


def test_three_ways_to_send_an_image_agree(local_api):
    image = digit_images(1)[0]
    png = png_bytes(image)
    raw = local_api.post("/v1/explain/gradient?target=3", content=png, headers=PNG).json()
    b64 = local_api.post("/v1/explain/gradient", json={"image": base64.b64encode(png).decode(), "target": 3}).json()
    form = local_api.post("/v1/explain/gradient", files={"image": ("d.png", png, "image/png")},
                          data={"target": "3"}).json()
    url = local_api.post("/v1/explain/gradient",
                         json={"image": "data:image/png;base64," + base64.b64encode(png).decode(), "target": 3}).json()
    assert raw == b64 == form == url
    assert raw["explanations"][0]["label"] == 3
    pixels = decode_image(png, None, "L")
    tensor = local_api.post("/v1/explain/gradient", json=tensor_body(pixels, target=3)).json()
    assert tensor == raw


def test_image_sets_and_per_image_targets(local_api):
    images = digit_images(3)
    body = local_api.post("/v1/explain/gradcam", json=tensor_body(images, target=[1, -1, 7])).json()
    labels = [e["label"] for e in body["explanations"]]
    assert labels[0] == 1 and labels[2] == 7
    files = [("image", (f"{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]
    form = local_api.post("/v1/explain/gradcam", files=files, data={"target": "1,-1,7"}).json()
    assert [e["label"] for e in form["explanations"]] == labels


def test_predict(local_api, service):
    images = digit_images(2)
    body = local_api.post("/v1/predict", json=tensor_body(images)).json()
    assert body["model"] == service.classifier.digest
    expected = service.predict_rows([__import__("serving.service").service.Row(image=i) for i in images])
    assert [p["label"] for p in body["predictions"]] == [o.prediction["label"] for o in expected]
    assert abs(sum(body["predictions"][0]["probabilities"]) - 1) < 1e-5


def test_resize_is_opt_in(local_api):
    from PIL import Image
    import io

    big = Image.fromarray((np.random.RandomState(0).rand(16, 16) * 255).astype(np.uint8), "L")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    resp = local_api.post("/v1/explain/gradient", content=buf.getvalue(), headers=PNG)
    assert resp.status_code == 422 and error_of(resp)["code"] == "wrong_size"
    assert "resize=true" in error_of(resp)["message"]
    ok = local_api.post("/v1/explain/gradient?resize=true", content=buf.getvalue(), headers=PNG)
    assert ok.status_code == 200 and np.asarray(ok.json()["explanations"][0]["saliency"]).shape == (8, 8)


# --------------------------------------------------------------------------- every malformed input → its 4xx


def nan_image():
    x = digit_images(1)
    x[0, 0, 2, 3] = np.nan
    return x


BAD = [
    ("not an image", dict(content=b"GIF89a but not really", headers=PNG), 400, "invalid_image"),
    ("empty image", dict(content=b"", headers=PNG), 400, "invalid_image"),
    ("bad base64", dict(json={"image": "***"}), 400, "invalid_base64"),
    ("not JSON", dict(content=b"{nope", headers={"content-type": "application/json"}), 400, "invalid_json"),
    ("wrong type", dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
    ("wrong size", dict(json={"tensor": np.zeros((1, 9, 8)).tolist()}), 422, "wrong_size"),
    ("wrong channels", dict(json={"tensor": np.zeros((3, 8, 8)).tolist()}), 422, "wrong_channels"),
    ("wrong rank", dict(json={"tensor": np.zeros((8, 8)).tolist()}), 422, "invalid_tensor"),
    ("ragged", dict(json={"tensor": [[[0.0] * 8] * 7 + [[0.0] * 3]]}), 422, "invalid_tensor"),
    ("strings", dict(json={"tensor": [[["a"] * 8] * 8]}), 422, "invalid_tensor"),
    ("NaN", dict(content=json.dumps({"tensor": nan_image().tolist()}).encode(),
                 headers={"content-type": "application/json"}), 422, "not_finite"),
    ("no image", dict(json={"target": 1}), 422, "invalid_request"),
    ("two inputs", dict(json={"image": "AAAA", "tensor": [[[0.0]]]}), 422, "invalid_request"),
    ("unknown field", dict(json={"tensor": digit_images(1).tolist(), "imagez": 1}), 422, "invalid_request"),
    ("empty list", dict(json={"images": []}), 422, "no_images"),
    ("too many", dict(json={"tensor": np.zeros((9, 1, 8, 8)).tolist()}), 422, "too_many_images"),
    ("class too big", dict(json={"tensor": digit_images(1).tolist(), "target": 10}), 422, "target_out_of_range"),
    ("class negative", dict(json={"tensor": digit_images(1).tolist(), "target": -2}), 422, "target_out_of_range"),
    ("targets count", dict(json={"tensor": digit_images(2).tolist(), "target": [1]}), 422, "invalid_target"),
    ("target text", dict(content=b"x", headers=PNG, params={"target": "three"}), 422, "invalid_target"),
    ("unknown param", dict(json={"tensor": digit_images(1).tolist(), "params": {"windw": 2}}), 422,
     "invalid_params"),
    ("param type", dict(json={"tensor": digit_images(1).tolist(), "params": {"window": "big"}}), 422,
     "invalid_params"),
    ("param range", dict(json={"tensor": digit_images(1).tolist(), "params": {"window": 0}}), 422,
     "invalid_params"),
    ("params not JSON", dict(content=png_bytes(digit_images(1)[0]), headers=PNG, params={"params": "{"}), 422,
     "invalid_params"),
    ("method fails on input", dict(json={"tensor": digit_images(1).tolist(), "params": {"window": 99}}), 422,
     "invalid_request"),
    ("multipart without file", dict(data={"target": "1"}, files={"other": ("x", b"1")}), 422, "invalid_request"),
]


@pytest.mark.parametrize("label,kwargs,status,code", BAD, ids=[b[0] for b in BAD])
def test_malformed_input_gets_its_4xx(local_api, label, kwargs, status, code):
    resp = local_api.post("/v1/explain/occlusion", **kwargs)
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert err["code"] == code and err["message"], err


def test_unknown_method_and_route(local_api):
    body = {"tensor": digit_images(1).tolist()}
    err = error_of(local_api.post("/v1/explain/nope", json=body))
    assert err["status"] == 404 and "gradcam" in err["message"]
    assert error_of(local_api.get("/v1/nowhere"))["status"] == 404
    assert error_of(local_api.get("/v1/explain/gradcam"))["status"] == 405


def test_predict_takes_no_explain_fields(local_api):
    resp = local_api.post("/v1/predict", json={"tensor": digit_images(1).tolist(), "target": 1})
    assert resp.status_code == 422 and "target" in error_of(resp)["message"]


# --------------------------------------------------------------------------- safety


@pytest.fixture(scope="module")
def guarded(service):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="s3cret")) as client:
        yield client


def test_token_is_required_on_every_route_but_health(guarded):
    assert guarded.get("/v1/health").status_code == 200
    body = {"tensor": digit_images(1).tolist()}
    for method, path in [("GET", "/v1/methods"), ("POST", "/v1/explain/gradient"), ("POST", "/v1/predict"),
                         ("GET", "/v1/jobs/x"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/v1/nowhere")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            resp = guarded.request(method, path, json=body if method == "POST" else None, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert error_of(resp)["code"] == "unauthorized"
    ok = guarded.post("/v1/explain/gradient", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_the_token_is_read_from_the_configured_variable(monkeypatch, service):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    monkeypatch.setenv("INTERP_RAY_TEST_UNSET_TOKEN", "from-env")
    backend = LocalBackend(service)
    client = asgi_client(make_api(backend, JobRunner(backend=backend), service.args))
    assert client.get("/v1/methods").status_code == 401
    assert client.get("/v1/methods", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_oversize_body_is_413_with_or_without_a_length(local_api, service):
    limit = service.args.max_body_bytes
    resp = local_api.post("/v1/explain/gradient", content=b"\0" * (limit + 1), headers=PNG)
    assert resp.status_code == 413 and error_of(resp)["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is enforced on the bytes received
        for _ in range(limit // 10_000 + 2):
            yield b"\0" * 10_000

    resp = local_api.post("/v1/explain/gradient", content=chunks(), headers=PNG)
    assert resp.status_code == 413
    form = local_api.post("/v1/explain/gradient", files={"image": ("big.png", b"\0" * (limit + 1), "image/png")})
    assert form.status_code == 413


# --------------------------------------------------------------------------- jobs


def wait_for(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_job_lifecycle(local_api):
    images = digit_images(5)
    resp = local_api.post("/v1/jobs/feature_inversion",
                          json=tensor_body(images, params={"stage1_iterations": 2, "stage2_iterations": 3}))
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["location"] == job["url"] == f"/v1/jobs/{job['id']}"
    assert job["images"] == 5 and job["status"] in ("queued", "running")
    done = wait_for(local_api, job["id"])
    assert done["status"] == "succeeded" and done["done"] == 5
    assert len(done["result"]["explanations"]) == 5
    sync = local_api.post("/v1/explain/feature_inversion",
                          json=tensor_body(images[:1], params={"stage1_iterations": 2, "stage2_iterations": 3}))
    np.testing.assert_allclose(done["result"]["explanations"][0]["saliency"],
                               sync.json()["explanations"][0]["saliency"], atol=1e-6)


def test_jobs_take_larger_sets_than_requests(local_api, service):
    images = np.repeat(digit_images(1), service.args.max_images_per_request + 2, axis=0)
    assert local_api.post("/v1/explain/center", json=tensor_body(images)).status_code == 422
    job = local_api.post("/v1/jobs/center", json=tensor_body(images)).json()
    assert wait_for(local_api, job["id"])["done"] == len(images)


def test_failed_job_names_the_image(local_api):
    job = local_api.post("/v1/jobs/occlusion", json=tensor_body(digit_images(2), params={"window": 99})).json()
    done = wait_for(local_api, job["id"])
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"]["status"] == 422 and "image 0" in done["error"]["message"]


def test_job_errors(local_api):
    assert error_of(local_api.get("/v1/jobs/nope"))["code"] == "unknown_job"
    assert local_api.post("/v1/jobs/nope", json=tensor_body(digit_images(1))).status_code == 404
    nan = json.dumps({"tensor": [[[float("nan")] * 8] * 8]}).encode()
    resp = local_api.post("/v1/jobs/gradient", content=nan, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and error_of(resp)["code"] == "not_finite"


def test_non_finite_numbers_in_an_explanation_are_null(local_api):
    body = tensor_body(digit_images(1), params={"stage1_iterations": 0, "stage2_iterations": 2})
    resp = local_api.post("/v1/explain/feature_inversion", json=body)
    assert resp.status_code == 200
    assert resp.json()["explanations"][0]["extra"]["stage1_loss"] is None


def test_cancel(local_api):
    job = local_api.post("/v1/jobs/feature_inversion",
                         json=tensor_body(np.repeat(digit_images(1), 64, 0), params={"stage2_iterations": 200})).json()
    cancelled = local_api.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["status"] in ("cancelled", "succeeded")
    assert local_api.get(f"/v1/jobs/{job['id']}").json()["status"] == cancelled["status"]


# --------------------------------------------------------------------------- overload


class _Busy:
    """A backend whose Explainer deployment is over its max_queued_requests."""

    async def info(self, refresh=False):
        return {"model": {"name": "m", "digest": "d", "input_shape": [1, 8, 8], "num_classes": 10,
                          "class_names": []}, "methods": {"gradient": {}}, "skipped": {}}

    async def explain(self, method, rows):
        from serving.errors import ServiceUnavailable

        raise ServiceUnavailable("Request dropped due to backpressure", retry_after_s=2.0)

    predict = explain


def test_backpressure_is_503_with_retry_after(service):
    from serving.api import make_api
    from serving.jobs import JobRunner

    client = asgi_client(make_api(_Busy(), JobRunner(backend=_Busy()), service.args, token=""))
    resp = client.post("/v1/explain/gradient", json=tensor_body(digit_images(1)))
    assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
    assert error_of(resp)["code"] == "unavailable"


def test_jobs_full_is_503(service):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    runner = JobRunner(backend=backend, max_jobs=1)
    slow = tensor_body(np.repeat(digit_images(1), 8, 0), params={"stage2_iterations": 300})
    # `with`: one event loop for every request, so the first job keeps running between them
    with asgi_client(make_api(backend, runner, service.args, token="")) as client:
        first = client.post("/v1/jobs/feature_inversion", json=slow)
        assert first.status_code == 202
        second = client.post("/v1/jobs/feature_inversion", json=slow)
        assert second.status_code == 503 and "retry-after" in second.headers
        client.delete(f"/v1/jobs/{first.json()['id']}")


# --------------------------------------------------------------------------- metrics


class _Recorder:
    def __init__(self):
        self.seen = []

    def observe(self, route, method, status, ms):
        self.seen.append((route, method, status, ms))


def test_every_request_is_measured_by_route_method_and_status(service):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend, metrics = LocalBackend(service), _Recorder()
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="t",
                              metrics=metrics)) as client:
        auth = {"Authorization": "Bearer t"}
        client.post("/v1/explain/gradient", json=tensor_body(digit_images(1)), headers=auth)
        client.post("/v1/explain/gradient", json=tensor_body(digit_images(1), target=99), headers=auth)
        client.post("/v1/explain/gradient", json=tensor_body(digit_images(1)))  # no token
        client.get("/v1/health")
    got = [(r, m, s) for r, m, s, _ in metrics.seen]
    assert got == [("/v1/explain/{method}", "gradient", 200), ("/v1/explain/{method}", "gradient", 422),
                   ("unmatched", "", 401), ("/v1/health", "", 200)]
    assert all(ms > 0 for *_, ms in metrics.seen)


def test_serve_metrics_objects_record_without_a_cluster():
    from serving.deployments import BatchMetrics, RequestMetrics
    from serving.service import Outcome

    RequestMetrics().observe("/v1/explain/{method}", "gradient", 200, 12.5)
    b = BatchMetrics()
    b.observe("gradient", [Outcome(explanation=1), Outcome(status=422, error="x")], 3.0)
    assert b.batches == {"gradient": 1} and b.rows == {"gradient": 2}


def test_jobs_wait_out_backpressure():
    import asyncio

    from serving.errors import ServiceUnavailable
    from serving.jobs import JobRunner
    from serving.service import Outcome, Row

    class Flaky:
        calls = 0

        async def explain(self, method, rows):
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise ServiceUnavailable("busy", retry_after_s=0.01)
            return [Outcome(explanation=i) for i, _ in enumerate(rows)]

    async def run():
        runner = JobRunner(backend=Flaky(), concurrency=2)
        job = await runner.submit("m", [Row(image=np.zeros((1, 8, 8), np.float32))] * 3)
        for _ in range(200):
            status = await runner.status(job["id"])
            if status["status"] not in ("queued", "running"):
                return status
            await asyncio.sleep(0.01)

    status = asyncio.run(run())
    assert status["status"] == "succeeded" and len(status["outcomes"]) == 3
