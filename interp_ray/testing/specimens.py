"""The small classifiers specimens explain: a random-weight digits CNN and a scenes CNN (plumbing only: not trained
to any quality), and each method's specimen over the one it names (``Explainer.specimen_classifier``).

A method provides its own specimen (the classmethod ``Explainer.specimen(path, classifier)``, defined in the
method's folder); a method with no learned state needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The digits specimen normalises its input (mean/std applied in the model's forward, as an imported model's are), so
# the conformance suite's cross-path equality (in process, CLI, Ray Data, HTTP) is checked on a normalised model: a
# path that fed it un-normalised pixels, or normalised them twice, would give other explanations than the rest.
DIGITS_OPTS = {"num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.3], "std": [0.4]}
DIGITS_CLASSES = [str(i) for i in range(10)]
SCENES_OPTS = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}


def save_random_classifier(path: str | Path, model_name: str, options: dict, class_names: list[str],
                           data: str | None, *, seed: int):
    """A random-weight ``model_name`` classifier checkpoint at ``path`` (seeded; ``data``: the dataset it records,
    if any); returns the model."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, **options)
    save_classifier(path, model, model_name=model_name, model_options=options, class_names=class_names,
                    data={"name": data} if data else None)
    return model


def save_digits_classifier(path: str | Path):
    """A random-weight digits CNN on 8×8 images (seed 0); returns the model."""
    return save_random_classifier(path, "digits_cnn", DIGITS_OPTS, DIGITS_CLASSES, "digits", seed=0)


def save_scenes_classifier(path: str | Path):
    """A random-weight scenes CNN on 32×32 images (seed 3): its ``gap`` layer gives 32-value frame features."""
    from interp_ray.data.scenes import CLASS_NAMES as SCENE_CLASSES

    return save_random_classifier(path, "scenes_cnn", SCENES_OPTS, SCENE_CLASSES, "scenes", seed=3)


# What ``Explainer.specimen_classifier`` may name, and how to make it.
CLASSIFIERS: dict[str, Callable[[str | Path], object]] = {"digits": save_digits_classifier,
                                                            "scenes": save_scenes_classifier}


def make_specimen(name: str, path: str | Path, classifier: str | Path) -> str | None:
    """Registered method ``name``'s specimen at ``path`` over the classifier checkpoint ``classifier`` (None: the
    method needs no state)."""
    from interp_ray.explainers import get_explainer

    return get_explainer(name).specimen(path, classifier)
