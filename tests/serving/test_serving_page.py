"""The page's routes, the picture route, the OpenAPI the page is built on, and what errors may say (in-process: the
FastAPI app over the service; no Ray, no sockets)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import asgi_client, digit_images, library_explanation, local_app, png_bytes

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "serving" / "web"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


# --------------------------------------------------------------------------- the page


def test_the_page_and_its_files_need_no_token(service):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    api = make_api(backend, JobRunner(backend=backend), service.args.model_copy(
        update={"title": "digits", "links": {"scenes": "/scenes/"}}), token="s3cret")
    with asgi_client(api) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        config = json.loads(_meta(page.text))
        assert config == {"base": "/", "title": "digits", "links": {"scenes": "/scenes/"}}
        for name in ("app.js", "style.css", "samples/index.json"):
            assert client.get(f"/static/{name}").status_code == 200, name
        assert client.get("/v1/methods").status_code == 401       # the API behind it still needs the token
        assert client.get("/static/missing.js").status_code == 404
    # Under a route prefix (the scenes application at /scenes) the page's base is the prefix, and it is still open.
    with asgi_client(api, root_path="/scenes") as client:
        page = client.get("/scenes/")
        assert page.status_code == 200 and json.loads(_meta(page.text))["base"] == "/scenes/"
        assert client.get("/scenes/static/app.js").status_code == 200
        assert client.get("/scenes/v1/methods").status_code == 401


def _meta(html: str) -> str:
    import html as html_lib
    import re

    m = re.search(r'<meta name="interp-ray" content="([^"]*)">', html)
    assert m, "the page has no config"
    return html_lib.unescape(m[1])


def test_the_page_uses_nothing_from_elsewhere():
    """No CDN, no build step: every URL the page's files name is relative (this application) or a data: URL."""
    import re

    for path in (WEB / "index.html", WEB / "app.js", WEB / "style.css"):
        text = path.read_text()
        assert not re.search(r"https?://", text), path.name
        for url in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert not url.startswith(("/", "//")) or url == "/", (path.name, url)


def test_the_bundled_samples_are_the_projects_data_at_the_models_sizes():
    from PIL import Image

    index = json.loads((WEB / "samples" / "index.json").read_text())
    assert {s["dataset"] for s in index} == {"digits", "scenes", "fashion_mnist"}
    for s in index:
        with Image.open(WEB / "samples" / s["file"]) as im:
            c, h, w = s["shape"]
            assert im.size == (w, h) and len(im.getbands()) == c, s


# --------------------------------------------------------------------------- the picture route


def test_saliency_picture_is_the_reports_overlay(local_api, service, tmp_path):
    from interp_ray.plots import save_overlay

    image = digit_images(1)[0]
    resp = local_api.post("/v1/explain/gradient/picture", json={"tensor": image.tolist()})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    lib = library_explanation(service, "gradient", image)
    path = save_overlay(tmp_path / "o.png", image, np.asarray(lib["saliency"]),
                        title=f"gradient: class {lib['label_name']}")
    assert resp.content[:8] == PNG_MAGIC and resp.content == Path(path).read_bytes()


