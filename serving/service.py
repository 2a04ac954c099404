"""The Ray-free core of the explanation service: settings, the one construction adapter, and the service object.

``ExplainerService`` loads the classifier once, builds every registered method through ``build_explainer`` (the
single place that knows how a method is constructed for serving) and runs batches. The Serve deployments in
``serving.deployments`` are thin wrappers around it, and ``LocalBackend`` runs it in-process behind the same
interface the HTTP routes use, so the routes can be tested without a cluster.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from interp_ray.checkpoint import is_remote
from interp_ray.errors import UserError

log = logging.getLogger("interp_ray.serving")

TOKEN_ENV = "INTERP_RAY_SERVE_TOKEN"
ROOT_ENV = "INTERP_RAY_ROOT"
DEFAULT_SLOW_METHODS = ("feature_inversion", "occlusion")
PREDICT = "predict"  # the batching key of /v1/predict


class BatchSettings(BaseModel):
    """Dynamic-batching settings of one method (``serving.batching.Batcher`` in each Explainer replica)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=1024)
    # 0 by default: under load batches fill anyway, because requests queue while the previous batch computes (one
    # batch at a time per replica), and a lone request should not wait for company that is not coming. A slow
    # method (feature inversion: ~1 s an image) can afford to wait a little.
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10)


class ForwardSettings(BaseModel):
    """How an Ingress replica hands images to the Explainer.

    A Serve handle call costs several milliseconds of CPU on each side, often more than explaining one image with a
    learned method. So an Ingress replica coalesces the images that wait for the same method into one call (at most
    the method's ``max_batch_size``, no waiting: images join while earlier calls are in flight) and keeps at most
    ``max_concurrent`` calls per method in flight. Each call then counts as one ongoing request at the Explainer, so
    its ``target_ongoing_requests`` counts forwarded batches, not images.
    """

    model_config = ConfigDict(extra="forbid")

    coalesce: bool = Field(True, description="one Explainer call per group of waiting images; false: one per image")
    max_concurrent: int = Field(4, ge=1, le=256, description="Explainer calls in flight per method and Ingress replica")


class ServeArgs(BaseModel):
    """The application's arguments (``args:`` in serve_config.yaml); unknown keys fail at deploy time."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="classifier checkpoint (local path or s3://…); default: "
                                                     "{checkpoint_dir}/{classifier}")
    checkpoint_dir: str | None = Field(None, description="a pipeline's checkpoints directory (local or s3://…)")
    classifier: str = Field("digits", description="the classifier's name under checkpoint_dir")
    explainer_checkpoints: dict[str, str] = Field(
        default_factory=dict, description="learned method → checkpoint; relative entries are under checkpoint_dir; "
                                          "default {checkpoint_dir}/{classifier}_{method}")
    methods: list[str] | None = Field(None, description="methods to serve; default: every registered method")
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                      description="method → constructor keyword arguments")
    batching: dict[str, BatchSettings] = Field(default_factory=dict,
                                               description="'default', 'predict' or a method → batch settings")
    forwarding: ForwardSettings = Field(default_factory=ForwardSettings,
                                        description="how the Ingress groups images into Explainer calls")
    slow_methods: list[str] = Field(list(DEFAULT_SLOW_METHODS),
                                    description="methods flagged for the asynchronous /v1/jobs route")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="larger request bodies get 413")
    max_images_per_request: int = Field(64, ge=1, description="images per synchronous request")
    max_images_per_job: int = Field(4096, ge=1, description="images per asynchronous job")
    token_env: str = Field(TOKEN_ENV, description="environment variable holding the bearer token; "
                                                  "unset or empty = no token required")
    device: str = Field("auto", description="'auto' (CUDA when visible), 'cpu' or 'cuda[:n]'")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per Explainer replica")
    max_jobs: int = Field(256, ge=1, description="asynchronous jobs kept (oldest finished dropped first)")
    job_ttl_s: float = Field(3600.0, gt=0, description="finished jobs are forgotten after this long")
    job_concurrency: int = Field(8, ge=1, description="images of one job in flight at once")
    root: str | None = Field(None, description=f"base of relative paths; default ${ROOT_ENV}, else the cwd")
    title: str | None = Field(None, description="what the web page at / calls this application (e.g. 'digits')")
    links: dict[str, str] = Field(default_factory=dict,
                                  description="other applications' pages the web page links to: name → URL path")

    @model_validator(mode="after")
    def _has_checkpoint(self) -> "ServeArgs":
        if not self.checkpoint and not self.checkpoint_dir:
            raise ValueError("set checkpoint (the classifier's checkpoint) or checkpoint_dir")
        return self

    def resolve(self, path: str) -> str:
        """A local relative path against ``root``; absolute paths and URIs unchanged."""
        if is_remote(path) or path.startswith("file://") or os.path.isabs(path):
            return path
        base = self.root or os.environ.get(ROOT_ENV) or os.getcwd()
        return str(Path(base) / path)

    def _under_dir(self, name: str) -> str:
        return f"{self.checkpoint_dir.rstrip('/')}/{name}"  # type: ignore[union-attr]

    def classifier_path(self) -> str:
        return self.resolve(self.checkpoint or self._under_dir(self.classifier))

    def explainer_checkpoint(self, method: str) -> str | None:
        """Where a learned method's checkpoint is, or None when none is configured."""
        given = self.explainer_checkpoints.get(method)
        if given is not None:
            if self.checkpoint_dir and not (is_remote(given) or os.path.isabs(given)):
                return self.resolve(self._under_dir(given))
            return self.resolve(given)
        return self.resolve(self._under_dir(f"{self.classifier}_{method}")) if self.checkpoint_dir else None

    def batch_settings(self, key: str) -> BatchSettings:
        return self.batching.get(key) or self.batching.get("default") or BatchSettings()


