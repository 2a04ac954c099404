"""The extraction callable: a batch dict of numpy arrays in, a batch dict with activations out.

``ActivationExtractor`` is the one object every consumer uses — Ray Data (``map_batches(ActivationExtractor, …)``, as
a callable class so each actor loads the checkpoint once), Ray Serve (one per replica) and plain Python (no Ray
needed). ``__init__`` loads the checkpoint and resolves the layer names once, so a bad layer fails before any batch;
``__call__`` is pure: same inputs, same outputs, whatever the batch size or the process.

Output columns (first axis = batch):

* ``id`` (str), ``label`` (int64): copied from the input; ``label`` is -1 when the input has none (serving)
* ``prediction`` (int64): argmax of the logits
* ``probabilities`` (float32, N×classes): softmax of the logits
* one column per layer, named by its module path, with the layer's own shape (e.g. N×128×8×8), float32 — unless
  ``storage`` says how the store keeps that layer (``keep_layer``: a channel subset, a spatial reduction, float16 or
  bfloat16, the last as its raw 16 bits in a uint16 array since numpy has no bfloat16)
* any input column named in ``passthrough`` (by default ``index`` and ``shard``, which the store uses to place rows)

Clips: an ``image`` column with one more axis than the model takes (N×T×C×H×W) is a batch of T-frame clips. Every
frame goes through the same forward pass (the frames are folded into the batch axis), each layer column comes back
per clip as N×T×(layer shape), and ``probabilities``/``prediction`` are those of the frames' mean probabilities. One
store row is then one clip, so a shard or a Ray Train split never cuts a clip in two.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from interp_ray.data.base import image_tensor
from interp_ray.config import LayerStore, check_layer_names
from interp_ray.devices import pick_device
from interp_ray.errors import UserError

RESERVED_COLUMNS = ("index", "shard", "id", "label", "prediction", "probabilities")
DEFAULT_PASSTHROUGH = ("index", "shard")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_layer_spec(name: str, shape: Sequence[int], spec: LayerStore) -> None:
    """A ``UserError`` naming the config field if ``spec`` cannot apply to a layer of per-row ``shape``."""
    where = f"store.layers.{name}"
    if spec.channels is not None and max(spec.channels) >= shape[0]:
        raise UserError(f"{where}.channels: channel {max(spec.channels)} is out of range; {name} has {shape[0]} "
                        f"channels (0..{shape[0] - 1})")
    if spec.reduce != "none" and len(shape) != 3:
        raise UserError(f"{where}.reduce: {spec.reduce} reduces the H×W of a C×H×W map, but {name} is "
                        f"{'×'.join(map(str, shape))}")


def keep_layer(t: torch.Tensor, spec: LayerStore) -> torch.Tensor:
    """What the store keeps of a layer's batch ``t`` (N × C × …): the ``channels`` (in their order), then the spatial
    reduction over the last two axes (computed in float32), then the cast to ``spec.dtype``."""
    if spec.channels is not None:
        t = t[:, spec.channels]
    if spec.reduce != "none":
        t = t.float()
        if spec.reduce == "mean":
            t = t.mean(dim=(-2, -1))
        elif spec.reduce == "max":
            t = t.amax(dim=(-2, -1))
        else:
            t = torch.nn.functional.adaptive_avg_pool2d(t, spec.pool_size)
    return t.to(TORCH_DTYPES[spec.dtype or "float32"])


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU copy of ``t`` as numpy; bfloat16 as its raw bits (uint16), which numpy can hold and Parquet can store."""
    t = t.to("cpu")
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def load_worker_classifier(checkpoint: str | os.PathLike, *, device: str | None = None,
                           torch_threads: int | None = None, expect_digest: str | None = None
                           ) -> tuple[Any, torch.device]:
    """The classifier a batch worker runs (a ``LoadedClassifier``) and the device it is on (``pick_device``).

    ``torch_threads`` caps intra-op threads (Ray sets OMP_NUM_THREADS to an actor's CPU count; a benchmark may want
    more). ``expect_digest``: the checkpoint must still be the one the job was planned with — retrained in place, its
    outputs would land in a store keyed by the old weights.
    """
    from interp_ray.checkpoint import load_classifier

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    where = pick_device(device)
    loaded = load_classifier(checkpoint, device=where)
    if expect_digest is not None and loaded.digest != expect_digest:
        raise UserError(f"checkpoint {checkpoint} changed since this job started (digest {loaded.digest[:12]}, "
                        f"expected {expect_digest[:12]}); rerun the job")
    return loaded, where