@pytest.mark.parametrize("method", ["flint", "cnn_inte", "interpnet", "gradcam"])
def test_each_kind_of_explanation_is_drawn(local_api, service, method):
    if method not in service.explainers:
        pytest.skip(f"{method} is not served by the test service: {service.skipped.get(method)}")
    image = digit_images(2)[1]
    resp = local_api.post(f"/v1/explain/{method}/picture", json={"tensor": image.tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.content[:8] == PNG_MAGIC
    w, h = png_size(resp.content)
    assert w > 100 and h > 100  # a figure, not the 8×8 input


def test_flint_picture_is_composed_from_the_checkpoints_stored_tiles(flint_services, monkeypatch):
    """FLINT's served sheet shows, per relevant attribute, the tiles its checkpoint stores (the pair's for a stored
    (class, attribute) pair, else the attribute's): AM+PI never runs while serving it."""
    from interp_ray.explainers.flint import explainer as flint_explainer
    from interp_ray.explainers.flint import plots as flint_plots
    from interp_ray.plots import figure_png
    from serving.service import Row

    service = flint_services["stored"]
    flint = service.explainers["flint"]
    assert flint.pictures is not None and len(flint.pictures.pair_classes) == 2

    def never(*_a, **_k):
        raise AssertionError("AM+PI ran while a picture was served from stored tiles")

    monkeypatch.setattr(flint_plots, "activation_maximisation", never)
    monkeypatch.setattr(flint_explainer, "activation_maximisation", never)
    image = digit_images(1)[0]
    body = {"tensor": image.tolist(), "target": 0, "params": {"tau": 1000}}
    with asgi_client(local_app(service)) as api:
        resp = api.post("/v1/explain/flint/picture", json=body)
    assert resp.status_code == 200, resp.text
    (outcome,) = service.explain_rows("flint", [Row(image=image, target=0, params={"tau": 1000})])
    exp = outcome.explanation
    relevant = list(exp.attributes)
    tiles = {name: flint.tiles(0, flint.attribute_names.index(name)) for name in relevant}
    # the first relevant attribute has stored tiles of its own for class 0 (the fixture's pair); the rest the
    # attribute's
    assert tiles[relevant[0]][2] == "class" and {t[2] for t in list(tiles.values())[1:]} <= {"attribute"}
    np.testing.assert_array_equal(tiles[relevant[0]][1], flint.pictures.pair_am[0])
    j = flint.attribute_names.index(relevant[-1])
    if len(relevant) > 1:
        np.testing.assert_array_equal(tiles[relevant[-1]][1], flint.pictures.attribute_am[j])
    expected = flint_plots.local_sheet_figure(
        image, exp.extra["relevance"], 1000, attribute_names=flint.attribute_names, relevant=relevant,
        am_images={n: t[1] for n, t in tiles.items()}, mas={n: t[0] for n, t in tiles.items()},
        title=flint_plots.sheet_title(exp, 1000), attribute_labels=flint.attribute_labels())
    assert resp.content == figure_png(expected)


def test_flint_picture_from_a_checkpoint_without_stored_pictures(flint_services, monkeypatch):
    """A checkpoint written before pictures were stored still answers: each relevant attribute's tiles are grown
    once in the replica (from its stored MAS, or noise) and reused by the next request."""
    from interp_ray.explainers.flint import explainer as flint_explainer

    service = flint_services["old"]
    flint = service.explainers["flint"]
    assert flint.pictures is None
    monkeypatch.setitem(flint.config, "am", {"rounds": 1, "n_iter": 3})   # cheap AM+PI for the test
    grown: list[int] = []
    real = flint_explainer.activation_maximisation

    def counted(model, j, *args, **kwargs):
        grown.extend([j] if isinstance(j, int) else j)
        return real(model, j, *args, **kwargs)

    monkeypatch.setattr(flint_explainer, "activation_maximisation", counted)
    body = {"tensor": digit_images(1)[0].tolist(), "params": {"tau": 1000}}
    with asgi_client(local_app(service)) as api:
        first = api.post("/v1/explain/flint/picture", json=body)
        second = api.post("/v1/explain/flint/picture", json=body)
        attributes = api.post("/v1/explain/flint", json=body).json()["explanations"][0]["attributes"]
    assert first.status_code == second.status_code == 200, first.text
    assert first.content == second.content and first.content[:8] == PNG_MAGIC
    assert attributes and sorted(grown) == sorted(flint.attribute_names.index(a) for a in attributes)


def test_cnn_inte_picture_is_its_route_diagram(local_api, service):
    from interp_ray.explainers.cnn_inte import route_diagram
    from serving.service import Row

    if "cnn_inte" not in service.explainers:
        pytest.skip(f"cnn_inte is not served by the test service: {service.skipped.get('cnn_inte')}")
    image = digit_images(3)[2]
    resp = local_api.post("/v1/explain/cnn_inte/picture", json={"tensor": image.tolist()})
    (outcome,) = service.explain_rows("cnn_inte", [Row(image=image)])
    assert resp.content == route_diagram(service.explainers["cnn_inte"], outcome.explanation, image)


def test_picture_errors(local_api):
    two = {"tensor": digit_images(2).tolist()}
    resp = local_api.post("/v1/explain/gradient/picture", json=two)
    assert resp.status_code == 422 and "at most 1" in resp.json()["error"]["message"]
    resp = local_api.post("/v1/explain/nope/picture", json={"tensor": digit_images(1)[0].tolist()})
    assert resp.status_code == 404 and "nope" in resp.json()["error"]["message"]
    resp = local_api.post("/v1/explain/gradient/picture", content=b"not an image",
                          headers={"content-type": "image/png"})
    assert resp.status_code == 400


# --------------------------------------------------------------------------- the OpenAPI


@pytest.fixture(scope="module")
def openapi(local_api):
    resp = local_api.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def body_schema(openapi: dict, path: str) -> dict:
    return openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/explain/{method}", "/v1/jobs/{method}",
                                  "/v1/explain/{method}/picture"])