def load_args(args: ServeArgs | dict[str, Any] | None) -> ServeArgs:
    """Validate application arguments; a bad one is a UserError naming the field."""
    if isinstance(args, ServeArgs):
        return args
    try:
        return ServeArgs.model_validate(args or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "args"
        raise UserError(f"invalid serving argument {where}: {first['msg']}") from None


# --------------------------------------------------------------------------- the construction adapter


class SkipMethod(Exception):
    """A registered method that cannot be served with this configuration; the message says why."""


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_explainer(name: str, classifier: Any, checkpoint: str | None = None, **options: Any):
    """Build registered method ``name`` for serving around ``classifier`` (a ``LoadedClassifier`` or a model).

    Conventions: a ``learned`` method is ``cls.load(checkpoint, classifier=model)`` (plus ``device`` when its
    ``load`` takes one); a method that needs the model (or whose constructor takes one) is ``cls(model, …)``; any
    other is ``cls(…)``. ``class_names`` is passed when the constructor takes it; ``options`` are the config's
    ``method_options[name]``. A method that cannot be built, or whose own predictor takes other inputs than the
    served classifier, raises ``SkipMethod`` with the reason.
    """
    from interp_ray.explainers import get_explainer
    from interp_ray.explainers.saliency_utils import model_device

    cls = get_explainer(name)
    model = getattr(classifier, "model", classifier)
    class_names = getattr(classifier, "class_names", None)
    try:
        if cls.learned:
            if not checkpoint:
                raise SkipMethod(f"{name} is learned and no checkpoint is configured "
                                 f"(set explainer_checkpoints.{name} or checkpoint_dir)")
            kwargs = {"classifier": model, **options}
            if _accepts(cls.load, "device"):
                # The captioner decodes from the CPU tensors it makes of its features; the others follow the model.
                kwargs.setdefault("device", "cpu" if "features" in cls.needs else str(model_device(model)))
            explainer = cls.load(checkpoint, **kwargs)
        else:
            kwargs = dict(options)
            if class_names is not None and _accepts(cls.__init__, "class_names"):
                kwargs.setdefault("class_names", list(class_names))
            explainer = cls(model, **kwargs) if "model" in cls.needs or _accepts(cls.__init__, "model") \
                else cls(**kwargs)
    except SkipMethod:
        raise
    except (UserError, NotImplementedError, TypeError, OSError) as e:
        log.warning("%s cannot be built from %s: %s", name, checkpoint, e)  # the operator's log keeps the path
        if cls.learned and checkpoint and not is_remote(checkpoint) \
                and not Path(checkpoint.removeprefix("file://"), "config.json").is_file():
            raise SkipMethod(f"{name} is learned and its checkpoint (explainer_checkpoints.{name}) has not been "
                             f"written: run the main job (python -m jobs.pipeline) first, or point "
                             f"explainer_checkpoints.{name} at a trained {name}") from None
        raise SkipMethod(f"{name} cannot be built for serving: "
                         f"{redact(str(e), {checkpoint: f'explainer_checkpoints.{name}'} if checkpoint else {})}"
                         ) from None
    _check_same_input(name, explainer, model)
    if "features" in cls.needs:
        layer = frame_layer(name, explainer)
        try:
            model.resolve_layers([layer])
        except UserError as e:
            raise SkipMethod(f"{name} reads frame features from layer {layer!r}, which the served classifier does "
                             f"not have: {e}") from None
    if "activations" in cls.needs:
        try:  # a layer the served classifier lacks would fail every request: skip the method instead
            explainer_layers(explainer, model)
        except UserError as e:
            raise SkipMethod(f"{name} reads activations the served classifier does not have: {e}") from None
    return explainer


PATH_RE = re.compile(r"(?:(?:file|s3|gs)://[^\s'\"]+|(?<![\w.])/(?:[^\s'\"/]+/)+[^\s'\"]*)")


def redact(message: str, names: dict[str, str] | None = None) -> str:
    """``message`` without the server's file paths or bucket URIs: a path in ``names`` becomes its config key, any
    other becomes ``<path>``. Reasons and errors reach API clients, which have no business seeing the layout."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return PATH_RE.sub("<path>", message)


def _check_same_input(name: str, explainer: Any, model: Any) -> None:
    """A learned method that carries its own predictor (FLINT) must take the served classifier's inputs."""
    own = getattr(explainer, "model", None)
    if own is not None and own is not model and hasattr(own, "input_shape") \
            and tuple(own.input_shape) != tuple(model.input_shape):
        raise SkipMethod(f"{name}'s checkpoint explains a model taking {tuple(own.input_shape)}; the served "
                         f"classifier takes {tuple(model.input_shape)}")


def frame_layer(name: str, explainer: Any) -> str:
    """The classifier layer a video captioner's frame features were taken from (``data.layer`` of its training job,
    ``jobs.train_semantic``): a still image is served as a one-frame clip of that layer's pooled features."""
    data = (getattr(explainer, "info", None) or {}).get("data") or {}
    if data.get("source", "scenes") != "scenes":
        raise SkipMethod(f"{name} was trained on frame features of another CNN (data.source {data['source']!r}), "
                         f"not on the served classifier's")
    if not data.get("layer"):
        raise SkipMethod(f"{name}'s checkpoint does not record the classifier layer of its frame features "
                         f"(data.layer); train it with jobs.train_semantic")
    return str(data["layer"])


def explainer_layers(explainer: Any, model: Any) -> list[str]:
    """The classifier layers a method reads from ``batch``: the first of its ``layers`` / ``columns`` (InterpNET) /
    ``layer``, or of its ``config``'s (CNN-INTE: ``config.layer``), that names any; else the model's default layers.
    Store columns that are not layers (probabilities, prediction …) are dropped."""
    from interp_ray.activations import RESERVED_COLUMNS

    for owner in (explainer, getattr(explainer, "config", None)):
        for attr in ("layers", "columns", "layer"):
            value = getattr(owner, attr, None) if owner is not None else None
            if callable(value):
                value = value()
            if isinstance(value, str):
                value = [value]
            names = [c for c in (value or []) if c not in RESERVED_COLUMNS and c != "logits"]
            if names:
                return model.resolve_layers(names)
    return model.resolve_layers(model.default_layers)


# --------------------------------------------------------------------------- the service


@dataclass
class Outcome:
    """The answer for one image: a result, or an HTTP status and a message naming the problem."""

    explanation: Any = None          # an Explanation (explain)
    picture: bytes | None = None     # the explanation drawn as a PNG (picture)
    prediction: dict[str, Any] | None = None  # {label, label_name, probabilities} (predict)
    status: int = 200
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Row:
    """One image of a request, as it is queued for batching."""

    image: np.ndarray                 # float32 C×H×W, already checked against the model
    target: int = -1                  # -1 = the predicted class
    params: dict[str, Any] = field(default_factory=dict)  # validated against the method's Params

    @property
    def params_key(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


def params_model(method_cls: Any, params: dict[str, Any] | None) -> BaseModel:
    """Validate request parameters against a method's declared schema; a bad one is a UserError."""
    try:
        return method_cls.Params.model_validate(params or {})
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'params'}: {err['msg']}" for err in e.errors())
        raise UserError(f"invalid parameters for {method_cls.name}: {msgs}") from None


class ExplainerService:
    """One classifier and every servable method around it; ``explain_rows`` and ``predict_rows`` run batches."""

    def __init__(self, args: ServeArgs | dict[str, Any]):
        import torch

        from interp_ray.activations import pick_device
        from interp_ray.checkpoint import load_classifier
        from interp_ray.explainers import explainer_names

        self.args = load_args(args)
        if self.args.torch_threads:
            torch.set_num_threads(self.args.torch_threads)
        self.classifier = load_classifier(self.args.classifier_path(), device=pick_device(self.args.device))
        self.model = self.classifier.model
        registered = explainer_names()
        wanted = self.args.methods if self.args.methods is not None else registered
        unknown = sorted(set(wanted) - set(registered))
        if unknown:
            raise UserError(f"unknown method(s) {', '.join(unknown)} in 'methods'; registered: {', '.join(registered)}")
        self.explainers: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.frame_extractors: dict[str, Any] = {}  # video captioners: method → ActivationExtractor of its layer
        for name in wanted:
            self._add(name)

    def _add(self, name: str) -> None:
        try:
            explainer = build_explainer(name, self.classifier, self.args.explainer_checkpoint(name),
                                        **self.args.method_options.get(name, {}))
            if "features" in explainer.needs:
                self.frame_extractors[name] = self._frame_extractor(name, explainer)
            self.explainers[name] = explainer
        except SkipMethod as e:
            self.skipped[name] = str(e)
            log.warning("not serving %s: %s", name, e)

    def _frame_extractor(self, name: str, explainer: Any) -> Any:
        """The extraction path the captioner's clips went through (``interp_ray.data.video_features``), on the
        served classifier, for its frame layer; a layer of another width than the captioner's is a skip."""
        from interp_ray.activations import ActivationExtractor
        from interp_ray.explainers.saliency_utils import model_device

        layer = frame_layer(name, explainer)
        try:
            extractor = ActivationExtractor(self.args.classifier_path(), [layer],
                                            device=str(model_device(self.model)), expect_digest=self.classifier.digest)
        except (UserError, OSError) as e:
            log.warning("%s: no frame extractor: %s", name, e)
            raise SkipMethod(f"{name}'s frame features cannot be extracted: {redact(str(e))}") from None
        width = extractor.layer_shapes()[extractor.layers[0]][0]
        if width != explainer.frame_dim:
            raise SkipMethod(f"{name} was trained on {explainer.frame_dim}-value frame features; the served "
                             f"classifier's layer {layer!r} has {width} channels")
        return extractor

    # ---- what the ingress needs to validate requests before they are queued

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            "model": {"name": self.classifier.config["model"]["name"], "digest": self.classifier.digest,
                      "input_shape": list(m.input_shape), "num_classes": int(m.num_classes),
                      "class_names": list(self.classifier.class_names)},
            "methods": {name: self.method_metadata(name) for name in sorted(self.explainers)},
            "skipped": dict(sorted(self.skipped.items())),
        }

    def method_metadata(self, name: str) -> dict[str, Any]:
        meta = type(self.explainers[name]).metadata()
        meta["slow"] = name in self.args.slow_methods
        meta["batching"] = self.args.batch_settings(name).model_dump()
        meta["routes"] = {"explain": f"/v1/explain/{name}", "job": f"/v1/jobs/{name}"}
        return meta

    # ---- batches

    def explain_rows(self, method: str, rows: list[Row]) -> list[Outcome]:
        """One Outcome per row. Rows are grouped by parameters (one ``explain`` call per group); when a group fails
        with a user error, its rows are retried one by one so the error lands on the row that caused it."""
        if method not in self.explainers:
            return [Outcome(status=404, error=self.unknown_method(method)) for _ in rows]
        out: list[Outcome | None] = [None] * len(rows)
        for idx in _groups(rows):
            group = [rows[i] for i in idx]
            if len(group) == 1:
                results = [self._explain_one(method, group[0])]
            else:
                try:
                    results = [Outcome(explanation=e) for e in self._explain(method, group)]
                except Exception:  # retry row by row, so one bad row cannot fail its neighbours
                    results = [self._explain_one(method, row) for row in group]
            for i, r in zip(idx, results):
                out[i] = r
        return out  # type: ignore[return-value]

    def _explain_one(self, method: str, row: Row) -> Outcome:
        try:
            return Outcome(explanation=self._explain(method, [row])[0])
        except UserError as e:
            return Outcome(status=422, error=str(e))
        except Exception as e:  # a bug in a method must not take the replica down; the client gets a 500
            log.exception("%s failed", method)
            return Outcome(status=500, error=f"{method} failed: {type(e).__name__}")

    def _explain(self, method: str, rows: list[Row]) -> list[Any]:
        explainer = self.explainers[method]
        params = params_model(type(explainer), rows[0].params)
        batch = self.batch_for(explainer, np.stack([r.image for r in rows]), [r.target for r in rows])
        explanations = explainer.explain(batch, params)
        if len(explanations) != len(rows):
            raise RuntimeError(f"{method} returned {len(explanations)} explanations for {len(rows)} images")
        return explanations

    def batch_for(self, explainer: Any, images: np.ndarray, targets: Iterable[int]) -> dict[str, np.ndarray]:
        """The batch a method reads: images and targets, plus activation columns when it needs them."""
        batch = {"image": images.astype(np.float32, copy=False), "target": np.asarray(list(targets), dtype=np.int64)}
        if "features" in explainer.needs:
            batch.update(self.one_frame_clips(explainer.name, images, batch["target"]))
        if "activations" in explainer.needs:
            batch.update(self.activation_columns(images, explainer_layers(explainer, self.model)))
        return batch

    def one_frame_clips(self, method: str, images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Each image as a one-frame clip: ``features`` N × 1 × D (its frame feature, pooled as the captioner's
        training clips were), an all-true ``mask`` N × 1, and ``label`` (the target, else the prediction)."""
        from interp_ray.data.video_features import pool_frame_features

        extractor = self.frame_extractors[method]
        cols = extractor({"image": images})
        feats = pool_frame_features(cols[extractor.layers[0]]).astype(np.float32, copy=False)
        return {"features": feats[:, None, :], "mask": np.ones((len(images), 1), dtype=bool),
                "label": np.where(targets >= 0, targets, cols["prediction"]).astype(np.int64)}

    def activation_columns(self, images: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        """The activation store's columns for these images (as ``interp_ray.activations`` writes them)."""
        import torch

        from interp_ray.explainers.saliency_utils import eval_mode, model_device

        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(model_device(self.model))
        with torch.inference_mode(), eval_mode(self.model):
            acts = self.model.activations(x, layers, with_logits=True)
        logits = acts.pop("logits").float()
        cols = {name: t.float().cpu().numpy() for name, t in acts.items()}
        cols["prediction"] = logits.argmax(1).cpu().numpy().astype(np.int64)
        cols["probabilities"] = torch.softmax(logits, 1).cpu().numpy().astype(np.float32)
        return cols

    def picture_rows(self, method: str, rows: list[Row]) -> list[Outcome]:
        """Each row explained and drawn as a PNG by the plotting code the reports use: the saliency overlay
        (``interp_ray.plots``), FLINT's local interpretation sheet (its relevant attributes, each with the AM+PI
        picture grown from the input), CNN-INTE's route diagram, the image captioned with the sentence."""
        out = []
        for row in rows:
            o = self.explain_rows(method, [row])[0]
            if o.ok:
                try:
                    o.picture = self._picture(method, row, o.explanation)
                except UserError as e:
                    o = Outcome(status=422, error=str(e))
                except Exception as e:
                    log.exception("drawing %s failed", method)
                    o = Outcome(status=500, error=f"drawing {method}'s explanation failed: {type(e).__name__}")
            out.append(o)
        return out

    def _picture(self, method: str, row: Row, exp: Any) -> bytes:
        import tempfile

        explainer = self.explainers[method]
        name = exp.label_name or str(exp.label)
        if exp.path is not None and hasattr(explainer, "representative_images"):
            from interp_ray.explainers.cnn_inte import route_diagram

            return route_diagram(explainer, exp, row.image)
        with tempfile.TemporaryDirectory(prefix="interp-ray-picture-") as tmp:
            path = Path(tmp) / "picture.png"
            if exp.attributes is not None and hasattr(explainer, "attribute_names"):
                from interp_ray.explainers.flint_plots import write_local_sheet

                write_local_sheet(explainer, row.image, path, tau=row.params.get("tau"), target=row.target)
            elif exp.saliency is not None:
                from interp_ray.plots import save_overlay

                save_overlay(path, row.image, np.asarray(exp.saliency), title=f"{method}: class {name}")
            elif exp.sentence is not None:
                from interp_ray.plots import save_captioned

                save_captioned(path, row.image, exp.sentence, title=f"{method}: class {name}")
            else:
                raise UserError(f"{method}'s explanation has nothing to draw")
            return path.read_bytes()

    def predict_rows(self, rows: list[Row]) -> list[Outcome]:
        import torch

        from interp_ray.explainers.saliency_utils import eval_mode, model_device

        x = torch.from_numpy(np.stack([r.image for r in rows]).astype(np.float32)).to(model_device(self.model))
        with torch.inference_mode(), eval_mode(self.model):
            probs = torch.softmax(self.model(x).float(), 1).cpu().numpy()
        names = self.classifier.class_names
        return [Outcome(prediction={"label": int(p.argmax()), "label_name": names[int(p.argmax())] if names else None,
                                    "probabilities": p.astype(np.float32)}) for p in probs]

    def unknown_method(self, method: str) -> str:
        if method in self.skipped:
            return f"method {method!r} is registered but not served here: {self.skipped[method]}"
        return f"unknown method {method!r}; served: {', '.join(sorted(self.explainers)) or 'none'}"


def _groups(rows: list[Row]) -> list[list[int]]:
    """Row indices grouped by identical parameters, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.params_key, []).append(i)
    return list(groups.values())


class LocalBackend:
    """The service in-process, behind the interface the routes call (``serving.app.Backend``): no Ray needed.

    Batches run on one worker thread, as in the Explainer deployment: the event loop stays free for other requests
    and two methods never hook the model at once.
    """

    def __init__(self, service: ExplainerService):
        from concurrent.futures import ThreadPoolExecutor

        self.service = service
        self._info: dict[str, Any] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interp-ray-local")

    async def info(self, refresh: bool = False) -> dict[str, Any]:
        if self._info is None or refresh:
            self._info = self.service.info()
        return self._info

    async def explain(self, method: str, rows: list[Row]) -> list[Outcome]:
        return await self._run(self.service.explain_rows, method, rows)

    async def predict(self, rows: list[Row]) -> list[Outcome]:
        return await self._run(self.service.predict_rows, rows)

    async def picture(self, method: str, row: Row) -> Outcome:
        return (await self._run(self.service.picture_rows, method, [row]))[0]

    async def _run(self, fn: Any, *args: Any) -> list[Outcome]:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
