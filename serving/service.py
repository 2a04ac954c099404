"""The Ray-free core of the explanation service: settings, and the service object.

``ExplainerService`` loads the classifier once, opens every registered method around it as every consumer does
(``interp_ray.session.open_session``: the explainer protocol's ``from_classifier``, and ``ActivationExtractor``
for the layers a method reads) and runs batches; what a method is (slow or not) and how its explanation looks
(``draw``) the method declares. The Serve deployments in
``serving.deployments`` are thin wrappers around it, and ``LocalBackend`` runs it in-process behind the same
interface the HTTP routes use, so the routes can be tested without a cluster.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from interp_ray.checkpoint import is_remote
from interp_ray.errors import UserError
from serving.errors import ServiceUnavailable

log = logging.getLogger("interp_ray.serving")

TOKEN_ENV = "INTERP_RAY_SERVE_TOKEN"
ROOT_ENV = "INTERP_RAY_ROOT"
PREDICT = "predict"  # the batching key of /v1/predict
UNAVAILABLE = "unavailable"  # the key of info() when the service could not be built; its value says why
# How a served model's own code reaches the replicas (docs/your_model.md, serving/serve_config.yaml).
SERVE_CODE_HINT = "ship your code with `interp-ray serve CONFIG --working-dir DIR` or runtime_env.py_modules"


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
    slow_methods: list[str] | None = Field(None, description="methods flagged for the asynchronous /v1/jobs route; "
                                                             "default: those that declare themselves slow")
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


def serve_session(name: str, classifier: Any, checkpoint: str | None = None, **options: Any):
    """Registered method ``name`` as serving runs it around ``classifier`` (a ``LoadedClassifier``), opened the way
    every consumer opens it (``interp_ray.session.open_session``); ``options`` are the config's
    ``method_options[name]``. A method that cannot be served with this configuration raises ``SkipMethod`` with the
    reason, in the config's words, with the server's paths replaced by the config keys that name them."""
    from interp_ray.explainers import get_explainer
    from interp_ray.session import open_session

    learned = get_explainer(name).learned
    if learned and not checkpoint:
        raise SkipMethod(f"{name} is learned and no checkpoint is configured "
                         f"(set explainer_checkpoints.{name} or checkpoint_dir)")
    if learned and not is_remote(checkpoint) \
            and not Path(checkpoint.removeprefix("file://"), "config.json").is_file():
        log.warning("%s: no checkpoint at %s", name, checkpoint)  # the operator's log keeps the path
        raise SkipMethod(f"{name} is learned and its checkpoint (explainer_checkpoints.{name}) has not been "
                         f"written: run the main job (python -m jobs.pipeline) first, or point "
                         f"explainer_checkpoints.{name} at a trained {name}")
    try:
        return open_session(name, classifier=classifier, checkpoint=checkpoint if learned else None, **options)
    except (UserError, NotImplementedError, OSError) as e:
        log.warning("%s cannot be built from %s: %s", name, checkpoint, e)
        raise SkipMethod(f"{name} cannot be served: "
                         f"{redact(str(e), {checkpoint: f'explainer_checkpoints.{name}'} if checkpoint else {})}"
                         ) from None


PATH_RE = re.compile(r"(?:(?:file|s3|gs)://[^\s'\"]+|(?<![\w.])/(?:[^\s'\"/]+/)+[^\s'\"]*)")


def redact(message: str, names: dict[str, str] | None = None) -> str:
    """``message`` without the server's file paths or bucket URIs: a path in ``names`` becomes its config key, any
    other becomes ``<path>``. Reasons and errors reach API clients, which have no business seeing the layout."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return PATH_RE.sub("<path>", message)


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
    return method_cls.parse_params(params)