def test_openapi_bodies_say_what_the_routes_accept(openapi, local_api, path):
    """The JSON schema accepts a body exactly when the route does (on these cases), sized for the classifier."""
    import jsonschema

    schema = body_schema(openapi, path)
    image = digit_images(1)[0]
    b64 = base64.b64encode(png_bytes(image)).decode()
    cases = {
        "empty": {},
        "image": {"image": b64},
        "images": {"images": [b64]},
        "tensor": {"tensor": image.tolist()},
        "batch": {"tensor": digit_images(1).tolist()},
        "two kinds": {"image": b64, "tensor": image.tolist()},
        "wrong size": {"tensor": np.zeros((1, 9, 8)).tolist()},
        "wrong channels": {"tensor": np.zeros((3, 8, 8)).tolist()},
        "unknown field": {"image": b64, "colour": "red"},
    }
    if path != "/v1/predict":
        cases["target out of range"] = {"image": b64, "target": 10}
        cases["target"] = {"image": b64, "target": 3}
    url = path.replace("{method}", "gradient")
    for label, body in cases.items():
        valid = jsonschema.Draft202012Validator(schema).is_valid(body)
        status = local_api.post(url, json=body).status_code
        assert valid == (status in (200, 202)), (label, valid, status)
    assert not jsonschema.Draft202012Validator(schema).is_valid({})


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/explain/{method}", "/v1/jobs/{method}",
                                  "/v1/explain/{method}/picture"])
def test_openapi_declares_the_image_encoding_the_routes_check(openapi, local_api, path):
    """The image string is declared base64 (format, contentEncoding, pattern), and the pattern is the check: a string
    the schema accepts is never refused as "not valid base64", one it refuses always is (on every image route)."""
    import jsonschema

    schema = body_schema(openapi, path)
    image_schema = schema["properties"]["image"]
    plain = image_schema["oneOf"][0]
    assert plain["format"] == "byte" and plain["contentEncoding"] == "base64" and plain["minLength"] == 4
    assert schema["properties"]["images"]["items"] == image_schema
    png = base64.b64encode(png_bytes(digit_images(1)[0])).decode()
    strings = ["0", "AA", "AAA", "AA=", "A===", "AA=A", "AAAA====", "AA==AA==", "", "***", "AAAA\nAAAA", "data:,",
               "data:image/png;base64,0", "data:image/png", "AAAA", "AB==", "AAA=", "data:image/png;base64,AAAA",
               png, f"data:image/png;base64,{png}", png.rstrip("=")]
    url = path.replace("{method}", "gradient")
    for s in strings:
        valid = jsonschema.Draft202012Validator(schema).is_valid({"image": s})
        resp = local_api.post(url, json={"image": s})
        err = resp.json()["error"] if resp.status_code >= 400 else {}
        assert valid == (err.get("code") != "invalid_base64"), (s[:40], valid, err)
        assert jsonschema.Draft202012Validator(schema).is_valid({"images": [s]}) == valid
    assert local_api.post(url, json={"image": f"data:image/png;base64,{png}"}).status_code in (200, 202)


def test_a_checkpoints_own_default_is_what_the_page_shows(local_api, service, tmp_path):
    """FLINT's τ defaults to the checkpoint's (the job's flint.tau), and the served schema the page's form is built
    from says which value that is: no hint with another number in it."""
    from interp_ray.explainers.flint.explainer import FlintExplainer

    if "flint" not in service.explainers:
        pytest.skip(f"flint is not served by the test service: {service.skipped.get('flint')}")
    served = service.explainers["flint"]
    tau = local_api.get("/v1/methods/flint").json()["params"]["properties"]["tau"]
    assert tau["default"] == served.tau and tau["description"].endswith(f"τ ({served.tau:g})"), tau
    ten = FlintExplainer(served.flint, tau=10.0).instance_metadata()["params"]["properties"]["tau"]
    assert ten["default"] == 10.0 and "(10)" in ten["description"] and "(2)" not in ten["description"]
    assert FlintExplainer.metadata()["params"]["properties"]["tau"].get("default") is None   # the class's own


