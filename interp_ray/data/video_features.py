"""Videos as per-frame CNN features plus reference captions: what the Dong et al. captioner reads.

One item format (``VideoItems``) from two sources:

1. **A real layout on disk (MSR-VTT style)** — ``read_video_features(root, split)``::

       root/
         captions.json         {"videos":    [{"video_id": "video0", "split": "train", "category": 3}, …],
                                "sentences": [{"video_id": "video0", "caption": "a man is talking"}, …]}
         features/
           video0.npy          K_v × D float array: one row per sampled frame (e.g. GoogLeNet pool5, D = 1024)
           video1.npy

   This is MSR-VTT's ``train_val_videodatainfo.json`` shape (``category`` optional: it becomes the class label, else
   -1); MSVD users convert their csv to it (one ``sentences`` entry per description). Feature files are written by
   whatever frame CNN the user runs — the reader only needs ``<video_id>.npy``. Every video is zero-padded (or
   truncated, keeping equally spaced frames as the paper's K = 28 sampling does) to ``frames`` rows, with a mask.
2. **Generated scene clips** — the extraction job runs the scenes CNN on every frame of the ``scene_clips`` dataset
   (``interp_ray.activations.ActivationExtractor``, one store row per clip) and keeps one layer per frame (default
   ``gap``, the 128-d global-average-pooled conv features: the analogue of GoogLeNet's pool5 that the paper used, and
   less collapsed onto the 12 classes than the fc layer); ``items_from_rows`` turns those store rows into
   ``VideoItems``. The clips' true attributes come along in ``attributes`` (N × 4 value indices), kept in the store
   beside the features, which the acceptance checks need. No module here runs a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from interp_ray.errors import UserError

CAPTIONS_FILE = "captions.json"
FEATURES_DIR = "features"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class VideoItems:
    """N videos: ``features`` N × K × D float32 (zero rows past each video's end), ``mask`` N × K bool."""

    ids: np.ndarray
    features: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    sentences: list[list[str]]
    attributes: np.ndarray | None = None          # scenes: N × 4 attribute value indices (ground truth)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def frames(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "VideoItems":
        idx = np.asarray(idx, dtype=np.int64)
        return VideoItems(self.ids[idx], self.features[idx], self.mask[idx], self.labels[idx],
                          [self.sentences[i] for i in idx],
                          None if self.attributes is None else self.attributes[idx], dict(self.info))


def pad_frames(feats: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames × D, mask): a video longer than ``frames`` keeps ``frames`` equally spaced rows; a shorter one is
    zero-padded at the end."""
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise UserError(f"frame features must be a non-empty K × D array, got shape {feats.shape}")
    k, d = feats.shape
    if k > frames:
        feats = feats[np.linspace(0, k - 1, frames).round().astype(np.int64)]
        k = frames
    out = np.zeros((frames, d), dtype=np.float32)
    out[:k] = feats
    mask = np.zeros(frames, dtype=bool)
    mask[:k] = True
    return out, mask


def _read_captions(root: Path) -> dict:
    path = root / CAPTIONS_FILE
    if not path.is_file():
        raise UserError(f"{root}: no {CAPTIONS_FILE} (expected the MSR-VTT-style layout, see "
                        "interp_ray/data/video_features.py)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        videos, sentences = raw["videos"], raw["sentences"]
        if not isinstance(videos, list) or not isinstance(sentences, list):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path}: expected JSON with lists 'videos' and 'sentences'") from None
    return {"videos": videos, "sentences": sentences}


def _load_features(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"missing frame-feature file {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a .npy array ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{path}: expected a K × D numeric array, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: frame features contain NaN or infinity")
    return arr.astype(np.float32)


def read_video_features(root: str | Path, split: str | None = "train", *, frames: int = 28,
                        limit: int | None = None) -> VideoItems:
    """The videos of ``split`` (None: all) from the layout above, in ``captions.json`` order."""
    root = Path(root)
    if frames < 1:
        raise UserError(f"frames must be >= 1, got {frames}")
    meta = _read_captions(root)
    by_video: dict[str, list[str]] = {}
    for s in meta["sentences"]:
        if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
            raise UserError(f"{root / CAPTIONS_FILE}: every sentence needs 'video_id' and 'caption'")
        if str(s["caption"]).strip():
            by_video.setdefault(str(s["video_id"]), []).append(str(s["caption"]).strip())
    chosen = [v for v in meta["videos"] if split is None or v.get("split") == split]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise UserError(f"{root / CAPTIONS_FILE}: no videos in split {split!r}")
    ids, feats, masks, labels, sents, dims = [], [], [], [], [], set()
    for v in chosen:
        vid = str(v.get("video_id", ""))
        if not _SAFE_ID.match(vid):  # ids become file names: no path separators or traversal
            raise UserError(f"{root / CAPTIONS_FILE}: video_id {vid!r} is not a plain file name")
        if vid not in by_video:
            raise UserError(f"video {vid!r} has no caption in {root / CAPTIONS_FILE}")
        f, m = pad_frames(_load_features(root / FEATURES_DIR / f"{vid}.npy"), frames)
        dims.add(f.shape[1])
        ids.append(vid)
        feats.append(f)
        masks.append(m)
        labels.append(int(v.get("category", -1)))
        sents.append(by_video[vid])
    if len(dims) > 1:
        raise UserError(f"{root / FEATURES_DIR}: feature files disagree on the feature width: {sorted(dims)}")
    return VideoItems(np.array(ids, dtype=str), np.stack(feats), np.stack(masks), np.array(labels, dtype=np.int64),
                      sents, info={"source": "video_features", "root": str(root), "split": split, "frames": frames})


def write_video_features(root: str | Path, items: VideoItems, split: str = "train", *, append: bool = False) -> None:
    """Write ``items`` in the layout above (only the unmasked frames of each video). Used for fixtures and to export
    scene clips for other tools; with ``append`` the videos are added to an existing ``captions.json``."""
    root = Path(root)
    (root / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    meta = _read_captions(root) if append and (root / CAPTIONS_FILE).is_file() else {"videos": [], "sentences": []}
    for i, vid in enumerate(items.ids):
        vid = str(vid)
        if not _SAFE_ID.match(vid):
            raise UserError(f"video_id {vid!r} is not a plain file name")
        np.save(root / FEATURES_DIR / f"{vid}.npy", items.features[i][items.mask[i]])
        entry = {"video_id": vid, "split": split}
        if items.labels[i] >= 0:
            entry["category"] = int(items.labels[i])
        meta["videos"].append(entry)
        meta["sentences"].extend({"video_id": vid, "caption": s} for s in items.sentences[i])
    (root / CAPTIONS_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def pool_frame_features(act):
    """One feature row per frame: a layer's output (N × C × … , torch or numpy) averaged over its spatial axes."""
    return act.reshape(act.shape[0], act.shape[1], -1).mean(2) if act.ndim > 2 else act


def items_from_rows(batches: Iterable[dict[str, Any]], frame_column: str, info: dict | None = None) -> VideoItems:
    """Clip rows of an activation store (``frame_column``: one layer of every frame, N × K × C × …) as ``VideoItems``
    — the in-memory form the evaluation and the human-in-the-loop edits use. The frames were run through the frame
    CNN by ``interp_ray.activations.ActivationExtractor`` (the extraction job); nothing here runs a model."""
    ids, feats, labels, sents, attrs = [], [], [], [], []
    for b in batches:
        f = np.asarray(b[frame_column], dtype=np.float32)
        feats.append(pool_frame_features_np(f))
        ids.append(np.asarray(b["id"]).astype(str))
        labels.append(np.asarray(b["label"], dtype=np.int64))
        sents.extend([str(s).strip() for s in row if str(s).strip()] for row in b["sentences"])
        if "attributes" in b:
            attrs.append(np.asarray(b["attributes"], dtype=np.int64))
    if not ids:
        raise UserError("no clips: the store is empty")
    f = np.concatenate(feats)
    return VideoItems(np.concatenate(ids), f, np.ones(f.shape[:2], dtype=bool), np.concatenate(labels), sents,
                      np.concatenate(attrs) if len(attrs) == len(ids) else None, dict(info or {}))


def pool_frame_features_np(act: np.ndarray) -> np.ndarray:
    """N × K × C × … per-frame layer outputs → N × K × C, spatial axes averaged."""
    return act.reshape(*act.shape[:3], -1).mean(3) if act.ndim > 3 else act
