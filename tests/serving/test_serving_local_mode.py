"""The Serve deployments in local testing mode (no cluster): the Explainer behind a handle, the routes over it."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import asgi_client, digit_images

from serving.service import Row


@pytest.fixture(scope="module")
def explainer_handle(serving_args):
    from ray import serve

    from serving.deployments import ExplainerDeployment

    return serve.run(ExplainerDeployment.bind(serving_args), name="local_explainer", _local_testing_mode=True)


def test_handle_answers_per_row(explainer_handle, service):
    images = digit_images(4)
    responses = [explainer_handle.explain.remote("gradient", Row(image=img, target=t))
                 for img, t in zip(images, [-1, 3, -1, 9])]
    out = [r.result() for r in responses]
    assert [o.explanation.label for o in out][1::2] == [3, 9]
    direct = service.explain_rows("gradient", [Row(image=img, target=t) for img, t in zip(images, [-1, 3, -1, 9])])
    for a, b in zip(out, direct):
        np.testing.assert_allclose(a.explanation.saliency, b.explanation.saliency, atol=1e-6)
    missing = explainer_handle.explain.remote("nope", Row(image=images[0])).result()
    assert missing.status == 404
    assert explainer_handle.predict.remote(Row(image=images[0])).result().prediction["label"] in range(10)
    assert set(explainer_handle.info.remote().result()["methods"]) == set(service.explainers)


def test_routes_over_the_handle_backend(explainer_handle, serving_args):
    from serving.api import make_api
    from serving.deployments import HandleBackend
    from serving.jobs import JobRunner

    backend = HandleBackend(explainer_handle)
    with asgi_client(make_api(backend, JobRunner(backend=backend), serving_args, token="")) as client:
        body = {"tensor": digit_images(2).tolist(), "target": [1, 2]}
        resp = client.post("/v1/explain/gradcam", json=body)
        assert resp.status_code == 200, resp.text
        assert [e["label"] for e in resp.json()["explanations"]] == [1, 2]
        bad = client.post("/v1/explain/gradcam", json={**body, "target": [1, 12]})
        assert bad.status_code == 422


def test_whole_application_serves_only_its_methods_in_local_testing_mode(serving_args, service):
    """build_app wires the Ingress to its own Explainer deployment with the app's args: the API the Ingress builds
    (what its handle's ``__serve_build_asgi_app__`` returns) serves exactly ``methods`` and answers through the
    Explainer handle with the in-process service's numbers."""
    from ray import serve

    from serving.app import build_app

    handle = serve.run(build_app({**serving_args, "methods": ["gradient"]}), name="local_app",
                       _local_testing_mode=True)
    api = handle.__serve_build_asgi_app__.remote().result()
    image = digit_images(1)
    with asgi_client(api) as client:
        listed = client.get("/v1/methods")
        assert listed.status_code == 200, listed.text
        assert [m["name"] for m in listed.json()["methods"]] == ["gradient"]
        resp = client.post("/v1/explain/gradient", json={"tensor": image.tolist(), "target": [4]})
        assert resp.status_code == 200, resp.text
        (got,) = resp.json()["explanations"]
        (want,) = service.explain_rows("gradient", [Row(image=image[0], target=4)])
        assert got["label"] == 4 == want.explanation.label
        # the image and the weights shape a gradient: equal maps mean the app loaded the same checkpoint
        np.testing.assert_allclose(np.asarray(got["saliency"]), want.explanation.saliency, atol=1e-6)
        other = client.post("/v1/explain/center", json={"tensor": image.tolist()})
        assert other.status_code == 404 and "center" in other.text   # the session's service has it, this app not


@pytest.mark.parametrize("coalesce", [True, False])
def test_ingress_groups_waiting_images_into_one_explainer_call(explainer_handle, serving_args, service, coalesce):
    """Eight single-image requests at once: grouped, the Explainer receives 2 calls (the first image goes alone,
    the other seven wait for it and leave together); ungrouped, 8. The answers are the same either way."""
    import asyncio

    from serving.deployments import HandleBackend
    from serving.service import load_args

    args = load_args({**serving_args, "forwarding": {"coalesce": coalesce, "max_concurrent": 1}})
    backend = HandleBackend(explainer_handle, args)
    images, targets = digit_images(8), [-1, 3, -1, 9, 0, -1, 2, 5]

    async def eight_requests():
        return await asyncio.gather(*(backend.explain("gradient", [Row(image=img, target=t)])
                                      for img, t in zip(images, targets)))

    calls_before = explainer_handle.stats.remote().result()["calls"].get("gradient", 0)
    out = [o for (o,) in asyncio.run(eight_requests())]
    calls = explainer_handle.stats.remote().result()["calls"]["gradient"] - calls_before
    assert calls == (2 if coalesce else 8)
    direct = service.explain_rows("gradient", [Row(image=img, target=t) for img, t in zip(images, targets)])
    for a, b in zip(out, direct):
        assert a.explanation.label == b.explanation.label
        np.testing.assert_allclose(a.explanation.saliency, b.explanation.saliency, atol=1e-6)