class ActivationExtractor:
    """Maps ``{"image": N×C×H×W float32, "id", "label", …}`` to ids, labels, predictions, probabilities and layers.

    ``layers``: names or shell patterns (``"relu*"``); ``None`` means the model's default layers. ``torch_threads``
    caps intra-op threads (Ray sets OMP_NUM_THREADS to an actor's CPU count; a benchmark may want more).
    ``expect_digest``: refuse a checkpoint whose content is not this one (the store key was computed from it).
    ``storage``: layer → ``LayerStore`` (or its dict) for the layers a store keeps otherwise than whole in float32.
    """

    def __init__(self, checkpoint: str | os.PathLike, layers: Iterable[str] | str | None = None, *,
                 device: str | None = None, torch_threads: int | None = None,
                 passthrough: Sequence[str] = DEFAULT_PASSTHROUGH, expect_digest: str | None = None,
                 storage: dict[str, LayerStore | dict[str, Any]] | None = None, autocast: str | None = None):
        loaded, device = load_worker_classifier(checkpoint, device=device, torch_threads=torch_threads,
                                                expect_digest=expect_digest)
        self._bind(loaded, device, layers, passthrough, checkpoint=str(checkpoint))
        self.autocast = autocast
        if storage:
            self.keep_as(storage)

    @classmethod
    def around(cls, loaded: Any, layers: Iterable[str] | str | None = None, *,
               passthrough: Sequence[str] = DEFAULT_PASSTHROUGH) -> "ActivationExtractor":
        """An extractor over an already loaded classifier (a ``LoadedClassifier``), on the device its weights are
        on: a serving replica or the CLI holds one model and shares it between the methods it runs."""
        self = cls.__new__(cls)
        device = next(loaded.model.parameters()).device
        self._bind(loaded, device, layers, passthrough, checkpoint=str(getattr(loaded, "path", "") or ""))
        return self

    def _bind(self, loaded: Any, device: torch.device, layers: Iterable[str] | str | None,
              passthrough: Sequence[str], *, checkpoint: str) -> None:
        self.device = device
        self.model = loaded.model
        self.checkpoint = checkpoint
        self.digest = loaded.digest
        self.model_name: str = loaded.config["model"]["name"]
        self.class_names: list[str] = list(loaded.class_names)
        requested = self.model.default_layers if layers is None else layers
        self.layers: list[str] = self.model.resolve_layers(requested)
        if not self.layers:
            raise UserError(f"no layers to extract; the model has: {', '.join(self.model.layer_names())}")
        clash = sorted(set(self.layers) & set(RESERVED_COLUMNS))
        if clash:
            raise UserError(f"layer name(s) {', '.join(clash)} clash with the store's own columns")
        self.passthrough = tuple(passthrough)
        self.storage: dict[str, LayerStore] = {}
        self.autocast: str | None = None

    def _forward_context(self):
        """The model call's precision: float32, or mixed under ``torch.autocast`` (``autocast``: float16/bfloat16),
        which is how a GPU reaches its tensor-core rate; the kept layers are cast to their store dtype after it."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=TORCH_DTYPES[self.autocast])

    def keep_as(self, storage: dict[str, LayerStore | dict[str, Any]]) -> "ActivationExtractor":
        """Give the named layers' columns as ``storage`` says (``keep_layer``); checked against the layers' shapes
        here, so a bad channel or reduction fails before any batch."""
        specs = {name: LayerStore.model_validate(spec) for name, spec in storage.items()}
        check_layer_names(specs, self.layers)
        self.storage = {}
        shapes = self.layer_shapes()
        for name, spec in specs.items():
            check_layer_spec(name, shapes[name], spec)
        self.storage = specs
        return self

    def layer_shapes(self, frames: int | None = None) -> dict[str, tuple[int, ...]]:
        """Per-row shape of each layer's column (one dry run on a zero image, after ``storage``); with ``frames``,
        per clip."""
        x = torch.zeros((1, *self.model.input_shape), device=self.device)
        with torch.inference_mode():
            acts = self._kept(self.model.activations(x, self.layers))
        lead = () if frames is None else (int(frames),)
        return {name: (*lead, *(int(s) for s in t.shape[1:])) for name, t in acts.items()}

    def layer_dtypes(self) -> dict[str, str]:
        """The dtype of each layer's column: float32, or what ``storage`` keeps."""
        return {name: (self.storage[name].dtype if name in self.storage else None) or "float32"
                for name in self.layers}

    def _kept(self, acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: keep_layer(t, self.storage[name]) if name in self.storage else t.float()
                for name, t in acts.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.asarray(batch["image"])  # float32 in [0, 1], or the loader's uint8 pixels
        n = len(images)
        frames = images.shape[1] if images.ndim == len(self.model.input_shape) + 2 else None
        if frames is not None:
            images = images.reshape(n * frames, *images.shape[2:])
        x = image_tensor(images, self.device)
        self.model.check_input(x)
        with torch.inference_mode():
            with self._forward_context():
                acts = self.model.activations(x, self.layers, with_logits=True)
            logits = acts.pop("logits")
            acts = self._kept(acts)  # on the device, before the copy out: a reduced map is what crosses
            probs = torch.softmax(logits.float(), dim=1)
            if frames is not None:
                probs = probs.view(n, frames, -1).mean(1)
                logits = probs  # the clip's class: argmax of the frames' mean probabilities
                acts = {k: v.reshape(n, frames, *v.shape[1:]) for k, v in acts.items()}
        out: dict[str, np.ndarray] = {
            "id": np.asarray(batch["id"]) if "id" in batch else np.array([str(i) for i in range(n)]),
            "label": (np.asarray(batch["label"], dtype=np.int64) if "label" in batch
                      else np.full(n, -1, dtype=np.int64)),
            "prediction": logits.argmax(dim=1).to("cpu").numpy().astype(np.int64),
            "probabilities": probs.to("cpu").numpy().astype(np.float32, copy=False),
        }
        for name in self.layers:
            out[name] = to_numpy(acts[name])
        for key in self.passthrough:
            if key in batch:
                out[key] = np.asarray(batch[key])
        return out


def clip_items(checkpoint: str | os.PathLike, dataset: Any, layer: str = "gap", *, rows: Sequence[int] | None = None,
               batch_size: int = 64, device: str | None = None):
    """``VideoItems`` of clips (``dataset``: the ``scene_clips`` dataset, ``image`` = T frames) with ``layer`` of every
    frame, in process — what the extraction job stores, for a handful of clips (a CLI edit, a test fixture)."""
    from interp_ray.data.video_features import items_from_rows

    extractor = ActivationExtractor(checkpoint, [layer], device=device, passthrough=("sentences", "attributes"))
    idx = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)

    def batches():
        for lo in range(0, len(idx), batch_size):
            yield extractor(dataset.get_batch(idx[lo:lo + batch_size]))

    return items_from_rows(batches(), extractor.layers[0],
                           info={"source": "scene_clips", "checkpoint": str(checkpoint), "layer": layer})
