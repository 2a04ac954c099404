"""One method around one loaded classifier, as the CLI, serving and the Ray Data jobs run it.

``ExplainSession`` is what would otherwise be written once per consumer: build the method (``build_explainer``),
compute the activation columns it reads with ``ActivationExtractor`` (the one code path that runs a classifier for
activations), turn images into the method's batch (``Explainer.batch_from``) and explain it with validated
parameters. The same images give the same explanations whichever consumer runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel

from interp_ray.errors import UserError
from interp_ray.explainers.base import Explainer, Explanation, build_explainer


@dataclass
class ExplainSession:
    explainer: Explainer
    classifier: Any                 # the LoadedClassifier whose predictions are explained (None: FLINT's own)
    extractor: Any = None           # ActivationExtractor of explainer.layers(), None when it reads none

    @classmethod
    def build(cls, name: str, classifier: Any, checkpoint: str | None = None, *, device: str | None = None,
              **options: Any) -> "ExplainSession":
        explainer = build_explainer(name, classifier, checkpoint, device=device, **options)
        return cls.around(explainer, classifier)

    @classmethod
    def around(cls, explainer: Explainer, classifier: Any) -> "ExplainSession":
        """``explainer`` with the extractor of its layers over ``classifier``, tried once on a blank image so that a
        classifier whose activations the method cannot read fails here, not on the first request."""
        from interp_ray.activations import ActivationExtractor

        layers = explainer.layers()
        if layers and classifier is None:
            raise UserError(f"{explainer.name} reads the activations of {', '.join(layers)}: give the classifier")
        extractor = ActivationExtractor.around(classifier, layers) if layers else None
        session = cls(explainer, classifier, extractor)
        if extractor is not None:
            blank = np.zeros((1, *session.model.input_shape), dtype=np.float32)
            explainer.batch_from(blank, np.array([-1]), extractor({"image": blank}))
        return session

    @property
    def name(self) -> str:
        return self.explainer.name

    @property
    def model(self) -> Any:
        """The classifier the inputs are for (its ``input_shape`` says what to feed): the served one, or the
        predictor a method carries (FLINT)."""
        return self.classifier.model if self.classifier is not None else self.explainer.model

    def parse_params(self, params: BaseModel | dict[str, Any] | None) -> BaseModel:
        return type(self.explainer).parse_params(params)

    def batch(self, images: np.ndarray, targets: Iterable[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The batch the method reads for ``images`` (N×C×H×W float32); ``targets`` -1 (or None) = the prediction."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        shape = tuple(self.model.input_shape)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise UserError(f"images have shape {tuple(images.shape)}; {self.name} explains this classifier's "
                            f"N×{'×'.join(map(str, shape))} inputs")
        targets = np.full(len(images), -1, dtype=np.int64) if targets is None \
            else np.asarray(list(targets), dtype=np.int64).reshape(-1)
        if len(targets) != len(images):
            raise UserError(f"{len(targets)} targets for {len(images)} images")
        n_classes = int(self.model.num_classes)
        bad = targets[(targets < -1) | (targets >= n_classes)]
        if bad.size:
            raise UserError(f"target class {int(bad[0])} is out of range; classes are 0..{n_classes - 1} "
                            f"(or -1 for the prediction)")
        if (targets >= 0).any() and not self.explainer.takes_target():
            raise UserError(f"{self.name} explains the classifier's prediction; it takes no target class")
        cols = self.extractor({"image": images}) if self.extractor is not None else None
        return self.explainer.batch_from(images, targets, cols)

    def explain(self, images: np.ndarray, targets: Iterable[int] | np.ndarray | None = None,
                params: BaseModel | dict[str, Any] | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        explanations = self.explainer.explain(self.batch(images, targets), p)
        if len(explanations) != len(images):
            raise RuntimeError(f"{self.name} returned {len(explanations)} explanations for {len(images)} images")
        return explanations


def open_session(name: str, *, classifier: Any = None, checkpoint: str | None = None, device: str | None = None,
                 **options: Any) -> ExplainSession:
    """Registered method ``name`` ready to explain images: the one way the CLI and serving open a method.

    ``classifier``: the classifier whose predictions are explained, a ``LoadedClassifier`` or its checkpoint (local
    or a URI). ``checkpoint``: a learned method's own checkpoint. A method that is not learned needs the classifier
    and takes no checkpoint; a learned one needs its checkpoint, and when it reads the classifier's activations and
    no classifier is given, uses the one its checkpoint records (``Explainer.trained_on``). ``options`` are the
    method's constructor options. Anything wrong is one UserError line.
    """
    from interp_ray.explainers.base import check_fits, get_explainer

    cls = get_explainer(name)  # UnknownNameError (a UserError) lists the valid names
    if not cls.learned:
        if checkpoint is not None:
            raise UserError(f"{name} is not learned and has no checkpoint of its own; it explains the classifier")
        if classifier is None:
            raise UserError(f"{name} explains a classifier: give the classifier checkpoint")
        return ExplainSession.build(name, _loaded(classifier), None, device=device, **options)
    if not checkpoint:
        raise UserError(f"{name} is learned: give the checkpoint it was trained into")
    check_checkpoint(checkpoint, "checkpoint")
    if classifier is not None:
        return ExplainSession.build(name, _loaded(classifier), checkpoint, device=device, **options)
    explainer = build_explainer(name, None, checkpoint, device=device, **options)
    loaded = None
    if explainer.layers():
        source = explainer.trained_on()
        if not source:
            raise UserError(f"{name} reads the classifier's activations and its checkpoint does not record which "
                            f"classifier: pass --classifier DIR")
        loaded = _loaded(source)
        if "model" in cls.needs:
            # a learned method that also runs the classifier itself (VIBI scores its rationale with f): built around it
            return ExplainSession.build(name, loaded, checkpoint, device=device, **options)
        check_fits(explainer, loaded)
    return ExplainSession.around(explainer, loaded)


def check_checkpoint(path: str, what: str) -> None:
    """A local checkpoint directory exists (a URI is checked when it is read)."""
    from pathlib import Path

    from interp_ray.checkpoint import CONFIG_FILE, is_remote

    if not is_remote(path) and not (Path(path.removeprefix("file://")) / CONFIG_FILE).is_file():
        raise UserError(f"{what} {path} does not exist (expected a directory holding {CONFIG_FILE})")


def _loaded(classifier: Any) -> Any:
    """A ``LoadedClassifier`` as given, or read from its checkpoint path."""
    if not isinstance(classifier, (str, bytes)) and not hasattr(classifier, "__fspath__"):
        return classifier
    from interp_ray.checkpoint import load_classifier

    path = str(classifier)
    check_checkpoint(path, "classifier checkpoint")
    return load_classifier(path)
