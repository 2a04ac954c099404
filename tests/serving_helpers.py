"""Helpers shared by the serving tests and the conformance suite (images as a client sends them, the in-process
HTTP client, the library-side explanation)."""

from __future__ import annotations

import io

import numpy as np


def digit_images(n: int = 4) -> np.ndarray:
    """Real 8×8 digits scaled to [0, 1], N×1×8×8 float32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n, None] / 16.0).astype(np.float32)


def png_bytes(image: np.ndarray) -> bytes:
    """A C×H×W float image in [0, 1] as PNG (8-bit: what a client would upload)."""
    from PIL import Image

    arr = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def asgi_client(app, **kwargs):
    """Starlette's TestClient, without its deprecation warning about httpx (the dev dependency we have)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from starlette.testclient import TestClient
    return TestClient(app, **kwargs)


def local_app(service, token: str = ""):
    """The service's FastAPI app over the in-process backend and job runner (no Ray)."""
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    return make_api(backend, JobRunner(backend=backend), service.args, token=token)


def library_explanation(service, method: str, image: np.ndarray, target: int = -1, params=None) -> dict:
    """What a user of the library gets: the method built by the protocol (``build_explainer``), its layers' columns
    computed by an ``ActivationExtractor`` of its own over the checkpoint, as the activation store has them, and the
    batch the method asks for (``batch_from``), explained once."""
    from interp_ray.activations import ActivationExtractor
    from interp_ray.explainers.base import build_explainer
    from interp_ray.session import ExplainSession

    explainer = build_explainer(method, service.classifier, service.args.explainer_checkpoint(method))
    layers = explainer.layers()
    cols = ActivationExtractor(service.args.classifier_path(), layers)({"image": image[None]}) if layers else None
    batch = explainer.batch_from(image[None], np.array([target]), cols)
    out = explainer.explain(batch, params or {})[0]
    # serving says whose prediction each answer explains, as the library's session does when asked
    out.explains = ExplainSession(explainer, service.classifier).whose_predictions(image[None])[0]
    return out.to_json()
