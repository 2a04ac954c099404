"""Steps inside one (stage, seed): each finished step's JSON result kept in the seed's workdir, so a seed restarted
after a failure (the engine reruns a seed whose file is missing) skips the trainings it already finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from interp_ray.jsonsafe import json_safe, write_json_atomic


def cached(workdir: Path, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s JSON result, kept as ``workdir/name.json`` and returned from there on a rerun."""
    path = Path(workdir) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = json_safe(compute())
    write_json_atomic(path, out)   # a step killed mid-write is recomputed, never read half-written
    return out
