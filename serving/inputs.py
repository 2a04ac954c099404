"""Request bodies → checked images, targets and parameters, or an ``ApiError`` (4xx) naming the problem.

Three ways to send images, on every image route:

* ``application/json``: ``{"image": base64}``, ``{"images": [base64, …]}`` or ``{"tensor": C×H×W | N×C×H×W}``,
  plus ``target``, ``params``, ``resize`` (``serving.schemas.ExplainRequest``);
* ``multipart/form-data``: one or more ``image`` files, optional ``target``, ``params`` (JSON text), ``resize``;
* a raw image body (``image/png``, ``image/jpeg``, …, ``application/octet-stream``) with ``target``, ``params``
  (JSON text) and ``resize`` as query parameters.

Everything is checked here, before anything is queued: decodability, size, channels, finiteness, image count, target
range and the method's parameter schema. Images are decoded by ``interp_ray.data.images.decode_image``, the same
function the file-backed datasets use, so the service sees the pixels the library sees.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ValidationError

from interp_ray.data.images import decode_image
from interp_ray.errors import UserError
from serving.schemas import BASE64_BODY, DATA_URL_PREFIX, ExplainRequest, PredictRequest

RAW_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/gif",
                             "image/tiff", "image/x-portable-pixmap", "application/octet-stream"})
MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
BASE64 = re.compile(BASE64_BODY)
DATA_URL = re.compile(DATA_URL_PREFIX)


class ApiError(Exception):
    """An HTTP error with a JSON body naming the problem."""

    def __init__(self, status: int, code: str, message: str, *, detail: Any = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ModelSpec:
    """What a request is checked against: the classifier's input shape and classes."""

    input_shape: tuple[int, int, int]
    num_classes: int

    @staticmethod
    def from_info(info: Mapping[str, Any]) -> "ModelSpec":
        m = info["model"]
        return ModelSpec(tuple(int(s) for s in m["input_shape"]), int(m["num_classes"]))  # type: ignore[arg-type]


@dataclass
class Parsed:
    images: list[np.ndarray]                       # float32 C×H×W, each checked against the model
    targets: list[int]                             # one per image, -1 = predicted
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- bodies


async def parse_request(request: Any, spec: ModelSpec, *, max_images: int, explain: bool) -> Parsed:
    """Read and check an image request (a Starlette ``Request``) of any of the three kinds."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return from_json(await request.body(), spec, max_images=max_images, explain=explain)
    if ctype == "multipart/form-data":
        return await from_form(request, spec, max_images=max_images, explain=explain)
    if ctype in RAW_IMAGE_TYPES:
        q = request.query_params
        return assemble([("body", await request.body())], None, spec, max_images=max_images,
                        target=parse_target_text(q.get("target")) if explain else None,
                        params=parse_params_text(q.get("params")) if explain else {},
                        resize=parse_bool(q.get("resize"), "resize"))
    raise ApiError(415, "unsupported_media_type",
                   f"content type {ctype or '(none)'!r} is not accepted; send application/json, multipart/form-data "
                   f"or an image body ({', '.join(sorted(t for t in RAW_IMAGE_TYPES if t.startswith('image/')))})")


def from_json(body: bytes, spec: ModelSpec, *, max_images: int, explain: bool) -> Parsed:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    model: type[BaseModel] = ExplainRequest if explain else PredictRequest
    try:
        req = model.model_validate(payload)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", "; ".join(_pydantic_message(err) for err in e.errors()),
                       detail=_errors_json(e)) from None
    given = [k for k in ("image", "images", "tensor") if getattr(req, k) is not None]
    if len(given) != 1:
        raise ApiError(422, "invalid_request", "send exactly one of 'image', 'images' or 'tensor'"
                       + (f" (got {', '.join(given)})" if given else ""))
    target = getattr(req, "target", None)
    params = getattr(req, "params", {})
    if req.tensor is not None:
        return assemble([], tensor_images(req.tensor, spec), spec, max_images=max_images, target=target,
                        params=params, resize=req.resize)
    encoded = [req.image] if req.image is not None else list(req.images or [])
    blobs = [(f"images[{i}]" if req.images is not None else "image", b64decode(s, i)) for i, s in enumerate(encoded)]
    return assemble(blobs, None, spec, max_images=max_images, target=target, params=params, resize=req.resize)


async def from_form(request: Any, spec: ModelSpec, *, max_images: int, explain: bool) -> Parsed:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=16)
    except (AssertionError, ImportError):  # Starlette asserts when python-multipart is missing
        raise ApiError(415, "unsupported_media_type",
                       "multipart uploads need python-multipart on the server; send JSON or an image body") from None
    except Exception as e:  # starlette's MultiPartException and parser errors: a malformed body
        if type(e).__name__ == "BodyTooLarge":
            raise
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {e}") from None
    try:
        files = [v for k in ("image", "images") for v in form.getlist(k) if hasattr(v, "read")]
        if not files:
            raise ApiError(422, "invalid_request", "multipart body has no 'image' file field")
        blobs = [(f.filename or f"image[{i}]", await f.read()) for i, f in enumerate(files)]
        return assemble(blobs, None, spec, max_images=max_images,
                        target=parse_target_text(_text(form.get("target"))) if explain else None,
                        params=parse_params_text(_text(form.get("params"))) if explain else {},
                        resize=parse_bool(_text(form.get("resize")), "resize"))
    finally:
        await form.close()


# --------------------------------------------------------------------------- pieces


def b64decode(text: str, index: int) -> bytes:
    """An image's bytes from base64 or a data: URL, checked by the very pattern the OpenAPI publishes."""
    prefix = DATA_URL.match(text)
    payload = text[prefix.end():] if prefix else text
    if not BASE64.fullmatch(payload):
        raise ApiError(400, "invalid_base64", f"image {index} is not valid base64 (padded, at least 4 characters)")
    return base64.b64decode(payload, validate=True)


