"""The explainer protocol, the explanation record and the registry every method plugs into.

Adding a method is one folder (or one file, for a small one): subclass ``Explainer`` and decorate it with
``@register("name")`` in a subpackage or module of the ``interp_ray.explainers`` package (found by scanning the
package; a subpackage's ``__init__`` imports the module that registers), or in any installed package that names the
module under the ``interp_ray.explainers`` entry-point group. Serving (``/v1/explain/{name}``), the CLI, the jobs and
the conformance tests read the registry and construct every method the same way: ``build_explainer`` below.

The protocol declares what consumers would otherwise guess:

* how a method is built around a classifier checkpoint (``from_classifier``: ``cls(model, class_names=…)`` for
  optimisation methods, ``cls.load(checkpoint, classifier=…, device=…)`` for learned ones);
* which classifier layers it reads (``layers``), which ``ActivationExtractor`` — the one code path that runs a
  classifier for activations — computes, and how those columns become its batch (``batch_from``);
* its request parameters (``Params``, validated by ``parse_params``);
* its layer defaults for a classifier, from the classifier's layer roles (``defaults_for``; ``role_layers`` says in
  one line when the model has no layer in a role the method needs, before any work);
* whether it is slow (``slow``: served as an asynchronous job by default);
* how its explanation reads (``summary``: the CLI's text) and looks (``draw``, with its ``Drawing`` parameters:
  the CLI's ``--picture`` and serving's picture route).

The registry answers queries (``explainer_names(learned=…, produces=…, needs=…, slow=…, trains_on=…)``), so a
consumer never filters it by hand. A learned method trained from the store also subclasses ``Trainable``
(``_trainable.py``, re-exported here with ``EpochTrainer`` and ``Batch``); the default summary's text is built in
``_summary.py`` (``summary_lines``, ``explains_words``, re-exported here).
"""

from __future__ import annotations

import abc
import importlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from interp_ray.errors import UserError
# Re-exported: a learned method's training protocol and the summary's text live beside this module (issue #34).
from interp_ray.explainers._summary import explains_words, summary_lines  # noqa: F401
from interp_ray.explainers._trainable import Batch, EpochTrainer, Trainable  # noqa: F401
from interp_ray.jsonsafe import json_safe
from interp_ray.models.roles import layers_for_role
from interp_ray.registry import Registry

EXPLAINERS: Registry = Registry("explainer")
register = EXPLAINERS.register

# Third-party packages add methods under this entry-point group (``module = "pkg.my_method"``).
ENTRY_POINT_GROUP = "interp_ray.explainers"
# Modules of this package that are not methods (the protocol): not imported by the scan; neither is a private
# ``_name`` module or subpackage (helpers several methods share).
_NOT_METHODS = frozenset({"base"})


