"""Checkpoints: a directory holding ``config.json`` (what to build, resolved) and ``weights.safetensors``.

Loadable without Ray and without the training code, from a local path or a URI pyarrow understands (s3://, gs://,
file://). Weights go through safetensors, which cannot run code, so a checkpoint from elsewhere is safe to open.
Writes are atomic: the new directory is built beside the target and renamed into place, so a failure half-way never
leaves a corrupt checkpoint where a good one stood.

A classifier's ``config.json`` records its model spec (``model.name``: a registered name, ``torchvision:…``,
``timm:…`` or ``module:callable``) and options (input size, channels, normalisation among them), which
``interp_ray.models.build_model`` rebuilds; ``import_model`` makes such a checkpoint from a user's own weights file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from interp_ray.errors import UserError
from interp_ray.storage import filesystem, is_remote, join

FORMAT = "interp-ray/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def _local_path(uri: str | os.PathLike) -> Path:
    s = str(uri)
    return Path(s[len("file://"):]) if s.startswith("file://") else Path(s)


def join_uri(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI (s3://bucket/a + b → s3://bucket/a/b; a query stays last)."""
    if is_remote(base):
        return join(base, *parts)
    return str(_local_path(base).joinpath(*parts))


def upload_dir(local: str | os.PathLike, uri: str) -> None:
    """Copy a local directory's files to ``uri`` (s3://, gs://) through pyarrow.fs."""
    import pyarrow.fs as pafs

    fs, dest = filesystem(uri)
    try:
        pafs.copy_files(str(local), dest, destination_filesystem=fs)
    except OSError as e:
        raise UserError(f"cannot write {uri}: {e}") from None


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local directory with the contents of ``uri`` (downloaded to a temp dir when remote)."""
    if not is_remote(uri):
        yield _local_path(uri)
        return
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="interp-ray-ckpt-") as tmp:
        fs, path = filesystem(uri)
        try:
            pafs.copy_files(path, tmp, source_filesystem=fs)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read checkpoint {uri}: {e}") from None
        yield Path(tmp)


def content_digest(uri: str | os.PathLike) -> str:
    """sha256 over every file of a checkpoint directory (relative names and bytes, in name order): what identifies a
    checkpoint of any kind — an explainer's may hold more than config and weights (CNN-INTE's forests). A missing or
    empty directory is a ``UserError``."""
    with local_copy(uri) as d:
        files = sorted(p for p in Path(d).rglob("*") if p.is_file()) if Path(d).is_dir() else []
        if not files:
            raise UserError(f"no checkpoint at {uri}")
        h = hashlib.sha256()
        for f in files:
            rel = f.relative_to(d).as_posix().encode()
            h.update(len(rel).to_bytes(4, "big") + rel + f.stat().st_size.to_bytes(8, "big"))
            h.update(f.read_bytes())
    return h.hexdigest()


def atomic_write_dir(target: Path, fill) -> None:
    """Build a directory with ``fill(tmp_dir)`` and move it to ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], files: dict[str, bytes] | None = None) -> str:
    """Write a checkpoint of ``kind`` (e.g. "classifier") to a local dir or a remote URI; returns the path."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "kind": kind, **config}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}

    def fill(d: Path) -> None:
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        save_file(tensors, str(d / WEIGHTS_FILE))
        for name, data in (files or {}).items():
            (d / name).write_bytes(data)

    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="interp-ray-save-") as tmp:
            fill(Path(tmp))
            upload_dir(tmp, str(path))
    else:
        atomic_write_dir(_local_path(path), fill)
    return str(path)


@dataclass
class LoadedCheckpoint:
    path: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes]
    digest: str  # sha256 of config.json + weights: identifies the content, not the location


def read_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> LoadedCheckpoint:
    from safetensors.torch import load_file

    with local_copy(path) as d:
        cfg_file, w_file = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not cfg_file.is_file() or not w_file.is_file():
            raise UserError(f"no checkpoint at {path} (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"checkpoint {path}: {CONFIG_FILE} is not valid JSON ({e.msg})") from None
        if config.get("format") != FORMAT:
            raise UserError(f"checkpoint {path} has format {config.get('format')!r}; expected {FORMAT!r}")
        if kind is not None and config.get("kind") != kind:
            raise UserError(f"checkpoint {path} holds a {config.get('kind')!r}, not a {kind!r}")
        digest = hashlib.sha256(cfg_file.read_bytes() + w_file.read_bytes()).hexdigest()
        try:
            state = load_file(str(w_file))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise UserError(f"checkpoint {path}: weights cannot be read ({e})") from None
        files = {p.name: p.read_bytes() for p in d.iterdir()
                 if p.is_file() and p.name not in (CONFIG_FILE, WEIGHTS_FILE)}
    return LoadedCheckpoint(str(path), config, state, files, digest)


EXPLAINER_KIND = "explainer"


def read_explainer(path: str | os.PathLike, method: str, *, required: Sequence[str] = ()) -> LoadedCheckpoint:
    """A learned explainer's checkpoint: one of ``method`` (its config's ``explainer``) with the ``required`` files
    beside its weights, or a UserError naming what is wrong with it."""
    ckpt = read_checkpoint(path, kind=EXPLAINER_KIND)
    held = ckpt.config.get("explainer")
    if held != method:
        raise UserError(f"checkpoint {path} holds a {held!r} explainer, not {method!r}")
    for name in required:
        if name not in ckpt.files:
            raise UserError(f"checkpoint {path} has no {name}")
    return ckpt


# --- classifiers -------------------------------------------------------------------------------------------------

def save_classifier(path: str | os.PathLike, model, *, model_name: str, model_options: dict[str, Any],
                    class_names: list[str], data: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> str:
    model = getattr(model, "module", model)  # unwrap DDP
    config = {"model": {"name": model_name, "options": model_options}, "class_names": list(class_names),
              "data": data or {}, "metrics": metrics or {}}
    return save_checkpoint(path, kind="classifier", config=config, state_dict=model.state_dict())


@dataclass
class LoadedClassifier:
    model: Any  # interp_ray.models.Classifier, in eval mode
    config: dict[str, Any]
    digest: str

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]


def load_classifier(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedClassifier:
    from interp_ray.models import build_model
    from interp_ray.models.weights import load_checked

    ckpt = read_checkpoint(path, kind="classifier")
    spec = ckpt.config["model"]
    model = build_model(spec["name"], **spec.get("options", {}))
    load_checked(model, ckpt.state_dict, source=f"checkpoint {path}: weights", what=f"model {spec['name']!r}")
    return LoadedClassifier(model.to(device).eval(), ckpt.config, ckpt.digest)


def import_model(spec: str, *, weights: str | os.PathLike, output: str | os.PathLike,
                 options: dict[str, Any] | None = None, class_names: list[str] | None = None) -> LoadedClassifier:
    """A self-contained classifier checkpoint at ``output`` from a model spec and a weights file (local or s3://).

    The weights are copied in (nothing refers back to ``weights`` afterwards; only its sha256 is recorded). With
    ``class_names`` and no ``num_classes`` option, the class count is their number. The written checkpoint is read
    back and must give the same logits as the model built here, so what was imported is what loads.
    """
    from interp_ray.models import build_model, load_weights
    from interp_ray.models.spec import resolve_presets

    options = resolve_presets(options or {})   # the numbers, not a preset's name, go into config.json
    if class_names is not None:
        n = options.setdefault("num_classes", len(class_names))
        if int(n) != len(class_names):
            raise UserError(f"{len(class_names)} class names but num_classes={n}; give one name per class")
    model = build_model(spec, **options)
    sha256 = load_weights(model.net, weights, what=f"model {spec!r}", num_classes=model.num_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise UserError(f"model {spec!r} gives {model.num_classes} logits; give that many class names")
    source = {"weights_sha256": sha256}
    save_checkpoint(output, kind="classifier", state_dict=model.state_dict(),
                    config={"model": {"name": spec, "options": options}, "class_names": names, "data": {},
                            "metrics": {}, "imported": source})
    loaded = load_classifier(output)
    x = torch.rand((2, *model.input_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.allclose(loaded.model(x), model.eval()(x), rtol=1e-4, atol=1e-5):
            raise UserError(f"model {spec!r}: the written checkpoint {output} does not reproduce the imported model's "
                            f"logits (does its builder depend on random state or globals?)")
    return loaded
