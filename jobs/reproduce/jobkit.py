"""What the FLINT and GFI reproduction stages share: a project job's config from its YAML file with the stage's
overrides, and per-(stage, seed) results cached in the stage's workdir so a restarted run skips finished steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from interp_ray.config import deep_merge, parse_overrides, read_yaml, validate
from interp_ray.jsonsafe import json_safe

C = TypeVar("C", bound=BaseModel)


def job_config(cls: type[C], path: str, *layers: dict[str, Any]) -> C:
    """The job's config: the file, then each layer of dotted-key overrides in turn (as ``--set`` takes them)."""
    raw = read_yaml(path)
    for layer in layers:
        raw = deep_merge(raw, parse_overrides([f"{k}={json.dumps(v)}" for k, v in (layer or {}).items()]))
    return validate(cls, raw, source=f"{path} with the reproduction stage's overrides")


def cached(workdir: Path, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s JSON result, kept as ``workdir/name.json``: a restart of the stage reuses a finished step."""
    path = workdir / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = json_safe(compute())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)   # atomic: a step killed mid-write is recomputed, never read half-written
    return out