@dataclass
class Explanation:
    """One input's explanation; a method fills the fields it produces and leaves the rest ``None``.

    label:       the class the explanation is about (the prediction, or the requested target)
    sentence:    natural-language explanation (InterpNET, Dong et al.)
    saliency:    H×W float map over the input, higher = more relevant (feature inversion, Grad-CAM …)
    attributes:  attribute name → relevance (FLINT)
    path:        the route through a meta-model (CNN-INTE), e.g. {"level1": 3, "level2": 7, "votes": {...}}
    neurons:     neuron index → label (Dong et al.)
    extra:       anything else a method reports (losses, probabilities …), JSON-safe
    explains:    whose prediction is explained: "model" "classifier" or "own" (a predictor the method carries)
                 and "about" (in words), with that prediction ("label", "label_name", "probability"), the
                 classifier's ("classifier_label", …) and whether they do ("agrees"); set by ExplainSession
    """

    label: int
    label_name: str | None = None
    method: str | None = None
    sentence: str | None = None
    saliency: np.ndarray | None = None
    attributes: dict[str, float] | None = None
    path: dict[str, Any] | None = None
    neurons: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    explains: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (numpy arrays become nested lists)."""
        return json_safe(asdict(self))


@dataclass(frozen=True)
class OwnPredictor:
    """A predictor a method carries and explains (``Explainer.own_predictor``)."""

    model: Any                      # a Classifier
    about: str                      # what it is, in words: "FLINT's predictor f, trained jointly with its interpreter"
    class_names: Sequence[str] | None = None


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Explainer(abc.ABC):
    """A method that explains a classifier's predictions.

    name:     registry key and HTTP route segment.
    needs:    what ``explain`` reads from a batch: "image" (N×C×H×W float32), "activations" (layer columns of the
              activation store), "features" (clips of per-frame features: N×T×D ``features`` and N×T ``mask``),
              "model" (the classifier itself, given at construction or load).
    produces: which ``Explanation`` fields it fills.
    learned:  has state learned from data, saved with ``save`` and read back with ``load``.
    slow:     takes seconds an image (an optimisation per image): serving offers it as an asynchronous job by default.
    Params:   the per-request parameters (a pydantic model); every consumer validates them with ``parse_params``.
    Drawing:  the parameters of ``draw`` (a pydantic model), validated with ``parse_drawing``.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"image"})
    produces: ClassVar[frozenset[str]] = frozenset()
    learned: ClassVar[bool] = False
    slow: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = NoParams
    Drawing: ClassVar[type[BaseModel]] = NoParams
    # Keys of ``Explanation.extra`` the default ``summary`` leaves out (internals, not a reader's numbers).
    summary_skips: ClassVar[frozenset[str]] = frozenset()

    # -- what it reads of a classifier ---------------------------------------------------------------------------

    @classmethod
    def defaults_for(cls, classifier: Any) -> dict[str, Any]:
        """The method's own options (layer names, …) for ``classifier`` (a ``Classifier`` or a ``LoadedClassifier``)
        when the caller names none: from the classifier's layer roles (``role_layers``), or from settings the
        method keeps for a registered architecture (``Classifier.arch``) in its own folder. The method's constructor
        takes them for the options it is not given (so a layer given explicitly stays distinguishable)."""
        return {}

    @classmethod
    def role_layers(cls, classifier: Any, role: str) -> list[str]:
        """The classifier's layers in ``role`` (``interp_ray.models.roles``), or a one-line UserError saying that
        this method cannot apply to the model and why."""
        try:
            return layers_for_role(classifier_model(classifier), role)
        except UserError as e:
            raise UserError(f"{cls.name} cannot explain this model: {e}") from None

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_classifier(cls, classifier: Any, checkpoint: str | None = None, *, device: str | None = None,
                        **options: Any) -> "Explainer":
        """This method around ``classifier`` (a ``LoadedClassifier``; None for a learned method that carries its own
        predictor, FLINT): the one way every consumer builds it.

        An optimisation method is ``cls(model, class_names=…, **options)``; a learned one is read from its own
        ``checkpoint`` with ``cls.load(checkpoint, classifier=model, device=…, **options)`` (``device`` defaults to
        the classifier's). A method constructed differently overrides this.
        """
        model = classifier.model if classifier is not None else None
        if cls.learned:
            if not checkpoint:
                raise UserError(f"{cls.name} is learned: give the checkpoint it was trained into")
            return cls.load(checkpoint, classifier=model,
                            device=device or (str(_model_device(model)) if model is not None else "cpu"), **options)
        if classifier is None:
            raise UserError(f"{cls.name} explains a classifier: give the classifier checkpoint")
        return cls(model, class_names=list(classifier.class_names or []) or None, **options)

    def own_predictor(self) -> OwnPredictor | None:
        """The model whose predictions this method explains when it is not the classifier it is built around: a
        learned method that carries and explains a predictor of its own returns it, with a phrase saying what it is.
        None (this default): the method explains the classifier's predictions. ``ExplainSession`` compares the two
        (same weights count as the classifier) and says in each answer whose prediction it explains."""
        return None

    def trained_on(self) -> str | None:
        """The classifier checkpoint a learned method was trained over, when its checkpoint records one (the CLI's
        default ``--classifier``)."""
        info = getattr(self, "info", None) or {}
        return info.get("checkpoint") or (info.get("source") or {}).get("checkpoint")

    def layers(self) -> list[str]:
        """The classifier layers whose activations ``explain`` reads from its batch ("activations" / "features"
        methods); empty for methods that read the image (and run the model themselves, if they need it)."""
        return []

    def batch_from(self, images: np.ndarray, targets: np.ndarray,
                   activations: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The batch ``explain`` reads for ``images`` (N×C×H×W float32) and ``targets`` (-1 = the prediction), given
        the ``ActivationExtractor`` columns of ``layers()`` when it has any. A method whose batch is not the images
        plus those columns (a captioner of clips) overrides this."""
        batch = {"image": images, "target": np.asarray(targets, dtype=np.int64)}
        batch.update(activations or {})
        return batch

    @classmethod
    def takes_target(cls) -> bool:
        """Whether a request may name the class to explain (``target``); a method that always explains the
        prediction (a captioner of the predicted class, a meta-model's route) refuses one rather than ignore it."""
        return "target" in cls.Params.model_fields

    @classmethod
    def parse_params(cls, params: BaseModel | dict[str, Any] | None) -> BaseModel:
        """The request parameters as ``Params``; a bad one is a UserError naming each bad field."""
        return parse_params(cls.Params, params, method=getattr(cls, "name", None))

    # -- learning and persistence ---------------------------------------------------------------------------------

    def fit(self, data: Any, **kwargs: Any) -> "Explainer":
        """Learn from ``data`` (learned methods); a no-op for optimisation methods."""
        return self

    @abc.abstractmethod
    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | None = None) -> list[Explanation]:
        """One ``Explanation`` per row of ``batch``; ``batch["target"]`` (optional, -1 = predicted) picks classes."""

    def save(self, path: str) -> str:
        raise NotImplementedError(f"{self.name} has no learned state to save")

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "Explainer":
        raise NotImplementedError(f"{cls.name} has no learned state to load")

    # -- a specimen for the conformance suite (interp_ray.testing) -----------------------------------------------

    # The classifier a specimen explains: "digits" (a digits CNN) or "scenes" (a scenes CNN on 32×32 clips' frames).
    specimen_classifier: ClassVar[str] = "digits"

    @classmethod
    def specimen(cls, path: str | os.PathLike, classifier: str | os.PathLike) -> str | None:
        """A small ready-to-explain instance of this method over the classifier checkpoint ``classifier`` (of the
        kind ``specimen_classifier`` names), for the conformance suite: a learned method writes a checkpoint at
        ``path`` (plumbing only, not trained to any quality) and returns it; a method with no learned state needs
        none (None), which is this default."""
        if cls.learned:
            raise NotImplementedError(f"{cls.name} is learned: define the classmethod specimen(path, classifier) "
                                      f"that saves a small instance of it at path")
        return None

    # -- how an explanation reads and looks ----------------------------------------------------------------------

    def summary(self, explanation: Explanation) -> str:
        """The explanation as text for a reader (the CLI prints it after the image's path): a head line with the
        class, then a line per field the method filled. Methods with more to say override it."""
        return "\n".join(summary_lines(explanation, self.name, skip=self.summary_skips))

    def parse_drawing(self, drawing: BaseModel | dict[str, Any] | None) -> BaseModel:
        """The drawing parameters as ``Drawing``; a bad one is a UserError naming each bad field."""
        return parse_params(self.Drawing, drawing, method=getattr(self, "name", None))

    def draw(self, image: np.ndarray, explanation: Explanation, **drawing: Any) -> Any:
        """A picture of ``explanation`` of ``image`` (C×H×W in [0, 1]): a matplotlib Figure or PNG bytes
        (``picture_png`` turns either into bytes). By default the saliency map laid over the image, or the image
        captioned with the sentence; a method with pictures of its own overrides it."""
        from interp_ray import plots

        self.parse_drawing(drawing)
        title = f"{self.name}: class {explanation.label_name or explanation.label}"
        if explanation.saliency is not None:
            return plots.overlays_figure(image, [np.asarray(explanation.saliency)], titles=[title])
        if explanation.sentence is not None:
            return plots.captioned_figure(image, explanation.sentence, title=title)
        raise UserError(f"{self.name}'s explanation has nothing to draw")

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        return {"name": cls.name, "needs": sorted(cls.needs), "produces": sorted(cls.produces),
                "learned": cls.learned, "slow": cls.slow, "params": cls.Params.model_json_schema(),
                "drawing": cls.Drawing.model_json_schema(),
                "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""}

    def checkpoint_defaults(self) -> dict[str, Any]:
        """What this instance uses for parameters whose class default is None ("the checkpoint's"), by name."""
        return {}

    def instance_metadata(self) -> dict[str, Any]:
        """``metadata()`` with this instance's own defaults (``checkpoint_defaults``) in its parameter schema, as
        ``default`` and in the description, so a form or a reader sees the value a request without it gets."""
        meta = self.metadata()
        props = meta["params"].get("properties", {})
        for name, value in self.checkpoint_defaults().items():
            if name in props:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                props[name]["default"] = value
                props[name]["description"] = f"{props[name].get('description', name)} ({shown})"
        return meta


def picture_png(picture: Any) -> bytes:
    """What ``Explainer.draw`` returned (PNG bytes or a matplotlib Figure) as PNG bytes."""
    if isinstance(picture, (bytes, bytearray)):
        return bytes(picture)
    from interp_ray.plots import figure_png

    return figure_png(picture)


def classifier_model(classifier: Any) -> Any:
    """The ``Classifier`` of a ``LoadedClassifier`` (or the ``Classifier`` itself)."""
    from interp_ray.models import Classifier

    return classifier if isinstance(classifier, Classifier) else getattr(classifier, "model", classifier)


def check_named_layers(method: type[Explainer] | Explainer, classifier: Any, layers: Sequence[str], *,
                       field: str) -> list[str]:
    """``layers``, named by the user in ``field`` of a method's config, as module paths of ``classifier``; a name it
    does not have is one UserError line naming the field and the valid layers (``interp-ray layers`` lists them with
    their shapes), so a job refuses it before any extraction or Ray start."""
    try:
        return classifier_model(classifier).resolve_layers(list(layers))
    except UserError as e:
        raise UserError(f"{method.name}: {field}: {e}; `interp-ray layers CHECKPOINT` lists them with their shapes"
                        ) from None


def parse_params(schema: type[BaseModel], params: BaseModel | dict[str, Any] | None, *,
                 method: str | None = None) -> BaseModel:
    """Validate request parameters (a model, a dict or None) against ``schema``; a bad one is a UserError."""
    if isinstance(params, schema):
        return params
    try:
        return schema.model_validate(params.model_dump() if isinstance(params, BaseModel) else (params or {}))
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'params'}: {err['msg']}" for err in e.errors())
        raise UserError(f"invalid parameters{f' for {method}' if method else ''}: {fields}") from None


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"


# --------------------------------------------------------------------------- the registry


def load_explainer_modules() -> None:
    """Import every module that may register a method: this package's modules and subpackages (one folder per
    method), then entry-point plugins."""
    global _loaded
    if _loaded:
        return
    import pkgutil
    from importlib.metadata import entry_points

    package = importlib.import_module("interp_ray.explainers")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])
    _loaded = True