def tensor_images(tensor: list[Any], spec: ModelSpec) -> list[np.ndarray]:
    """A nested list → float32 C×H×W arrays, each checked against the model's input shape."""
    try:
        arr = np.asarray(tensor, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ApiError(422, "invalid_tensor", f"tensor is not a rectangular array of numbers ({e})") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ApiError(422, "invalid_tensor", f"tensor must be C×H×W or N×C×H×W, got shape {list(arr.shape)}")
    c, h, w = spec.input_shape
    if arr.shape[1] != c:
        raise ApiError(422, "wrong_channels", f"tensor has {arr.shape[1]} channels; the model takes {c}")
    if arr.shape[2:] != (h, w):
        raise ApiError(422, "wrong_size", f"tensor images are {arr.shape[2]}×{arr.shape[3]}; the model takes {h}×{w}")
    return list(arr)


def decode(blob: bytes, name: str, spec: ModelSpec, resize: bool) -> np.ndarray:
    c, h, w = spec.input_shape
    mode = MODE_FOR_CHANNELS.get(c)
    if mode is None:
        raise ApiError(422, "wrong_channels", f"this model takes {c}-channel input, which no image format holds; "
                                              "send a tensor")
    try:
        arr = decode_image(blob, (h, w) if resize else None, mode, name=name)
    except UserError as e:
        raise ApiError(400, "invalid_image", str(e)) from None
    if arr.shape[1:] != (h, w):
        raise ApiError(422, "wrong_size", f"{name}: image is {arr.shape[1]}×{arr.shape[2]} (H×W); the model takes "
                                          f"{h}×{w}; send resize=true to resize it")
    return arr


def assemble(blobs: list[tuple[str, bytes]], arrays: list[np.ndarray] | None, spec: ModelSpec, *, max_images: int,
             target: int | list[int] | None, params: dict[str, Any] | None, resize: bool) -> Parsed:
    count = len(arrays) if arrays is not None else len(blobs)
    if count == 0:
        raise ApiError(422, "no_images", "the request holds no image")
    if count > max_images:
        raise ApiError(422, "too_many_images", f"{count} images; at most {max_images} per request "
                                               "(send larger sets as a job: POST /v1/jobs/{method})")
    images = arrays if arrays is not None else [decode(b, n, spec, resize) for n, b in blobs]
    for i, img in enumerate(images):
        if not np.isfinite(img).all():
            raise ApiError(422, "not_finite", f"image {i} contains NaN or infinite values")
    return Parsed(images, check_targets(target, count, spec.num_classes), dict(params or {}))


def check_targets(target: int | list[int] | None, count: int, num_classes: int) -> list[int]:
    targets = [-1] * count if target is None else [target] * count if isinstance(target, int) else list(target)
    if len(targets) != count:
        raise ApiError(422, "invalid_target", f"{len(targets)} targets for {count} images; send one, or one per image")
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, int) or not -1 <= t < num_classes:
            raise ApiError(422, "target_out_of_range", f"target class {t!r} is out of range; this model has classes "
                                                       f"0..{num_classes - 1} (or -1 for the predicted class)")
    return targets


def parse_target_text(text: str | None) -> int | list[int] | None:
    if text is None or text.strip() == "":
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ApiError(422, "invalid_target", f"target must be an integer or comma-separated integers, got {text!r}") \
            from None
    return values[0] if len(values) == 1 else values


def parse_params_text(text: str | None) -> dict[str, Any]:
    if text is None or text.strip() == "":
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_params", f"params must be a JSON object: {e}") from None
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_params", "params must be a JSON object")
    return params


def parse_bool(text: str | None, name: str) -> bool:
    if text is None or text == "":
        return False
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ApiError(422, "invalid_request", f"{name} must be true or false, got {text!r}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) or value is None else None


def _pydantic_message(err: Mapping[str, Any]) -> str:
    where = ".".join(str(x) for x in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg')}"


def _errors_json(e: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
