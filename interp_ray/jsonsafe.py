"""The one JSON sanitiser: what explanations, manifests, reports and HTTP bodies hold is made of numpy values that
``json`` cannot write, so every writer goes through ``json_safe`` (and identities that are hashed through
``json_round_trip``, so a value recomputed in memory compares equal to the one read back from disk)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with numpy arrays as nested lists, numpy scalars as Python numbers, tuples as lists and mapping keys
    as strings; anything else is returned as it is."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_round_trip(value: Any) -> Any:
    """``value`` as it reads back after ``json.dumps`` / ``json.loads`` (objects json cannot write become their
    ``str``): the form in which identities are hashed and compared."""
    return json.loads(json.dumps(json_safe(value), default=str, sort_keys=True))


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON has no NaN; a loss of an optimisation
    stage that ran 0 steps is one)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, value: Any, *, indent: int | None = None,
                      default: Callable[[Any], Any] | None = None) -> None:
    """``value`` as JSON at ``path``, written beside it and renamed over it: a writer killed midway leaves the old file
    or the whole new one, never half of one. The temporary name is hidden and per process, so two writers of one path
    never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=indent, default=default))
    tmp.replace(path)