_loaded = False


def get_explainer(name: str) -> type[Explainer]:
    load_explainer_modules()
    return EXPLAINERS.get(name)


def explainer_names(*, learned: bool | None = None, slow: bool | None = None, produces: str | None = None,
                    needs: str | None = None, needs_only: Iterable[str] | None = None,
                    kind: type | None = None, trains_on: str | None = None) -> list[str]:
    """The registered methods, sorted, narrowed by what they declare: ``learned``/``slow`` (True or False),
    ``produces`` (an ``Explanation`` field it fills), ``needs`` (an input it reads), ``needs_only`` (it reads
    nothing else: ``{"image", "model"}`` for a method that runs on the classifier alone), ``kind`` (a class it
    subclasses, e.g. ``Trainable``), ``trains_on`` (what its training rows must carry: "captions");
    None leaves a criterion open."""
    return [cls.name for cls in find_explainers(learned=learned, slow=slow, produces=produces, needs=needs,
                                                needs_only=needs_only, kind=kind, trains_on=trains_on)]


def find_explainers(*, learned: bool | None = None, slow: bool | None = None, produces: str | None = None,
                    needs: str | None = None, needs_only: Iterable[str] | None = None,
                    kind: type | None = None, trains_on: str | None = None) -> list[type[Explainer]]:
    """The registered method classes ``explainer_names`` lists, in its order."""
    load_explainer_modules()
    only = None if needs_only is None else frozenset(needs_only)
    out = []
    for name in EXPLAINERS.names():
        cls = EXPLAINERS.get(name)
        if (learned is None or bool(cls.learned) == learned) and (slow is None or bool(cls.slow) == slow) \
                and (produces is None or produces in cls.produces) and (needs is None or needs in cls.needs) \
                and (only is None or cls.needs <= only) and (kind is None or issubclass(cls, kind)) \
                and (trains_on is None or trains_on in getattr(cls, "trains_on", frozenset())):
            out.append(cls)
    return out


