"""The HTTP schema of the explanation service.

``ExplanationOut`` is generated from the library's ``Explanation`` dataclass (its fields, types, defaults and field
docs), so the service and the library cannot drift: a field added to ``Explanation`` appears in the API and in
/docs with no edit here. numpy arrays become nested lists of floats on the wire.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from interp_ray.explainers.base import Explanation

# --------------------------------------------------------------------------- Explanation, generated


def _wire_type(tp: Any) -> Any:
    """A dataclass field type as it travels in JSON: ndarray → nested float lists, unions and containers mapped."""
    if tp is np.ndarray:
        return list[list[float]]  # saliency: an H×W map
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_wire_type(a) for a in args)]  # type: ignore[return-value]
    if origin in (list, tuple) and args:
        return list[_wire_type(args[0])]  # type: ignore[misc]
    if origin is dict and len(args) == 2:
        return dict[args[0], _wire_type(args[1])]  # type: ignore[misc]
    return tp


def _field_docs(cls: type) -> dict[str, str]:
    """``name: text`` lines of a docstring (the convention ``Explanation`` documents its fields with)."""
    docs: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        m = re.match(r"\s*(\w+):\s+(.*\S)", line)
        if m:
            docs[m[1]] = m[2]
    return docs


def _pydantic_field(f: dataclasses.Field, tp: Any, doc: str | None) -> tuple[Any, Any]:
    if f.default is not dataclasses.MISSING:
        return tp, Field(f.default, description=doc)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return tp, Field(default_factory=f.default_factory, description=doc)  # type: ignore[misc]
    return tp, Field(..., description=doc)


def explanation_model(cls: type = Explanation) -> type[BaseModel]:
    """A pydantic model with exactly the dataclass's fields (for the OpenAPI schema and response checks)."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    fields = {f.name: _pydantic_field(f, _wire_type(hints[f.name]), docs.get(f.name))
              for f in dataclasses.fields(cls)}
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    return create_model(cls.__name__, __doc__=doc, **fields)  # type: ignore[call-overload]


ExplanationOut = explanation_model()


# --------------------------------------------------------------------------- requests

IMAGE_DOC = "one image: base64 of its PNG/JPEG/… bytes, or a data: URL"
# Standard padded base64 (RFC 4648 §4) of at least one byte, written once and used twice: as the OpenAPI pattern of
# `image`/`images` and as the service's own check (serving.inputs.b64decode), so a body the published schema
# accepts is never refused as "not valid base64", and one it refuses never gets through. The syntax is common to
# ECMA-262 (JSON Schema's dialect) and Python's re.
BASE64_BODY = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)"
DATA_URL_PREFIX = "data:[^,]*,"   # a data: URL's media type and parameters; its payload is read as base64


def image_string_schema(description: str) -> dict[str, Any]:
    """The JSON schema of one encoded image: base64 text, or a data: URL whose payload is base64."""
    return {"description": description, "oneOf": [
        {"type": "string", "format": "byte", "contentEncoding": "base64", "minLength": 4,
         "pattern": f"^{BASE64_BODY}$"},
        {"type": "string", "format": "uri", "pattern": f"^{DATA_URL_PREFIX}{BASE64_BODY}$"}]}
TENSOR_DOC = "C×H×W or N×C×H×W nested lists of float32 in the model's input space (no decoding, no resizing)"


class PredictRequest(BaseModel):
    """Images to classify: exactly one of ``image``, ``images`` or ``tensor``."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description=IMAGE_DOC)
    images: list[str] | None = Field(None, description="several images, each as for `image`")
    tensor: list[Any] | None = Field(None, description=TENSOR_DOC)
    resize: bool = Field(False, description="resize images to the model's input size (else another size is a 422)")


class ExplainRequest(PredictRequest):
    """Images to explain with a method; ``params`` are checked against the method's schema (GET /v1/methods)."""

    target: int | list[int] | None = Field(
        None, description="class to explain: one for every image or one per image; -1 or absent = predicted class")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's parameters")


# --------------------------------------------------------------------------- responses


class ModelOut(BaseModel):
    name: str
    digest: str = Field(description="sha256 of the checkpoint's content")
    input_shape: list[int] = Field(description="C, H, W")
    num_classes: int
    class_names: list[str]


class ExplainResponse(BaseModel):
    method: str
    model: str = Field(description="the classifier's checkpoint digest")
    explanations: list[ExplanationOut]  # type: ignore[valid-type]


class Prediction(BaseModel):
    label: int
    label_name: str | None = None
    probabilities: list[float]


class PredictResponse(BaseModel):
    model: str = Field(description="the classifier's checkpoint digest")
    predictions: list[Prediction]


class MethodInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    needs: list[str]
    produces: list[str]
    learned: bool
    params: dict[str, Any] = Field(description="JSON schema of the method's parameters")
    doc: str
    slow: bool = Field(description="better used through POST /v1/jobs/{method}")
    batching: dict[str, Any]
    routes: dict[str, str]


class MethodsResponse(BaseModel):
    model: ModelOut
    methods: list[MethodInfo]
    skipped: dict[str, str] = Field(description="registered methods not served here, with the reason")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    methods: list[str]


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    detail: Any | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobStatus(BaseModel):
    id: str
    method: str
    status: JobState
    images: int
    done: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    url: str
    result: ExplainResponse | None = Field(None, description="once status is 'succeeded'")
    error: dict[str, Any] | None = Field(None, description="once status is 'failed': status and message")


# --------------------------------------------------------------------------- building response bodies


def explain_body(method: str, digest: str, explanations: list[Explanation]) -> dict[str, Any]:
    return {"method": method, "model": digest, "explanations": [e.to_json() for e in explanations]}


def predict_body(digest: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": digest, "predictions": [
        {**p, "probabilities": np.asarray(p["probabilities"], dtype=np.float32).tolist()} for p in predictions]}


def error_body(status: int, code: str, message: str, detail: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"status": status, "code": code, "message": message}
    if detail is not None:
        err["detail"] = detail
    return {"error": err}
