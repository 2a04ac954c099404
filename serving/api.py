"""The explanation service's HTTP API: the FastAPI app every Ingress replica serves (OpenAPI at /docs), built by
``make_api`` around a backend (the Explainer deployment's handle, or ``LocalBackend`` in-process).

Routes (all under /v1; every one but health needs ``Authorization: Bearer <token>`` when the token variable is set):

    GET    /v1/health                 liveness + the classifier and methods served (no token)
    GET    /v1/methods                every served method's metadata and parameter schema; skipped ones with why
    GET    /v1/methods/{method}       one method's metadata
    POST   /v1/predict                classify images
    POST   /v1/explain/{method}       explain images with a method (synchronous, batched per method)
    POST   /v1/explain/{method}/picture   one image's explanation drawn as a PNG (the reports' plotting code)
    POST   /v1/jobs/{method}          the same as an asynchronous job: 202 + id
    GET    /v1/jobs/{id}              the job's status, and its result once it has succeeded
    DELETE /v1/jobs/{id}              cancel a job
    GET    /                          the web page (static files from serving/web; no token needed to load it)
    GET    /openapi.json, /docs       the OpenAPI, with request bodies sized for the served classifier

Errors are JSON ``{"error": {"status", "code", "message"}}``: 400 undecodable body/image, 401 missing or wrong token,
404 unknown method/job/route, 413 body over ``max_body_bytes``, 415 unsupported content type, 422 a well-formed
request the model cannot take (size, channels, NaN, target class, parameters, image count), 503 overloaded (with
Retry-After). The Serve proxy answers 408 itself when ``request_timeout_s`` passes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from interp_ray.errors import UserError
from interp_ray.jsonsafe import finite
from serving import schemas
from serving.errors import JobsFull, ServiceUnavailable
from serving.inputs import ApiError, ModelSpec, parse_request
from serving.service import Row, ServeArgs, load_args, params_model

log = logging.getLogger("interp_ray.serving")

API_VERSION = "v1"
OPEN_PATHS = frozenset({f"/{API_VERSION}/health", "/"})
OPEN_PREFIXES = ("/static/",)   # the page and its files: it asks for the token itself
WEB_DIR = Path(__file__).resolve().parent / "web"
HEALTH_TIMEOUT_S = 5.0


class Backend(Protocol):
    """What the routes call: ``serving.service.LocalBackend`` in-process, ``deployments.HandleBackend`` on Serve."""

    async def info(self, refresh: bool = False) -> dict[str, Any]: ...
    async def explain(self, method: str, rows: list[Row]) -> list[Any]: ...
    async def predict(self, rows: list[Row]) -> list[Any]: ...
    async def picture(self, method: str, row: Row) -> Any: ...


class Jobs(Protocol):
    async def submit(self, method: str, rows: list[Row]) -> dict[str, Any]: ...
    async def status(self, job_id: str) -> dict[str, Any] | None: ...
    async def cancel(self, job_id: str) -> dict[str, Any] | None: ...


class BodyTooLarge(Exception):
    pass


# --------------------------------------------------------------------------- responses and errors


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # json.dumps directly: FastAPI's encoder walks every float of a saliency map and is far slower.
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/inf (e.g. the loss of an optimisation stage that ran 0 steps) is not JSON: null
        text = json.dumps(finite(body), separators=(",", ":"), allow_nan=False)
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, *, detail: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    return json_response(schemas.error_body(status, code, message, detail), status, headers)


def unavailable_response(e: ServiceUnavailable) -> Response:
    return error_response(503, e.code, str(e), headers={"Retry-After": str(max(1, round(e.retry_after_s)))})


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              408: "timeout", 413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request",
              503: "unavailable"}


def install_error_handlers(api: FastAPI) -> None:
    """Every failure becomes the JSON error body; only a bug in the service itself is a 500."""
    @api.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> Response:
        return error_response(e.status, e.code, e.message, detail=e.detail, headers=e.headers)

    @api.exception_handler(UserError)
    async def _user_error(_: Request, e: UserError) -> Response:
        return error_response(422, "invalid_request", str(e))

    @api.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, e: BodyTooLarge) -> Response:
        return error_response(413, "body_too_large", str(e))

    @api.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, e: ServiceUnavailable) -> Response:
        return unavailable_response(e)

    @api.exception_handler(JobsFull)
    async def _jobs_full(_: Request, e: JobsFull) -> Response:
        return error_response(503, "unavailable", str(e), headers={"Retry-After": "5"})

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> Response:
        errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
                  for err in e.errors()]
        message = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in errors)
        return error_response(422, "invalid_request", message, detail=errors)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        return error_response(e.status_code, HTTP_CODES.get(e.status_code, "error"), str(e.detail),
                              headers=dict(e.headers or {}))

    @api.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error ({type(e).__name__}); see the server log")


# --------------------------------------------------------------------------- middleware


class Guard:
    """Bearer token (every path but health) and the body size limit, before any route runs.

    The size is checked against Content-Length at once and against the bytes actually received (a chunked body
    has no length), so a large upload is refused without being read into memory.
    """

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int, open_paths: frozenset[str] = OPEN_PATHS):
        self.app, self.token, self.max_body_bytes, self.open_paths = app, token, max_body_bytes, open_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and not self._open(scope) and not self._authorised(headers):
            return await error_response(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer …)",
                                        headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await error_response(400, "bad_request", "invalid Content-Length")(scope, receive, send)
            if int(length) > self.max_body_bytes:
                return await self._too_large(int(length))(scope, receive, send)
        return await self.app(scope, self._counting(receive), send)

    def _open(self, scope: dict) -> bool:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # an application under a route prefix (e.g. /scenes)
            path = path[len(root):] or "/"
        return path in self.open_paths or path.startswith(OPEN_PREFIXES)

    def _authorised(self, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())  # type: ignore[union-attr]

    def _too_large(self, size: int) -> Response:
        return error_response(413, "body_too_large", f"request body of {size} bytes is over the limit of "
                                                     f"{self.max_body_bytes} bytes")

    def _counting(self, receive: Callable) -> Callable:
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
            return message

        return counted


class Timing:
    """Latency, count and errors of every request, tagged by route template and method, into ``metrics``."""

    def __init__(self, app: Any, *, metrics: Any):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def capture(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("path_params", {}).get("method", "")
            self.metrics.observe(route, method, status, (time.perf_counter() - t0) * 1000)


class NoMetrics:
    def observe(self, route: str, method: str, status: int, ms: float) -> None:
        pass


def read_token(env_name: str) -> str | None:
    token = os.environ.get(env_name, "").strip()
    return token or None


# --------------------------------------------------------------------------- the API


def body_doc(spec: ModelSpec, *, max_images: int, explain: bool) -> dict[str, Any]:
    """The request body of an image route as it is checked: JSON with exactly one of ``image``, ``images`` or
    ``tensor`` (sized for the served classifier), multipart with ``image`` files, or a raw image."""
    c, h, w = spec.input_shape
    colour = {1: "greyscale", 3: "RGB"}.get(c, f"{c}-channel")

    def exactly(n: int, items: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "minItems": n, "maxItems": n, "items": items}

    chw = exactly(c, exactly(h, exactly(w, {"type": "number"})))
    binary = {"type": "string", "format": "binary"}
    image = schemas.image_string_schema(f"{schemas.IMAGE_DOC}; {w}×{h} pixels ({colour}), other sizes only with "
                                        "resize=true")
    props: dict[str, Any] = {
        "image": image,
        "images": {"type": "array", "items": image, "minItems": 1, "maxItems": max_images},
        "tensor": {"description": f"{c}×{h}×{w} or N×{c}×{h}×{w} floats in the model's input space",
                   "oneOf": [chw, {"type": "array", "minItems": 1, "maxItems": max_images, "items": chw}]},
        "resize": {"type": "boolean", "default": False,
                   "description": f"resize images to {w}×{h} (else another size is a 422)"}}
    form: dict[str, Any] = {
        "image": {"type": "array", "items": binary, "minItems": 1, "maxItems": max_images,
                  "description": f"{'one image file' if max_images == 1 else f'1 to {max_images} image files'}, "
                                 f"{w}×{h} ({colour}) unless resize=true"},
        "resize": {"type": "boolean"}}
    if explain:
        one = {"type": "integer", "minimum": -1, "maximum": spec.num_classes - 1}
        props["target"] = {"description": "class to explain (-1 = the predicted one): one for every image or one "
                                          "per image", "oneOf": [one, {"type": "array", "items": one, "minItems": 1}]}
        props["params"] = {"type": "object", "description": "the method's parameters, checked against its JSON "
                                                            "schema (GET /v1/methods/{method} → params)"}
        form["target"] = {"type": "string", "description": "an integer, or one per image, comma-separated"}
        form["params"] = {"type": "string", "description": "the method's parameters as a JSON object"}
    body = {"type": "object", "properties": props, "additionalProperties": False,
            "oneOf": [{"required": ["image"]}, {"required": ["images"]}, {"required": ["tensor"]}]}
    raw = {**binary, "description": f"one image, {w}×{h} ({colour}); target, params, resize as query parameters"}
    return {"required": True, "content": {
        "application/json": {"schema": body},
        "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": ["image"]}},
        "image/png": {"schema": raw}, "image/jpeg": {"schema": raw}, "application/octet-stream": {"schema": raw}}}


def error_doc(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": schemas.ErrorBody, "description": HTTP_CODES.get(c, "error")} for c in codes}


def make_api(backend: Backend, jobs: Jobs, args: ServeArgs | dict[str, Any] | None = None, *,
             metrics: Any = None, token: str | None = None) -> FastAPI:
    """The FastAPI app over ``backend`` and ``jobs``; the token defaults to ``$args.token_env``."""
    cfg = load_args(args) if not isinstance(args, ServeArgs) else args
    # /openapi.json and /docs are routes of ours: the request bodies are sized from the served classifier,
    # which only the backend knows (asynchronously).
    api = FastAPI(title="interp-ray explanations", version=API_VERSION, docs_url=None, redoc_url=None,
                  openapi_url=None, description=(__doc__ or "").split("\n\n", 1)[0],
                  openapi_tags=[{"name": "service"}, {"name": "explain"}, {"name": "jobs"}])
    install_error_handlers(api)
    api.add_middleware(Guard, token=token if token is not None else read_token(cfg.token_env),
                       max_body_bytes=cfg.max_body_bytes)
    api.add_middleware(Timing, metrics=metrics or NoMetrics())  # added last = outermost: 401/413 are counted too
    routes = Routes(backend, jobs, cfg)
    routes.register(api)
    from starlette.staticfiles import StaticFiles

    api.mount("/static", StaticFiles(directory=WEB_DIR, follow_symlink=False), name="static")
    return api


class Routes:
    """The handlers; each checks its request fully before anything is queued."""

    def __init__(self, backend: Backend, jobs: Jobs, cfg: ServeArgs):
        self.backend, self.jobs, self.cfg = backend, jobs, cfg

    def register(self, api: FastAPI) -> None:
        v = f"/{API_VERSION}"
        add = api.add_api_route
        add(f"{v}/health", self.health, methods=["GET"], tags=["service"], response_model=schemas.HealthResponse,
            responses=error_doc(503), summary="Liveness; needs no token")
        add(f"{v}/methods", self.methods, methods=["GET"], tags=["service"], response_model=schemas.MethodsResponse,
            responses=error_doc(401), summary="The methods served, their metadata and parameter schemas")
        add(f"{v}/methods/{{method}}", self.method, methods=["GET"], tags=["service"],
            response_model=schemas.MethodInfo, responses=error_doc(401, 404), summary="One method's metadata")
        add(f"{v}/predict", self.predict, methods=["POST"], tags=["explain"], response_model=schemas.PredictResponse,
            responses=error_doc(400, 401, 413, 415, 422, 503), summary="Classify images")
        add(f"{v}/explain/{{method}}", self.explain, methods=["POST"], tags=["explain"],
            response_model=schemas.ExplainResponse,
            responses=error_doc(400, 401, 404, 408, 413, 415, 422, 503), summary="Explain images with a method")
        add(f"{v}/explain/{{method}}/picture", self.picture, methods=["POST"], tags=["explain"],
            response_class=Response, responses={200: {"content": {"image/png": {}},
                                                       "description": "the explanation drawn as a PNG"},
                                                  **error_doc(400, 401, 404, 408, 413, 415, 422, 503)},
            summary="Explain one image and draw it (the method's picture: a saliency overlay, a caption or its own)")
        add(f"{v}/jobs/{{method}}", self.submit, methods=["POST"], tags=["jobs"], status_code=202,
            response_model=schemas.JobStatus,
            responses=error_doc(400, 401, 404, 413, 415, 422, 503), summary="Explain images as an asynchronous job")
        add(f"{v}/jobs/{{job_id}}", self.job, methods=["GET"], tags=["jobs"], response_model=schemas.JobStatus,
            responses=error_doc(401, 404, 405), summary="A job's status, and its result once it has succeeded")
        add(f"{v}/jobs/{{job_id}}", self.cancel, methods=["DELETE"], tags=["jobs"], response_model=schemas.JobStatus,
            responses=error_doc(401, 404, 405), summary="Cancel a job")
        # Last, so the routes above match first: one URL template serves POST (a method) and GET/DELETE (a job id),
        # and Starlette would answer OPTIONS or PUT with the first route's Allow (POST) alone.
        add(f"{v}/jobs/{{job_id}}", self.job_options, methods=["OPTIONS", "PUT", "PATCH"], include_in_schema=False)
        add("/openapi.json", self.openapi, methods=["GET"], include_in_schema=False)
        add("/docs", self.docs, methods=["GET"], include_in_schema=False)
        add("/", self.page, methods=["GET"], include_in_schema=False)
        self.api = api
        self._openapi: tuple[str, dict[str, Any]] | None = None

    # ---- the page and the OpenAPI

    async def page(self, request: Request) -> Response:
        """index.html with the application's base path (its route prefix), so its relative calls reach this app."""
        html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
        base = request.scope.get("root_path", "").rstrip("/") + "/"
        meta = json.dumps({"base": base, "title": self.cfg.title, "links": self.cfg.links})
        html = html.replace("{{CONFIG}}", meta.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;"))
        return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    async def openapi(self, request: Request) -> Response:
        info = await self.info()
        if self._openapi is None or self._openapi[0] != info["model"]["digest"]:
            self._openapi = (info["model"]["digest"], self.openapi_schema(info))
        schema = dict(self._openapi[1])
        root = request.scope.get("root_path", "").rstrip("/")
        if root:
            schema["servers"] = [{"url": root}]
        return json_response(schema)

    def openapi_schema(self, info: dict[str, Any]) -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        api = self.api
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes,
                             tags=api.openapi_tags)
        spec = ModelSpec.from_info(info)
        v = f"/{API_VERSION}"
        for path, max_images, explain in ((f"{v}/predict", self.cfg.max_images_per_request, False),
                                          (f"{v}/explain/{{method}}", self.cfg.max_images_per_request, True),
                                          (f"{v}/explain/{{method}}/picture", 1, True),
                                          (f"{v}/jobs/{{method}}", self.cfg.max_images_per_job, True)):
            schema["paths"][path]["post"]["requestBody"] = body_doc(spec, max_images=max_images, explain=explain)
        return schema

    async def docs(self, request: Request) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{self.api.title} - docs")

    async def submit_url(self, segment: str) -> bool:
        """Whether /v1/jobs/<segment> is a submit URL: a served method's name, never a job (job ids are uuid hex)."""
        return segment in (await self.info())["methods"]

    async def job_allow(self, segment: str) -> str:
        """The Allow header of /v1/jobs/<segment>: POST on a method's submit URL, GET and DELETE on a job's."""
        return "POST, OPTIONS" if await self.submit_url(segment) else "GET, DELETE, OPTIONS"

    async def not_allowed(self, segment: str, verb: str) -> Response:
        allow = await self.job_allow(segment)
        template = "{method}" if allow.startswith("POST") else "{job_id}"
        return error_response(405, "method_not_allowed", f"{verb} is not allowed on /{API_VERSION}/jobs/{template}; "
                                                         f"allowed: {allow}", headers={"Allow": allow})

    async def job_options(self, job_id: str, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": await self.job_allow(job_id)})
        return await self.not_allowed(job_id, request.method)

    # ---- service

    async def info(self) -> dict[str, Any]:
        return await self.backend.info()

    async def health(self) -> Response:
        try:  # asks the Explainer each time (not the cached info): a probe must see it die
            info = await asyncio.wait_for(self.backend.info(refresh=True), HEALTH_TIMEOUT_S)
        except ServiceUnavailable as e:  # the service says why (e.g. the model's code did not reach the replica)
            return unavailable_response(e)
        except Exception as e:  # the Explainer is not reachable: not healthy, but not a crash either
            return error_response(503, "unavailable", f"explainer not ready ({type(e).__name__})",
                                  headers={"Retry-After": "1"})
        return json_response({"status": "ok", "model": info["model"]["name"], "methods": sorted(info["methods"])})

    async def methods(self) -> Response:
        info = await self.info()
        return json_response({"model": info["model"], "methods": [info["methods"][m] for m in sorted(info["methods"])],
                              "skipped": info["skipped"]})

    async def method(self, method: str) -> Response:
        return json_response(await self.served(method))

    async def served(self, method: str) -> dict[str, Any]:
        """The method's metadata; 404 naming the served methods (or why a registered one is skipped)."""
        info = await self.info()
        if method in info["methods"]:
            return info["methods"][method]
        if method in info["skipped"]:
            raise ApiError(404, "method_not_served", f"method {method!r} is not served here: {info['skipped'][method]}")
        served = ", ".join(sorted(info["methods"]))
        raise ApiError(404, "unknown_method", f"unknown method {method!r}; served: {served}")

    # ---- explain and predict

    async def read_rows(self, request: Request, method: str | None, max_images: int) -> list[Row]:
        info = await self.info()
        parsed = await parse_request(request, ModelSpec.from_info(info), max_images=max_images,
                                     explain=method is not None)
        params: dict[str, Any] = {}
        if method is not None:
            from interp_ray.explainers import get_explainer

            try:
                params = params_model(get_explainer(method), parsed.params).model_dump(mode="json")
            except UserError as e:
                raise ApiError(422, "invalid_params", str(e)) from None
        return [Row(image=img, target=t, params=params) for img, t in zip(parsed.images, parsed.targets)]

    async def predict(self, request: Request) -> Response:
        rows = await self.read_rows(request, None, self.cfg.max_images_per_request)
        outcomes = await self.backend.predict(rows)
        raise_first_error(outcomes)
        info = await self.info()
        return json_response(schemas.predict_body(info["model"]["digest"], [o.prediction for o in outcomes]))

    async def explain(self, method: str, request: Request) -> Response:
        await self.served(method)
        rows = await self.read_rows(request, method, self.cfg.max_images_per_request)
        outcomes = await self.backend.explain(method, rows)
        raise_first_error(outcomes)
        info = await self.info()
        return json_response(schemas.explain_body(method, info["model"]["digest"], [o.explanation for o in outcomes]))

    async def picture(self, method: str, request: Request) -> Response:
        await self.served(method)
        (row,) = await self.read_rows(request, method, 1)
        outcome = await self.backend.picture(method, row)
        raise_first_error([outcome])
        return Response(outcome.picture, media_type="image/png")

    # ---- jobs

    async def submit(self, method: str, request: Request) -> Response:
        await self.served(method)
        rows = await self.read_rows(request, method, self.cfg.max_images_per_job)
        job = await self.jobs.submit(method, rows)
        url = self.job_url(job["id"])
        return json_response(await self.job_body(job), 202, headers={"Location": url})

    async def job(self, job_id: str) -> Response:
        job = await self.jobs.status(job_id)
        if job is None and await self.submit_url(job_id):
            return await self.not_allowed(job_id, "GET")
        return json_response(await self.job_body(await self.found(job, job_id)))

    async def cancel(self, job_id: str) -> Response:
        job = await self.jobs.cancel(job_id)
        if job is None and await self.submit_url(job_id):
            return await self.not_allowed(job_id, "DELETE")
        return json_response(await self.job_body(await self.found(job, job_id)))

    @staticmethod
    async def found(job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
        if job is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r} (finished jobs are kept for a limited time)")
        return job

    def job_url(self, job_id: str) -> str:
        return f"/{API_VERSION}/jobs/{job_id}"

    async def job_body(self, job: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in job.items() if k != "outcomes"}
        body["url"] = self.job_url(job["id"])
        body["result"] = None
        if job.get("outcomes") is not None:
            info = await self.info()
            body["result"] = schemas.explain_body(job["method"], info["model"]["digest"],
                                                  [o.explanation for o in job["outcomes"]])
        return body


def raise_first_error(outcomes: list[Any]) -> None:
    """A request succeeds whole or fails with its first failing image's status and message."""
    for i, o in enumerate(outcomes):
        if not o.ok:
            prefix = f"image {i}: " if len(outcomes) > 1 else ""
            code = HTTP_CODES.get(o.status, "error") if o.status != 500 else "internal"
            raise ApiError(o.status, code, prefix + str(o.error))