def adopt_explainer(cls: type[Explainer]) -> None:
    """Register ``cls`` in this process when its scan did not find the name: a method the driver resolved and
    shipped to a Ray worker with the job (Ray pickles a class defined in a driver script, or a module registered
    with ``ray.cloudpickle.register_pickle_by_value``, by value), so the worker builds it by name like any other.
    A name the worker already knows keeps its own class."""
    load_explainer_modules()
    if cls.name not in EXPLAINERS:
        EXPLAINERS.register(cls.name)(cls)


# --------------------------------------------------------------------------- building one for a classifier


def build_explainer(name: str, classifier: Any, checkpoint: str | None = None, *, device: str | None = None,
                    **options: Any) -> Explainer:
    """Registered method ``name`` ready to explain ``classifier``'s inputs (a ``LoadedClassifier``, or None for a
    learned method whose classifier is found later), checked by ``check_fits`` when the classifier is given: the
    checks every consumer needs before the first request. Anything wrong is a UserError.
    """
    cls = get_explainer(name)  # UnknownNameError (a UserError) lists the valid names
    try:
        explainer = cls.from_classifier(classifier, checkpoint, device=device, **options)
    except TypeError as e:  # an option the method does not take
        raise UserError(f"{name} cannot be built with options {sorted(options)}: {e}") from None
    if classifier is not None:
        check_fits(explainer, classifier)
    return explainer


def check_fits(explainer: Explainer, classifier: Any) -> None:
    """The layers ``explainer`` reads exist in ``classifier``, and a predictor it carries takes the same inputs."""
    name, model, layers = explainer.name, classifier.model, explainer.layers()
    if layers:
        try:
            model.resolve_layers(layers)
        except UserError as e:
            raise UserError(f"{name} reads layer(s) {', '.join(layers)}, which the classifier does not have: {e}"
                            ) from None
    own = getattr(explainer, "model", None)
    if own is not None and own is not model and hasattr(own, "input_shape") \
            and tuple(own.input_shape) != tuple(model.input_shape):
        raise UserError(f"{name}'s checkpoint explains a model taking {tuple(own.input_shape)}; the classifier "
                        f"takes {tuple(model.input_shape)}")