def test_openapi_sizes_come_from_the_classifier(openapi, service):
    c, h, w = service.model.input_shape
    tensor = body_schema(openapi, "/v1/predict")["properties"]["tensor"]["oneOf"][0]
    assert (tensor["minItems"], tensor["items"]["minItems"], tensor["items"]["items"]["minItems"]) == (c, h, w)
    images = body_schema(openapi, "/v1/explain/{method}")["properties"]["images"]
    assert images["maxItems"] == service.args.max_images_per_request
    assert body_schema(openapi, "/v1/jobs/{method}")["properties"]["images"]["maxItems"] == \
        service.args.max_images_per_job
    target = body_schema(openapi, "/v1/explain/{method}")["properties"]["target"]["oneOf"][0]
    assert target["maximum"] == service.model.num_classes - 1
    assert "image/png" in openapi["paths"]["/v1/explain/{method}/picture"]["post"]["responses"]["200"]["content"]


def test_docs_page_points_at_the_schema(local_api):
    resp = local_api.get("/docs")
    assert resp.status_code == 200 and "/openapi.json" in resp.text


# --------------------------------------------------------------------------- OPTIONS and Allow


def test_options_on_a_job_answers_its_methods(local_api):
    resp = local_api.options("/v1/jobs/0123abcd")
    assert resp.status_code == 204 and resp.headers["allow"] == "GET, DELETE, OPTIONS"
    resp = local_api.put("/v1/jobs/0123abcd")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, DELETE, OPTIONS"
    assert "allowed: GET, DELETE" in resp.json()["error"]["message"]
    # The same URL template with a served method's name is that method's submit URL: POST only, never a job.
    assert local_api.options("/v1/jobs/gradient").headers["allow"] == "POST, OPTIONS"
    for verb in ("GET", "DELETE", "PUT"):
        resp = local_api.request(verb, "/v1/jobs/gradient")
        assert resp.status_code == 405 and resp.headers["allow"] == "POST, OPTIONS", (verb, resp.text)
        assert "/v1/jobs/{method}; allowed: POST" in resp.json()["error"]["message"]
    # The routes themselves still answer.
    assert local_api.get("/v1/jobs/0123abcd").status_code == 404
    assert local_api.delete("/v1/jobs/0123abcd").status_code == 404
    job = local_api.post("/v1/jobs/gradient", json={"tensor": digit_images(1)[0].tolist()})
    assert job.status_code == 202
    assert local_api.get(job.headers["location"]).status_code == 200


# --------------------------------------------------------------------------- what errors may say


def test_reasons_never_show_a_server_path(serving_checkpoints, tmp_path):
    from serving.service import ExplainerService

    svc = ExplainerService({"checkpoint": serving_checkpoints["classifier"], "methods": ["flint", "cnn_inte"],
                            "explainer_checkpoints": {"flint": str(tmp_path / "nowhere" / "flint"),
                                                      "cnn_inte": str(tmp_path / "nowhere" / "cnn_inte")}})
    assert set(svc.skipped) == {"flint", "cnn_inte"}
    for name, reason in svc.skipped.items():
        assert f"explainer_checkpoints.{name}" in reason and "main job" in reason, reason
        assert str(tmp_path) not in reason and "/" not in reason.replace("1/", ""), reason


def test_redact():
    from serving.service import redact

    msg = "checkpoint /srv/app/outputs/flint/config.json does not exist; also s3://b/k/x and 1/τ and C×H×W"
    out = redact(msg, {"/srv/app/outputs/flint": "explainer_checkpoints.flint"})
    assert out == "checkpoint explainer_checkpoints.flint/config.json does not exist; also <path> and 1/τ and C×H×W"
    assert redact("no file '/tmp/x/y.json'") == "no file '<path>'"
