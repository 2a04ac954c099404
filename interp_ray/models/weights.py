"""A user's weights file into a module: local or ``s3://``, safetensors or a torch state dict, never code.

A ``.safetensors`` file is read with safetensors (it holds tensors only); anything else with
``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and plain containers. A training
checkpoint that wraps the state dict (``{"state_dict": …, "epoch": …}``) is unwrapped, and the key prefixes that
wrappers add (``module.`` from DDP/DataParallel, ``model.``/``net.`` from Lightning-style wrappers, ``_orig_mod.``
from ``torch.compile``) are stripped when that makes the keys fit. Every mismatch is one ``UserError`` line: the
first missing and unexpected keys, or the first parameter whose shape differs with both shapes.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.storage import filesystem, is_remote

PREFIXES = ("module.", "model.", "net.", "_orig_mod.")
# Keys a training checkpoint keeps its state dict under (Lightning: state_dict; common scripts: the others).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# BatchNorm's step counter: a state dict saved by an older torch lacks it, and nothing at inference reads it.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, from a local path or a URI (s3://, gs://) through ``interp_ray.storage``."""
    if not is_remote(path):
        p = Path(str(path).removeprefix("file://"))
        if not p.is_file():
            raise UserError(f"weights file {path} does not exist")
        return p.read_bytes()
    fs, inner = filesystem(path)
    try:
        with fs.open_input_file(inner) as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"weights file {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read weights file {path}: {' '.join(str(e).split())}") from None


def read_state_dict(path: str | os.PathLike, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (or of its bytes ``data``), unwrapped from a training checkpoint's dict."""
    data = read_bytes(path) if data is None else data
    if str(path).split("?")[0].endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        try:
            return dict(load_safetensors(data))
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise UserError(f"weights file {path} is not a valid safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for refused objects, RuntimeError/EOFError for a damaged file
        raise UserError(f"weights file {path} cannot be read as a state dict with weights_only=True "
                        f"({_first_line(e)}); save model.state_dict() or use safetensors") from None
    return _unwrap(obj, path)


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        keys = ", ".join(map(str, list(obj)[:6]))
        raise UserError(f"weights file {path} holds no state dict (a dict of tensors); its top-level keys: {keys}")
    raise UserError(f"weights file {path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")


def align_keys(state: dict[str, torch.Tensor], expected: set[str], depth: int = 3) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefixes stripped that make the most keys match ``expected``: every sequence of up to
    ``depth`` strips is tried (a ``module.model.`` double wrap needs two, the first of which alone matches nothing);
    on a tie the fewest strips win, so a net whose own modules are called ``model`` keeps its names."""
    best, best_hits = state, len(state.keys() & expected)
    frontier = [state]
    for _ in range(depth):
        nxt = []
        for cand in frontier:
            for prefix in PREFIXES:
                if not any(k.startswith(prefix) for k in cand):
                    continue
                stripped = {k.removeprefix(prefix): v for k, v in cand.items()}
                if len(stripped) != len(cand):   # two keys would collide: not a wrapper prefix
                    continue
                nxt.append(stripped)
                hits = len(stripped.keys() & expected)
                if hits > best_hits:
                    best, best_hits = stripped, hits
        frontier = nxt
    return best


def load_weights(net: nn.Module, path: str | os.PathLike, *, what: str = "the model",
                 allow_unexpected: bool = False, num_classes: int | None = None) -> str:
    """Load ``path`` into ``net`` after checking keys and shapes; ``what`` names the model in messages. Returns the
    file's sha256 (what was loaded, whatever the path later holds)."""
    data = read_bytes(path)
    state = align_keys(read_state_dict(path, data), set(net.state_dict()))
    load_checked(net, state, source=f"weights {path}", what=what, allow_unexpected=allow_unexpected,
                 num_classes=num_classes)
    return hashlib.sha256(data).hexdigest()


def load_checked(net: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str = "the model",
                 allow_unexpected: bool = False, num_classes: int | None = None) -> None:
    """``net.load_state_dict(state)``, but a mismatch is one line naming the first missing and unexpected keys, or
    the first parameter whose shape differs with both shapes (``source`` says where ``state`` came from)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [] if allow_unexpected else [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (first {missing[0]!r})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (first {unexpected[0]!r})"] if unexpected else [])
        raise UserError(f"{source} do not fit {what}: {', '.join(parts)} key(s)")
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is not None and tuple(theirs.shape) != tuple(mine.shape):
            hint = ""
            if num_classes is not None and mine.ndim and mine.shape[0] == num_classes and theirs.ndim:
                hint = (f"; a class count of {theirs.shape[0]}? set num_classes (--option num_classes="
                        f"{theirs.shape[0]}) or give that many --classes")
            raise UserError(f"{source} do not fit {what}: {key!r} is {tuple(theirs.shape)} in the file but "
                            f"{tuple(mine.shape)} in the model{hint}")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."
