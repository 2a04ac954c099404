"""FLINT's pictures, computed once per trained explainer and kept in its checkpoint.

What FLINT shows of an attribute φ_j does not depend on the image being explained: its maximum-activating samples
(MAS) and the activation-maximisation-with-partial-initialisation (AM+PI) images grown from them, per attribute (the
MAS over all classes) and per relevant (class, attribute) pair of the global interpretation (the MAS of that class).
AM+PI is hundreds of optimiser steps an image, so it runs here once, after training, in one batched run
(``grow_pictures``), and an image's sheet is composed from the stored tiles (``FlintPictures.tiles``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from interp_ray.errors import UserError
from interp_ray.explainers.flint.am import activation_maximisation
from interp_ray.explainers.flint.config import AMSection
from interp_ray.explainers.flint.model import FlintModel

PICTURES_FILE = "pictures.npz"


@dataclass
class FlintPictures:
    """The stored tiles (float32 images, l per attribute or pair, each C×H×W).

    attribute_mas, attribute_am:  J×l×C×H×W: each attribute's MAS and the AM+PI image grown from each;
    pair_classes, pair_attributes: P: the (class, attribute) pairs with tiles of their own;
    pair_mas, pair_am:            P×l×C×H×W: the pair's MAS (rows of that class) and their AM+PI images;
    am:                           the AM+PI settings they were grown with.
    """

    attribute_mas: np.ndarray
    attribute_am: np.ndarray
    pair_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_attributes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pair_mas: np.ndarray | None = None
    pair_am: np.ndarray | None = None
    am: dict[str, Any] = field(default_factory=dict)

    def tiles(self, cls: int, j: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(MAS, AM+PI images, "class" or "attribute") for attribute ``j`` explained as class ``cls``: the pair's
        own tiles when it has some (a globally relevant pair), else the attribute's."""
        hit = np.flatnonzero((self.pair_classes == cls) & (self.pair_attributes == j))
        if hit.size and self.pair_mas is not None and self.pair_am is not None:
            return self.pair_mas[hit[0]], self.pair_am[hit[0]], "class"
        return self.attribute_mas[j], self.attribute_am[j], "attribute"

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"attribute_mas": self.attribute_mas, "attribute_am": self.attribute_am,
                  "pair_classes": self.pair_classes, "pair_attributes": self.pair_attributes}
        if self.pair_mas is not None and self.pair_am is not None:
            arrays.update(pair_mas=self.pair_mas, pair_am=self.pair_am)
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, am: dict[str, Any] | None = None) -> "FlintPictures":
        with np.load(io.BytesIO(data)) as z:
            got = {k: z[k] for k in z.files}
        return cls(got["attribute_mas"], got["attribute_am"], got["pair_classes"], got["pair_attributes"],
                   got.get("pair_mas"), got.get("pair_am"), dict(am or {}))

    def record(self, data: bytes) -> dict[str, Any]:
        """What the checkpoint's config says of the file: its name, sha256 and the AM+PI settings."""
        return {"file": PICTURES_FILE, "sha256": hashlib.sha256(data).hexdigest(), "am": self.am,
                "pairs": int(len(self.pair_classes))}


def read_pictures(files: dict[str, bytes], record: dict[str, Any] | None, where: str) -> FlintPictures | None:
    """The checkpoint's stored pictures, checked against the sha256 its config records; None for a checkpoint
    written before pictures were stored (the explainer then grows them lazily)."""
    if not record:
        return None
    data = files.get(record.get("file", PICTURES_FILE))
    if data is None:
        raise UserError(f"checkpoint {where}: its config names {record.get('file')} but the file is missing; "
                        f"copy the whole checkpoint directory")
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise UserError(f"checkpoint {where}: {record.get('file')} does not match the sha256 its config records "
                        f"(the file was changed or truncated)")
    return FlintPictures.from_bytes(data, record.get("am"))


def grow_pictures(model: FlintModel, attribute_mas: np.ndarray, am: AMSection, *,
                  pairs: Sequence[tuple[int, int, np.ndarray]] = (), batch: int = 256) -> FlintPictures:
    """AM+PI from every stored MAS (``attribute_mas``: J×l×C×H×W; ``pairs``: (c, j, l×C×H×W images)), in batches of
    ``batch`` images each optimising its own attribute (``activation_maximisation`` treats images independently, so
    this equals growing them one attribute at a time)."""
    attribute_mas = np.asarray(attribute_mas, dtype=np.float32)
    n_attr, n_mas = attribute_mas.shape[:2]
    shape = attribute_mas.shape[2:]
    images = [attribute_mas.reshape(-1, *shape)]
    targets = [np.repeat(np.arange(n_attr), n_mas)]
    for _, j, imgs in pairs:
        images.append(np.asarray(imgs, dtype=np.float32).reshape(-1, *shape))
        targets.append(np.full(len(imgs), j))
    x, js = np.concatenate(images), np.concatenate(targets)
    grown = np.concatenate([activation_maximisation(model, [int(v) for v in js[lo:lo + batch]],
                                                    torch.from_numpy(np.ascontiguousarray(x[lo:lo + batch])),
                                                    am).cpu().numpy()
                            for lo in range(0, len(x), batch)]).astype(np.float32)
    split = n_attr * n_mas
    out = FlintPictures(attribute_mas, grown[:split].reshape(attribute_mas.shape), am=am.model_dump(mode="json"))
    if pairs:
        lens = {len(imgs) for _, _, imgs in pairs}
        if lens != {n_mas}:
            raise ValueError(f"every pair needs {n_mas} MAS, got {sorted(lens)}")
        out.pair_classes = np.array([c for c, _, _ in pairs], dtype=np.int64)
        out.pair_attributes = np.array([j for _, j, _ in pairs], dtype=np.int64)
        out.pair_mas = np.stack([np.asarray(imgs, dtype=np.float32) for _, _, imgs in pairs])
        out.pair_am = grown[split:].reshape(out.pair_mas.shape)
    return out
