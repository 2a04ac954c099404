"""Helpers shared by the serving tests (images as a client sends them)."""

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


def library_explanation(service, method: str, image: np.ndarray, target: int = -1, params=None) -> dict:
    """What a user of the library gets: the method built by the same adapter, called on one image, with the
    activations (for the methods that read them) from ``ActivationExtractor``, as the activation store has them."""
    from interp_ray.activations import ActivationExtractor
    from serving.service import build_explainer

    explainer = build_explainer(method, service.classifier, service.args.explainer_checkpoint(method))
    batch = {"image": image[None], "target": np.array([target])}
    if "features" in explainer.needs:  # a video captioner: the image as a one-frame clip of its frame layer
        from interp_ray.data.video_features import pool_frame_features
        from serving.service import frame_layer

        layer = frame_layer(method, explainer)
        cols = ActivationExtractor(service.args.classifier_path(), [layer])({"image": image[None]})
        batch.update(features=pool_frame_features(cols[layer])[:, None, :], mask=np.ones((1, 1), dtype=bool),
                     label=np.array([target if target >= 0 else int(cols["prediction"][0])]))
    if "activations" in explainer.needs:
        batch.update(ActivationExtractor(service.args.classifier_path())({"image": image[None]}))
    return explainer.explain(batch, params or {})[0].to_json()
