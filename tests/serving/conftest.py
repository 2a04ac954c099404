"""Fixtures of the serving tests: checkpoints (a random-weight digits CNN, and a FLINT over it), the service built
once per session, and an in-process FastAPI client around it (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import asgi_client

OPTS = {"num_classes": 10, "in_channels": 1, "image_size": 8}
CLASS_NAMES = [str(i) for i in range(10)]


def save_digits_classifier(path: Path):
    """The same checkpoint as the suite's ``digits_checkpoint`` fixture, made once for the session."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    torch.manual_seed(0)
    model = build_model("digits_cnn", **OPTS)
    save_classifier(path, model, model_name="digits_cnn", model_options=OPTS, class_names=CLASS_NAMES,
                    data={"name": "digits"})
    return model


def save_random_flint(path: Path, predictor) -> bool:
    """A random-weight FLINT over ``predictor`` (plumbing only); False when the FLINT module is not there."""
    try:
        from interp_ray.explainers import flint as fl
    except ImportError:
        return False
    import torch

    torch.manual_seed(1)
    spec = fl.resolved_flint_spec(predictor, fl.FlintSection())
    model = fl.build_flint(predictor, spec)
    fl.save_flint(path, model, spec=spec, predictor_spec={"name": "digits_cnn", "options": OPTS},
                  class_names=CLASS_NAMES, mode="joint")
    return True


def digits_activations(classifier: Path, layer: str, rows: int = 120):
    """The first ``rows`` digits training images through the classifier: an InterpNET activation table."""
    import numpy as np

    from interp_ray.activations import ActivationExtractor
    from interp_ray.data import load_dataset
    from interp_ray.explainers.interpnet import collect

    ds = load_dataset("digits", "train")
    return collect(ActivationExtractor(str(classifier), [layer])(ds.get_batch(np.arange(rows))), [layer])


def save_small_interpnet(path: Path, classifier: Path) -> None:
    """A small InterpNET (1 epoch) over the classifier's mean-pooled ``relu2``, on one sentence per digit."""
    import torch

    from interp_ray.explainers.interpnet import ClassifierTrainConfig, DecoderTrainConfig, InterpNET

    table = digits_activations(classifier, "relu2")
    table.sentences = [[f"this is a {CLASS_NAMES[int(c)]} ."] for c in table.labels]
    torch.manual_seed(2)
    ex = InterpNET({"feature_layer": "relu2", "variant": "interpnet_1", "hidden": [16], "embed_dim": 8,
                    "hidden_dim": 16, "max_len": 8}, class_names=CLASS_NAMES)
    ex.fit(table, table, classifier_train=ClassifierTrainConfig(epochs=1), train=DecoderTrainConfig(epochs=1))
    ex.save(str(path))


def save_small_cnn_inte(path: Path, classifier: Path) -> None:
    """A small CNN-INTE over the classifier's ``relu3`` (the batch dict the activation store would hold)."""
    import numpy as np

    from interp_ray.activations import ActivationExtractor
    from interp_ray.data import load_dataset
    from interp_ray.explainers.cnn_inte import CnnInte

    batch = load_dataset("digits", "train").get_batch(np.arange(120))
    batch = {**ActivationExtractor(classifier, ["relu3"])(batch), "image": batch["image"]}
    CnnInte({"layer": "relu3", "k1": 3, "k2": 2, "n_estimators": 5}, class_names=CLASS_NAMES).fit(batch).save(str(path))


@pytest.fixture(scope="session")
def serving_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"checkpoint_dir", "classifier", "flint" (or None)}: the layout ServeArgs reads by default, with a checkpoint
    for every learned method that explains images (FLINT, InterpNET, CNN-INTE)."""
    root = tmp_path_factory.mktemp("serving_ckpts")
    predictor = save_digits_classifier(root / "digits")
    has_flint = save_random_flint(root / "digits_flint", predictor)
    save_small_interpnet(root / "digits_interpnet", root / "digits")
    save_small_cnn_inte(root / "digits_cnn_inte", root / "digits")
    return {"checkpoint_dir": str(root), "classifier": str(root / "digits"),
            "flint": str(root / "digits_flint") if has_flint else None}


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
    from serving.app import make_api
    from serving.jobs import JobRunner
    from serving.service import LocalBackend

    backend = LocalBackend(service)
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="")) as client:
        yield client



SCENES_OPTS = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}


def save_small_scenes_classifier(path: Path) -> None:
    """A random-weight scenes CNN on 32×32 images: its ``gap`` layer gives 32-value frame features."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.data.scenes import CLASS_NAMES as SCENE_CLASSES
    from interp_ray.models import build_model

    torch.manual_seed(3)
    model = build_model("scenes_cnn", **SCENES_OPTS)
    save_classifier(path, model, model_name="scenes_cnn", model_options=SCENES_OPTS,
                    class_names=SCENE_CLASSES, data={"name": "scenes"})


def save_small_semantic(path: Path, classifier: Path) -> None:
    """A small Dong et al. captioner (1 epoch) on 2-frame scene clips, with frame features from the classifier's
    ``gap`` layer, recorded in its checkpoint as ``jobs.train_explainer`` records it."""
    import torch

    from interp_ray.activations import clip_items
    from interp_ray.data.scenes import load_scene_videos
    from interp_ray.explainers.semantic import LabelConfig, SemanticExplainer, SemanticTrainConfig

    clips = load_scene_videos("train", n=40, frames=2, size=32, sentences_per_image=2)
    items = clip_items(str(classifier), clips, "gap")
    torch.manual_seed(4)
    ex = SemanticExplainer({"enc_hidden": 8, "interp_dim": 8, "word_dim": 8, "dec_hidden": 16, "att_dim": 8,
                            "max_len": 10})
    ex.fit(items, settings=SemanticTrainConfig(epochs=1, batch_size=16))
    ex.info = {"data": {"source": "scenes", "layer": "gap", "frames": 2, "size": 32}}
    ex.label(items, cfg=LabelConfig(top_n=5, margin=0.0))
    ex.save(str(path))


@pytest.fixture(scope="session")
def semantic_checkpoints(tmp_path_factory) -> dict[str, str]:
    """{"checkpoint_dir", "classifier", "semantic"}: a small scenes classifier and a captioner over its ``gap``."""
    root = tmp_path_factory.mktemp("semantic_ckpts")
    save_small_scenes_classifier(root / "scenes")
    save_small_semantic(root / "scenes_semantic", root / "scenes")
    return {"checkpoint_dir": str(root), "classifier": str(root / "scenes"), "semantic": str(root / "scenes_semantic")}