class ExplainerService:
    """One classifier and every servable method around it; ``explain_rows`` and ``predict_rows`` run batches."""

    def __init__(self, args: ServeArgs | dict[str, Any]):
        import torch

        from interp_ray.devices import pick_device
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
        slow = self.args.slow_methods
        self.slow_methods = set(explainer_names(slow=True) if slow is None else slow)
        self.sessions: dict[str, Any] = {}  # method → interp_ray.session.ExplainSession
        self.skipped: dict[str, str] = {}
        for name in wanted:
            self._add(name)

    @property
    def explainers(self) -> dict[str, Any]:
        return {name: session.explainer for name, session in self.sessions.items()}

    def _add(self, name: str) -> None:
        try:
            self.sessions[name] = serve_session(name, self.classifier, self.args.explainer_checkpoint(name),
                                                **self.args.method_options.get(name, {}))
        except SkipMethod as e:
            self.skipped[name] = str(e)
            log.warning("not serving %s: %s", name, e)

    # ---- what the ingress needs to validate requests before they are queued

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            "model": {"name": self.classifier.config["model"]["name"], "digest": self.classifier.digest,
                      "input_shape": list(m.input_shape), "num_classes": int(m.num_classes),
                      "class_names": list(self.classifier.class_names)},
            "methods": {name: self.method_metadata(name) for name in sorted(self.sessions)},
            "skipped": dict(sorted(self.skipped.items())),
        }

    def method_metadata(self, name: str) -> dict[str, Any]:
        meta = self.sessions[name].explainer.instance_metadata()   # a checkpoint's own defaults (FLINT's τ)
        meta["slow"] = name in self.slow_methods
        meta["batching"] = self.args.batch_settings(name).model_dump()
        meta["routes"] = {"explain": f"/v1/explain/{name}", "job": f"/v1/jobs/{name}"}
        return meta

    # ---- batches

    def explain_rows(self, method: str, rows: list[Row]) -> list[Outcome]:
        """One Outcome per row. Rows are grouped by parameters (one ``explain`` call per group); when a group fails
        with a user error, its rows are retried one by one so the error lands on the row that caused it."""
        if method not in self.sessions:
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
        # explains=True: every answer says whose prediction it explains (the served classifier's or a predictor the
        # method carries), with both predictions, so a reader never mistakes one for the other.
        return self.sessions[method].explain(np.stack([r.image for r in rows]), [r.target for r in rows],
                                             rows[0].params, explains=True)

    def picture_rows(self, method: str, rows: list[Row]) -> list[Outcome]:
        """Each row explained and drawn as a PNG by the method's own ``draw`` (the one the CLI's --picture uses):
        the saliency overlay or the captioned image by default, a method's own picture where it has one."""
        from interp_ray.explainers.base import picture_png

        out = []
        for row in rows:
            o = self.explain_rows(method, [row])[0]
            if o.ok:
                try:
                    o.picture = picture_png(self.sessions[method].explainer.draw(row.image, o.explanation))
                except UserError as e:
                    o = Outcome(status=422, error=str(e))
                except Exception as e:
                    log.exception("drawing %s failed", method)
                    o = Outcome(status=500, error=f"drawing {method}'s explanation failed: {type(e).__name__}")
            out.append(o)
        return out

    def predict_rows(self, rows: list[Row]) -> list[Outcome]:
        import torch

        from interp_ray.explainers._common import eval_mode, model_device

        x = torch.from_numpy(np.stack([r.image for r in rows]).astype(np.float32)).to(model_device(self.model))
        with torch.inference_mode(), eval_mode(self.model):
            probs = torch.softmax(self.model(x).float(), 1).cpu().numpy()
        names = self.classifier.class_names
        return [Outcome(prediction={"label": int(p.argmax()), "label_name": names[int(p.argmax())] if names else None,
                                    "probabilities": p.astype(np.float32)}) for p in probs]

    def unknown_method(self, method: str) -> str:
        if method in self.skipped:
            return f"method {method!r} is registered but not served here: {self.skipped[method]}"
        return f"unknown method {method!r}; served: {', '.join(sorted(self.sessions)) or 'none'}"


class UnloadableService:
    """Stands in for ``ExplainerService`` in a replica whose classifier's model code cannot be imported: the replica
    stays up and every call answers why (503), instead of failing its constructor, which Serve retries in a loop
    that shows the client only a bare "not ready"."""

    def __init__(self, args: ServeArgs, message: str):
        self.args, self.message = args, message
        self.sessions: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}

    def info(self) -> dict[str, Any]:
        return {UNAVAILABLE: self.message}

    def predict_rows(self, rows: list[Row]) -> list[Outcome]:
        return [Outcome(status=503, error=self.message) for _ in rows]

    def unknown_method(self, method: str) -> str:
        return self.message


def open_service(args: ServeArgs | dict[str, Any]) -> ExplainerService | UnloadableService:
    """The service of a replica; an ``UnloadableService`` saying which model spec could not be imported (one line,
    with the fix) when the checkpoint names a ``module:callable`` whose module did not reach this process."""
    from interp_ray.models.spec import ModelImportError

    try:
        return ExplainerService(args)
    except ModelImportError as e:
        log.error("cannot build the classifier: %s", e)   # the operator's log keeps the full message
        return UnloadableService(load_args(args), f"model spec {e.spec!r} of the classifier checkpoint could not be "
                                                  f"imported on this replica ({redact(e.reason)}); {SERVE_CODE_HINT}")


def checked_info(info: dict[str, Any]) -> dict[str, Any]:
    """A service's info, or ``ServiceUnavailable`` with the reason when it could not be built (every route asks for
    the info first, so health and the explain routes all answer 503 with that one line)."""
    if UNAVAILABLE in info:
        # Not healed by waiting: only a redeploy with the code shipped fixes it.
        raise ServiceUnavailable(info[UNAVAILABLE], retry_after_s=30, code="model_not_importable")
    return info


def _groups(rows: list[Row]) -> list[list[int]]:
    """Row indices grouped by identical parameters, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.params_key, []).append(i)
    return list(groups.values())


class LocalBackend:
    """The service in-process, behind the interface the routes call (``serving.api.Backend``): no Ray needed.

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
            self._info = checked_info(self.service.info())
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
