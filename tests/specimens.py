"""Small checkpoints of every kind the tests explain with: a random-weight digits CNN and scenes CNN, and a small
instance of each learned method over them (plumbing only: they are not trained to any quality).

``SPECIMENS`` says, for each learned method, which classifier it explains and how to make its checkpoint; the
conformance suite (tests/explainers/test_conformance.py) builds every registered method from these, and a method
registered elsewhere (a plug-in, a test's own method) adds its entry with ``add_specimen``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def save_random_flint(path: Path, predictor) -> None:
    """A random-weight FLINT over ``predictor`` (plumbing only)."""
    import torch

    from interp_ray.explainers.flint.config import FlintSection
    from interp_ray.explainers.flint.explainer import save_flint
    from interp_ray.explainers.flint.model import build_flint, resolved_flint_spec

    torch.manual_seed(1)
    spec = resolved_flint_spec(predictor, FlintSection())
    model = build_flint(predictor, spec)
    save_flint(path, model, spec=spec, predictor_spec={"name": "digits_cnn", "options": OPTS},
               class_names=CLASS_NAMES, mode="joint")


def digits_activations(classifier: Path, layer: str, rows: int = 120):
    """The first ``rows`` digits training images through the classifier: an InterpNET activation table."""
    import numpy as np

    from interp_ray.activations import ActivationExtractor
    from interp_ray.data import load_dataset
    from interp_ray.explainers.interpnet.tables import collect

    ds = load_dataset("digits", "train")
    return collect(ActivationExtractor(str(classifier), [layer])(ds.get_batch(np.arange(rows))), [layer])


def save_small_interpnet(path: Path, classifier: Path) -> None:
    """A small InterpNET (1 epoch) over the classifier's mean-pooled ``relu2``, on one sentence per digit."""
    import torch

    from interp_ray.explainers.interpnet.config import ClassifierTrainConfig, DecoderTrainConfig
    from interp_ray.explainers.interpnet.explainer import InterpNET

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
    from interp_ray.explainers.semantic.config import LabelConfig, SemanticTrainConfig
    from interp_ray.explainers.semantic.explainer import SemanticExplainer

    clips = load_scene_videos("train", n=40, frames=2, size=32, sentences_per_image=2)
    items = clip_items(str(classifier), clips, "gap")
    torch.manual_seed(4)
    ex = SemanticExplainer({"enc_hidden": 8, "interp_dim": 8, "word_dim": 8, "dec_hidden": 16, "att_dim": 8,
                            "max_len": 10})
    ex.fit(items, settings=SemanticTrainConfig(epochs=1, batch_size=16))
    ex.info = {"data": {"source": "scenes", "layer": "gap", "frames": 2, "size": 32}}
    ex.label(items, cfg=LabelConfig(top_n=5, margin=0.0))
    ex.save(str(path))


def save_small_vibi(path: Path, classifier: Path) -> None:
    """A small VIBI (1 epoch) over the classifier, from the rows the activation store holds for it: the ``input``
    layer and the classifier's probabilities."""
    import numpy as np

    from interp_ray.activations import ActivationExtractor
    from interp_ray.data import load_dataset
    from interp_ray.explainers.vibi import VIBI
    from interp_ray.explainers.vibi.config import VibiTrainConfig

    rows = ActivationExtractor(classifier, ["input"])(load_dataset("digits", "train").get_batch(np.arange(120)))
    VIBI({"selector_width": 4, "approximator_width": 8}, class_names=CLASS_NAMES).fit(
        rows, rows, VibiTrainConfig(epochs=1, lr=2e-3, ema_decay=None)).save(str(path))


@dataclass(frozen=True)
class Specimen:
    """How to make a learned method's checkpoint: the classifier it explains ("digits" or "scenes") and a maker
    ``make(path, classifier_path)``."""

    classifier: str
    make: Callable[[Path, Path], None]


def _flint(path: Path, classifier: Path) -> None:
    from interp_ray.checkpoint import load_classifier

    save_random_flint(path, load_classifier(classifier).model)


SPECIMENS: dict[str, Specimen] = {
    "flint": Specimen("digits", _flint),
    "cnn_inte": Specimen("digits", save_small_cnn_inte),
    "interpnet": Specimen("digits", save_small_interpnet),
    "semantic": Specimen("scenes", save_small_semantic),
    "vibi": Specimen("digits", save_small_vibi),
}
CLASSIFIERS: dict[str, Callable[[Path], object]] = {"digits": save_digits_classifier,
                                                      "scenes": save_small_scenes_classifier}


def add_specimen(name: str, specimen: Specimen) -> None:
    SPECIMENS[name] = specimen
