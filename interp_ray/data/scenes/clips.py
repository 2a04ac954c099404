"""Scenes clips: the same scenes with moving objects, for video captioning (Dong et al.)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from interp_ray.data.scenes.drawing import (ObjectStyle, add_noise, draw_object, place_objects, sample_background,
                                            sample_style, tight_box)
from interp_ray.data.scenes.rows import (ScenesDataset, _empty_extras, _fill_class_extras, _row_rng, _scene_classes,
                                         _sentence_array, row_labels)
from interp_ray.data.scenes.tables import _MODE_CLIP_ONE, _MODE_CLIP_TWO, SPLITS, make_sentences
from interp_ray.errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# Clips: the same scenes with moving objects, for video captioning (Dong et al.)
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_CLIP_ROWS = {"train": 2000, "val": 400, "test": 400}
MAX_FRAMES = 64


def bounce(start: float, velocity: float, lo: float, hi: float, frames: int) -> np.ndarray:
    """Positions at frames 0..frames-1 of a point moving at ``velocity`` that reflects off ``lo`` and ``hi``."""
    span = hi - lo
    if span <= 0:
        return np.full(frames, lo, dtype=np.float64)
    x = np.mod(start - lo + velocity * np.arange(frames), 2 * span)
    return lo + np.where(x > span, 2 * span - x, x)


def sample_motion(rng: np.random.Generator, style: ObjectStyle, ranges, size: int, frames: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and rotation angle per frame: a random start, a speed of 0.5–1.5 px/frame (at 64 px), a slow spin.

    The object stays inside its centre ranges, so it is whole in every frame and, with two objects, each keeps to its
    own side of the cut and their boxes never overlap.
    """
    (x_lo, x_hi), (y_lo, y_hi) = ranges
    x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    speed, heading = rng.uniform(0.5, 1.5) * size / 64.0, rng.uniform(-np.pi, np.pi)
    spin = rng.uniform(-0.15, 0.15)
    xs = bounce(x0, speed * np.cos(heading), x_lo, x_hi, frames)
    ys = bounce(y0, speed * np.sin(heading), y_lo, y_hi, frames)
    return xs, ys, style.angle + spin * np.arange(frames)


class ScenesClipDataset(ScenesDataset):
    """``n`` generated clips of ``frames`` frames: the objects of a scene move (and bounce, and spin slowly) over a
    still background. Rows hold ``clip`` float32 (N, T, 3, H, W), ``image`` = the first frame (so the clip set still
    behaves as an image set), per-frame ``boxes`` (N, T, 2, 4) and ``masks`` (N, T, 2, H, W), and the same
    ``box_labels``, ``attributes``, ``discriminative`` and ``sentences`` as still scenes. Clip streams are disjoint
    from still-image streams."""

    name = "scene_clips"

    def __init__(self, split: str = "train", n: int | None = None, *, frames: int = 8, seed: int = 0, size: int = 64,
                 two_objects: bool = False, sentences_per_image: int = 5, video: bool = False):
        if not 1 <= frames <= MAX_FRAMES:
            raise UserError(f"frames must be in 1..{MAX_FRAMES}, got {frames}")
        super().__init__(split, DEFAULT_CLIP_ROWS[split] if n is None and split in SPLITS else n, seed=seed,
                         size=size, two_objects=two_objects, sentences_per_image=sentences_per_image)
        self.frames = int(frames)
        self.mode = _MODE_CLIP_TWO if self.two_objects else _MODE_CLIP_ONE
        # video: ``image`` is the whole clip (T×3×H×W), so the extraction job stores one row of frame features per
        # clip (interp_ray.activations); otherwise ``image`` is the first frame and the clip is in ``clip``.
        self.video = bool(video)
        if self.video:
            self.image_shape = (self.frames, 3, self.size, self.size)

    def row_id(self, index: int) -> str:
        kind = "clips2" if self.two_objects else "clips"
        return f"{kind}/{self.split}/s{self.seed}/t{self.frames}/{index:07d}"

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        idx = self._indices(indices)
        n, s, k, t_len = len(idx), self.size, self.sentences_per_image, self.frames
        labels = row_labels(self.seed, self.split, self.mode, idx)
        clips = np.empty((n, t_len, 3, s, s), dtype=np.float32)
        out = _empty_extras(n, s, k, frames=t_len)
        sentences = []
        for j, (index, label) in enumerate(zip(idx, labels)):
            rng = _row_rng(self.seed, self.split, self.mode, int(index))
            classes = _scene_classes(rng, int(label), self.two_objects)
            background = sample_background(rng, s)
            styles = [sample_style(rng, c, s) for c in classes]
            paths = [sample_motion(rng, st, r, s, t_len) for st, r in zip(styles, place_objects(rng, styles, s))]
            for t in range(t_len):
                frame = background.copy()
                for o, (style, (xs, ys, angles)) in enumerate(zip(styles, paths)):
                    mask = draw_object(frame, style, xs[t], ys[t], angles[t])
                    out["masks"][j, t, o] = mask
                    out["boxes"][j, t, o] = tight_box(mask)
                clips[j, t] = add_noise(rng, frame)
            _fill_class_extras(out, j, classes)
            sentences.append(make_sentences(classes[0], rng, k))
        ids = np.array([self.row_id(int(i)) for i in idx], dtype=str)
        if self.video:
            return {"id": ids, "image": clips, "label": labels, **out, "sentences": _sentence_array(sentences, k)}
        return {"id": ids, "image": clips[:, 0].copy(), "label": labels, "clip": clips, **out,
                "sentences": _sentence_array(sentences, k)}

    def describe(self) -> dict:
        return {**super().describe(), "frames": self.frames, **({"video": True} if self.video else {})}


def load_scene_clips(split: str = "train", *, n: int | None = None, frames: int = 8, seed: int = 0, size: int = 64,
                     two_objects: bool = False, sentences_per_image: int = 5) -> ScenesClipDataset:
    """Generated clips of moving attribute objects (see ``ScenesClipDataset``). ``n`` defaults to 2000 / 400 / 400
    clips for train / val / test. The registry's ``scene_clips`` is ``load_scene_videos`` (the clip as ``image``)."""
    return ScenesClipDataset(split, n, frames=frames, seed=seed, size=size, two_objects=two_objects,
                             sentences_per_image=sentences_per_image)


def load_scene_videos(split: str = "train", *, n: int | None = None, frames: int = 8, seed: int = 0, size: int = 64,
                      two_objects: bool = False, sentences_per_image: int = 5) -> ScenesClipDataset:
    """The clips of ``load_scene_clips`` with ``image`` = the whole clip (T×3×H×W): the registry's ``scene_clips``,
    which the extraction job turns into one store row of per-frame activations per clip."""
    return ScenesClipDataset(split, n, frames=frames, seed=seed, size=size, two_objects=two_objects,
                             sentences_per_image=sentences_per_image, video=True)
