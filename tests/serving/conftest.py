"""Fixtures of the serving tests: checkpoints (a random-weight digits CNN, and a FLINT over it), the service built
once per session, and an in-process FastAPI client around it (no Ray)."""

from __future__ import annotations

import pytest
from serving_helpers import asgi_client, local_app

from interp_ray.testing.specimens import make_specimen, save_digits_classifier, save_scenes_classifier


@pytest.fixture(scope="session")
def serving_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"checkpoint_dir", "classifier", "flint"}: the layout ServeArgs reads by default, with a checkpoint
    for every learned method that explains images (FLINT, InterpNET, CNN-INTE, VIBI)."""
    root = tmp_path_factory.mktemp("serving_ckpts")
    save_digits_classifier(root / "digits")
    for method in ("flint", "interpnet", "cnn_inte", "vibi"):
        make_specimen(method, root / f"digits_{method}", root / "digits")
    return {"checkpoint_dir": str(root), "classifier": str(root / "digits"),
            "flint": str(root / "digits_flint")}


@pytest.fixture(scope="session")
def serving_args(serving_checkpoints) -> dict:
    return {"checkpoint_dir": serving_checkpoints["checkpoint_dir"], "classifier": "digits",
            "token_env": "INTERP_RAY_TEST_UNSET_TOKEN", "max_body_bytes": 200_000, "max_images_per_request": 8}


@pytest.fixture(scope="session")
def service(serving_args):
    from serving.service import ExplainerService

    return ExplainerService(serving_args)


@pytest.fixture(scope="session")
def local_api(service):
    """A TestClient over the app with the in-process backend and job runner (no Ray, no token)."""
    with asgi_client(local_app(service)) as client:
        yield client



@pytest.fixture(scope="session")
def semantic_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"checkpoint_dir", "classifier", "semantic"}: a small scenes classifier and a captioner over its ``gap``."""
    root = tmp_path_factory.mktemp("semantic_ckpts")
    save_scenes_classifier(root / "scenes")
    make_specimen("semantic", root / "scenes_semantic", root / "scenes")
    return {"checkpoint_dir": str(root), "classifier": str(root / "scenes"), "semantic": str(root / "scenes_semantic")}


@pytest.fixture(scope="session")
def flint_variants(serving_checkpoints, tmp_path_factory) -> dict[str, str]:
    """Two FLINT checkpoints over the test classifier, beside the specimen (``serving_checkpoints["flint"]``: no
    stored pictures, as a checkpoint written before they were stored):
    ``stored``: its pictures grown and stored (cheap AM+PI settings; MAS drawn from real digits; a pair of class 0
    with the attribute most relevant to the first digit explained as class 0), its predictor the classifier's
    weights (post hoc);
    ``own``: its predictor f perturbed, so it explains a predictor that is not the served classifier (joint)."""
    import numpy as np
    import torch
    from serving_helpers import digit_images

    from interp_ray.explainers.flint.config import AMSection
    from interp_ray.explainers.flint.explainer import FlintExplainer

    root = tmp_path_factory.mktemp("flint_variants")
    stored = FlintExplainer.load(serving_checkpoints["flint"])
    digits = digit_images(3 * stored.flint.n_attributes + 6)
    stored.mas_images = digits[:3 * stored.flint.n_attributes].reshape(stored.flint.n_attributes, 3, 1, 8, 8)
    stored.config["mode"] = "posthoc"
    # a pair of the first image's explanation as class 0 (its most relevant attribute), and another pair
    e = stored.explain({"image": digits[:1], "target": np.array([0])}, {"tau": 1000})[0]
    j = stored.attribute_names.index(next(iter(e.attributes)))
    stored.grow_pictures([(0, j, digits[-6:-3]), (1, (j + 1) % stored.flint.n_attributes, digits[-3:])],
                         AMSection(rounds=1, n_iter=3))
    stored.save(str(root / "stored"))
    own = FlintExplainer.load(serving_checkpoints["flint"])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in own.flint.predictor.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    own.save(str(root / "own"))
    assert np.asarray(stored.pictures.pair_am).shape == (2, 3, 1, 8, 8)
    return {"stored": str(root / "stored"), "own": str(root / "own")}


@pytest.fixture(scope="session")
def flint_services(serving_args, serving_checkpoints, flint_variants) -> dict:
    """A service serving only FLINT, for each checkpoint: the specimen ("old") and the two variants."""
    from serving.service import ExplainerService

    paths = {"old": serving_checkpoints["flint"], **flint_variants}
    return {name: ExplainerService({**serving_args, "methods": ["flint"], "explainer_checkpoints": {"flint": path}})
            for name, path in paths.items()}


@pytest.fixture(scope="session")
def semantic_service(semantic_checkpoints):
    """A service of the captioner alone, over its scenes classifier."""
    from serving.service import ExplainerService

    return ExplainerService({"checkpoint_dir": semantic_checkpoints["checkpoint_dir"], "classifier": "scenes",
                             "methods": ["semantic"], "token_env": "INTERP_RAY_TEST_UNSET_TOKEN"})


@pytest.fixture(scope="session")
def scene_frame_png() -> bytes:
    """A scenes test frame (3×32×32) as the PNG a client uploads."""
    import numpy as np
    from serving_helpers import png_bytes

    from interp_ray.data.scenes import load_scene_clips

    return png_bytes(load_scene_clips("test", n=1, frames=1, size=32).get_batch(np.arange(1))["clip"][0, 0])
