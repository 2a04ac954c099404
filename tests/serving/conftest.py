"""Fixtures of the serving tests: checkpoints (a random-weight digits CNN, and a FLINT over it), the service built
once per session, and an in-process FastAPI client around it (no Ray)."""

from __future__ import annotations

import pytest
from serving_helpers import asgi_client

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
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="")) as client:
        yield client



@pytest.fixture(scope="session")
def semantic_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"checkpoint_dir", "classifier", "semantic"}: a small scenes classifier and a captioner over its ``gap``."""
    root = tmp_path_factory.mktemp("semantic_ckpts")
    save_scenes_classifier(root / "scenes")
    make_specimen("semantic", root / "scenes_semantic", root / "scenes")
    return {"checkpoint_dir": str(root), "classifier": str(root / "scenes"), "semantic": str(root / "scenes_semantic")}
