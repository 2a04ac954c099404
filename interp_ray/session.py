"""One method around one loaded classifier, as the CLI, serving and the Ray Data jobs run it.

``ExplainSession`` is what would otherwise be written once per consumer: build the method (``build_explainer``),
compute the activation columns it reads with ``ActivationExtractor`` (the one code path that runs a classifier for
activations), turn images into the method's batch (``Explainer.batch_from``) and explain it with validated
parameters. The same images give the same explanations whichever consumer runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    _own: Any = field(default=False, init=False, repr=False)   # own_predictor() unless it is the classifier (lazy)

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
                params: BaseModel | dict[str, Any] | None = None, *, explains: bool = False) -> list[Explanation]:
        """``explains``: also say in each explanation whose prediction it explains (``Explanation.explains``:
        one more forward pass of the classifier, and of the method's own predictor when it has one)."""
        p = self.parse_params(params)
        explanations = self.explainer.explain(self.batch(images, targets), p)
        if len(explanations) != len(images):
            raise RuntimeError(f"{self.name} returned {len(explanations)} explanations for {len(images)} images")
        if explains:
            for e, record in zip(explanations, self.whose_predictions(images)):
                e.explains = record
        return explanations

    def own_predictor(self) -> Any:
        """The method's own predictor (``Explainer.own_predictor``), or None when it has none or when its weights are
        the classifier's (post hoc FLINT carries a frozen copy): then it explains the classifier's predictions."""
        if self._own is False:
            own = self.explainer.own_predictor()
            if own is not None and self.classifier is not None and _same_weights(own.model, self.classifier.model):
                own = None
            self._own = own
        return self._own

    def whose_predictions(self, images: np.ndarray) -> list[dict[str, Any] | None]:
        """Per image, whose prediction the method explains (``Explanation.explains``): the classifier's, or its own
        predictor's with the classifier's beside it and whether the two agree."""
        own = self.own_predictor()
        served = self.classifier.model if self.classifier is not None else None
        if own is None and served is None:
            return [None] * len(images)
        served_names = list(self.classifier.class_names or []) if self.classifier is not None else []
        mine = _probabilities(own.model, images) if own is not None else None
        theirs = _probabilities(served, images) if served is not None else None
        out = []
        for i in range(len(images)):
            if own is None:
                rec = {"model": "classifier", "about": "the served classifier", **_top(theirs[i], served_names),
                       "agrees": True}
                rec.update({f"classifier_{k}": v for k, v in _top(theirs[i], served_names).items()})
            else:
                rec = {"model": "own", "about": own.about,
                       **_top(mine[i], list(own.class_names or served_names))}
                if theirs is not None:
                    rec.update({f"classifier_{k}": v for k, v in _top(theirs[i], served_names).items()})
                    rec["agrees"] = rec["label"] == rec["classifier_label"]
                else:
                    rec["agrees"] = None   # no classifier given: nothing to compare with
            out.append(rec)
        return out


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


def _probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    import torch

    from interp_ray.explainers._common import eval_mode, model_device

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(model_device(model))
    with torch.inference_mode(), eval_mode(model):
        return torch.softmax(model(x).float(), 1).cpu().numpy()


def _top(p: np.ndarray, names: list[str]) -> dict[str, Any]:
    c = int(np.argmax(p))
    return {"label": c, "label_name": names[c] if 0 <= c < len(names) else None, "probability": float(p[c])}


def _same_weights(a: Any, b: Any) -> bool:
    """Two modules with the same state (names, shapes and values)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape
                                          and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


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
