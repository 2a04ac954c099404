"""Scenes: seeded synthetic RGB images whose class is defined by visual attributes, with full ground truth.

Why it exists: no download works here, yet the explainers need what CUB gives (classes that share attributes,
reference sentences that name the discriminative ones — InterpNET, Dong) and what VOC gives (object boxes for the
pointing game, two-object images for class discrimination — guided feature inversion). A generator gives all of it
exactly, at any size, straight into Ray Data.

The data
--------
* 12 classes (``CLASSES``), each a value for each of four attribute kinds: shape, colour, pattern, size
  (``ATTRIBUTE_VALUES``). Several classes share attributes and some pairs differ in one attribute only, so a model
  (and an explanation) has to use the right attribute — like bird species. Class names are invented species names
  that contain no attribute word, so naming the class never counts as naming an attribute.
* An image shows one object (or two of different classes, ``two_objects=True``) on a textured, noisy background.
  Nuisances a CNN must see through: position, rotation, size jitter inside the size category, colour and brightness
  jitter, shading, stripe/dot orientation, phase and spacing, background tint, gratings and pixel noise.
* Each row carries ``boxes``, ``box_labels``, ``masks`` (per object), ``attributes`` (of the first object),
  ``discriminative`` (which attribute kinds are discriminative for the label) and ``sentences`` (K reference
  sentences from varied templates, all naming every discriminative attribute with its canonical word).

Discriminative attributes (``discriminative_attributes``)
---------------------------------------------------------
For class c, the discriminative attribute values are its shape, plus the value of every other kind k for which some
other class differs from c in kind k only. Each such value is *necessary*: the neighbouring class agrees with c on
everything else, so an explanation that does not name it cannot tell the two apart. Shape is always included because
it is the object's noun (every sentence needs one). The class table is designed so that this set is also
*sufficient*: no other class has all of these values (the tests check both properties).

Determinism
-----------
Row ``index`` of split ``split`` is drawn from its own ``np.random.Generator`` seeded by
``SeedSequence([salt, seed, split, mode, 0, index])``, so any row can be made alone, in any order, in any process,
and millions can be streamed without memory; the splits (and one- vs two-object mode) use disjoint streams. Labels
are balanced: each block of 12 consecutive indices holds every class once, in an order drawn from a second stream
``SeedSequence([salt, seed, split, mode, 1, block])``.

Conventions: boxes are ``x0, y0, x1, y1`` in pixels with x1, y1 *exclusive*, so ``mask[y0:y1, x0:x1]`` holds every
pixel of the object and the box is tight; absent objects have box ``-1`` and label ``-1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from interp_ray.data.base import ImageDataset
from interp_ray.errors import UserError

GENERATOR_VERSION = 1  # bump when the pixels or sentences change, so content hashes and checkpoints change too

SPLITS = ("train", "val", "test")
DEFAULT_ROWS = {"train": 6000, "val": 1000, "test": 1000}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_SALT = 0x5CE7E5  # keeps these streams apart from other generators seeded with the same small integers
_MODE_ONE, _MODE_TWO, _MODE_CLIP_ONE, _MODE_CLIP_TWO = 0, 1, 2, 3
_ROW_STREAM, _LABEL_STREAM = 0, 1

MIN_SIZE = 32  # below this, stripes and dots are too small to read
MAX_SENTENCES = 10

# ---------------------------------------------------------------------------------------------------------------
# Attributes and classes
# ---------------------------------------------------------------------------------------------------------------

ATTRIBUTE_KINDS: tuple[str, ...] = ("shape", "colour", "pattern", "size")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow"),
    "pattern": ("solid", "striped", "dotted"),
    "size": ("small", "large"),
}
# Every attribute word → its kind. Words are unique across kinds, so a word alone says which kind it names.
ATTRIBUTE_VOCAB: dict[str, str] = {v: kind for kind, values in ATTRIBUTE_VALUES.items() for v in values}

# Class name → attribute values; the class index is the position in this table (keep the order stable).
# Designed so that pairs differ in exactly one kind (colour: 0-1, 3-5, 6-8; pattern: 0-2, 6-7, 9-11;
# size: 3-4, 9-10) and so that the discriminative set of every class is sufficient (see module docstring).
CLASSES: dict[str, dict[str, str]] = {
    "alder warbler": {"shape": "circle", "colour": "red", "pattern": "striped", "size": "large"},
    "brook warbler": {"shape": "circle", "colour": "blue", "pattern": "striped", "size": "large"},
    "cedar warbler": {"shape": "circle", "colour": "red", "pattern": "dotted", "size": "large"},
    "dune finch": {"shape": "square", "colour": "green", "pattern": "solid", "size": "small"},
    "elm finch": {"shape": "square", "colour": "green", "pattern": "solid", "size": "large"},
    "fen finch": {"shape": "square", "colour": "yellow", "pattern": "solid", "size": "small"},
    "gorse tern": {"shape": "triangle", "colour": "yellow", "pattern": "striped", "size": "small"},
    "heath tern": {"shape": "triangle", "colour": "yellow", "pattern": "dotted", "size": "small"},
    "iris tern": {"shape": "triangle", "colour": "red", "pattern": "striped", "size": "small"},
    "juniper shrike": {"shape": "cross", "colour": "blue", "pattern": "dotted", "size": "large"},
    "kelp shrike": {"shape": "cross", "colour": "blue", "pattern": "dotted", "size": "small"},
    "larch shrike": {"shape": "cross", "colour": "blue", "pattern": "solid", "size": "large"},
}
CLASS_NAMES: list[str] = list(CLASSES)
NUM_CLASSES = len(CLASS_NAMES)

# Plural shape nouns count as mentions of the shape; everything else must use the canonical word.
_MENTION_FORMS: dict[str, str] = {**{v: v for v in ATTRIBUTE_VOCAB},
                                  "circles": "circle", "squares": "square", "triangles": "triangle",
                                  "crosses": "cross"}


def class_attributes(class_index: int) -> dict[str, str]:
    """The attribute values of class ``class_index`` (a copy)."""
    return dict(CLASSES[CLASS_NAMES[class_index]])


def attribute_indices(class_index: int) -> np.ndarray:
    """int64 (4,): the index of each attribute value of the class within ``ATTRIBUTE_VALUES[kind]``."""
    attrs = CLASSES[CLASS_NAMES[class_index]]
    return np.array([ATTRIBUTE_VALUES[k].index(attrs[k]) for k in ATTRIBUTE_KINDS], dtype=np.int64)


def discriminative_kinds(class_index: int) -> list[str]:
    """Kinds (in ``ATTRIBUTE_KINDS`` order) whose value is discriminative for the class: shape, plus every kind in
    which some other class differs from this one and in nothing else."""
    mine = CLASSES[CLASS_NAMES[class_index]]
    kinds = {"shape"}
    for other_index, other in enumerate(CLASSES.values()):
        if other_index == class_index:
            continue
        differing = [k for k in ATTRIBUTE_KINDS if other[k] != mine[k]]
        if len(differing) == 1:
            kinds.add(differing[0])
    return [k for k in ATTRIBUTE_KINDS if k in kinds]


def discriminative_attributes(class_index: int) -> list[str]:
    """The attribute values any explanation of this class must name (see the module docstring for the definition)."""
    mine = CLASSES[CLASS_NAMES[class_index]]
    return [mine[k] for k in discriminative_kinds(class_index)]


def attribute_mentions(sentence: str) -> set[str]:
    """The attribute values (canonical words) that ``sentence`` names; whole words only, case-insensitive."""
    return {_MENTION_FORMS[t] for t in re.findall(r"[a-z]+", sentence.lower()) if t in _MENTION_FORMS}


# ---------------------------------------------------------------------------------------------------------------
# Reference sentences
# ---------------------------------------------------------------------------------------------------------------

# Placeholders: {A_name} "an alder warbler"; {shape}; {A_shape}; {adjs} "red striped"; {A_adjs} "a red striped";
# {A_adjs_shape} "a red striped circle"; {list} "red and striped". Every template names the shape and all adjectives.
_TEMPLATES: tuple[str, ...] = (
    "{A_adjs_shape}.",
    "this is {A_name} because it is {A_adjs_shape}.",
    "this {shape} is {list}.",
    "{A_name}: {A_shape} that is {list}.",
    "this is {A_name} because it has {A_adjs} body shaped like {A_shape}.",
    "the object is {A_shape} and it is {list}.",
    "{A_shape}, {list}, which marks it as {A_name}.",
    "an image of {A_adjs_shape}.",
    "the {adjs} {shape} in this picture is {A_name}.",
    "its {list} look and its {shape} outline make it {A_name}.",
)
assert len(_TEMPLATES) >= MAX_SENTENCES
_OPTIONAL_MENTION_P = 0.35  # chance that a sentence also names a true but non-discriminative attribute


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _sentence(template: str, class_index: int, adjectives: list[str]) -> str:
    shape = CLASSES[CLASS_NAMES[class_index]]["shape"]
    adjs = " ".join(adjectives)
    return template.format(
        A_name=_with_article(CLASS_NAMES[class_index]), shape=shape, A_shape=_with_article(shape), adjs=adjs,
        A_adjs=_with_article(adjs), A_adjs_shape=_with_article(f"{adjs} {shape}"), list=_join_list(adjectives))


def make_sentences(class_index: int, rng: np.random.Generator, k: int) -> list[str]:
    """``k`` reference sentences for class ``class_index``, each from a different template.

    Every sentence names all discriminative attribute values; each true non-discriminative value is added with
    probability 0.35 (real descriptions mention more than the minimum); adjective order is random. No sentence names
    a value the class does not have.
    """
    attrs = CLASSES[CLASS_NAMES[class_index]]
    required = [attrs[kind] for kind in discriminative_kinds(class_index) if kind != "shape"]
    optional = [attrs[kind] for kind in ATTRIBUTE_KINDS if kind != "shape" and attrs[kind] not in required]
    sentences = []
    for t in rng.permutation(len(_TEMPLATES))[:k]:
        chosen = required + [v for v in optional if rng.random() < _OPTIONAL_MENTION_P]
        adjectives = [chosen[i] for i in rng.permutation(len(chosen))]
        sentences.append(_sentence(_TEMPLATES[t], class_index, adjectives))
    return sentences


# ---------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------

_COLOURS_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.12), "green": (0.16, 0.70, 0.22), "blue": (0.15, 0.30, 0.90), "yellow": (0.93, 0.84, 0.16),
}
# Object radius as a fraction of the image side. The ranges keep every small object smaller in area than every
# large one whatever the shape, and let two of the largest objects sit side by side without overlapping.
_RADIUS_FRACTION = {"small": (0.08, 0.105), "large": (0.145, 0.168)}
# Shape geometry relative to the radius r. _BOUND: radius of the disk (around the centre) that holds the shape at
# any rotation; placement keeps that disk inside the image, so the object is always whole.
_SQUARE_HALF = 0.85
_TRIANGLE_CIRCUMRADIUS = 1.25
_CROSS_HALF_WIDTH = 0.34
_BOUND = {"circle": 1.0, "square": _SQUARE_HALF * np.sqrt(2.0), "triangle": _TRIANGLE_CIRCUMRADIUS,
          "cross": float(np.hypot(1.0, _CROSS_HALF_WIDTH))}
_MARGIN = 1.0  # pixels kept free between an object and the image border
_TRIANGLE_NORMALS = np.deg2rad([90.0, 210.0, 330.0])  # outward edge normals of an upward-pointing triangle


@dataclass(frozen=True)
class ObjectStyle:
    """Everything about one object's appearance except where it is; drawn once per object, reused per frame."""

    class_index: int
    radius: float
    angle: float  # rotation of the shape, radians
    rgb: np.ndarray  # (3,) jittered body colour
    dark: float  # pattern marks are rgb * dark
    period: float  # stripe / dot spacing in pixels
    pattern_angle: float
    phase: tuple[float, float]
    shading: tuple[float, float]  # linear lighting gradient along u and v (fraction per radius)

    @property
    def attrs(self) -> dict[str, str]:
        return CLASSES[CLASS_NAMES[self.class_index]]

    @property
    def bound(self) -> float:
        return _BOUND[self.attrs["shape"]] * self.radius


def sample_style(rng: np.random.Generator, class_index: int, size: int) -> ObjectStyle:
    """A random appearance for an object of class ``class_index`` in a ``size``-pixel image."""
    attrs = CLASSES[CLASS_NAMES[class_index]]
    lo, hi = _RADIUS_FRACTION[attrs["size"]]
    base = np.asarray(_COLOURS_RGB[attrs["colour"]])
    rgb = np.clip((base + rng.uniform(-0.05, 0.05, 3)) * rng.uniform(0.85, 1.08), 0.0, 1.0)
    period = size / 16.0 * rng.uniform(0.9, 1.2) * (1.25 if attrs["pattern"] == "dotted" else 1.0)
    return ObjectStyle(
        class_index=class_index, radius=float(rng.uniform(lo, hi) * size), angle=float(rng.uniform(-np.pi, np.pi)),
        rgb=rgb, dark=float(rng.uniform(0.2, 0.4)), period=float(period),
        pattern_angle=float(rng.uniform(0.0, np.pi)), phase=(float(rng.random()), float(rng.random())),
        shading=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12))))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside the shape, in the object's own (rotated, centred) coordinates u, v."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF * r
    if shape == "triangle":
        inradius = _TRIANGLE_CIRCUMRADIUS * r / 2.0
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for phi in _TRIANGLE_NORMALS:
            inside &= u * np.cos(phi) + v * np.sin(phi) <= inradius
        return inside
    if shape == "cross":
        au, av, w = np.abs(u), np.abs(v), _CROSS_HALF_WIDTH * r
        return ((au <= r) & (av <= w)) | ((au <= w) & (av <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_marks(style: ObjectStyle, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Pixels that carry a dark pattern mark (stripes or dots), or None for a solid body."""
    pattern = style.attrs["pattern"]
    if pattern == "solid":
        return None
    c, s = np.cos(style.pattern_angle), np.sin(style.pattern_angle)
    a, b = (u * c + v * s) / style.period, (-u * s + v * c) / style.period
    if pattern == "striped":
        return np.mod(a + style.phase[0], 1.0) < 0.45
    if pattern == "dotted":
        da, db = np.mod(a + style.phase[0], 1.0) - 0.5, np.mod(b + style.phase[1], 1.0) - 0.5
        return da * da + db * db <= 0.3 * 0.3
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_object(image: np.ndarray, style: ObjectStyle, cx: float, cy: float, angle: float | None = None) -> np.ndarray:
    """Paint the object centred at (cx, cy) into ``image`` (3×H×W, in place); return its H×W bool mask.

    Only the window around the object is computed, with open grids (``np.ogrid``), so the cost is the object's area.
    """
    _, h, w = image.shape
    b = style.bound
    y0, y1 = max(0, int(np.floor(cy - b))), min(h, int(np.ceil(cy + b)) + 1)
    x0, x1 = max(0, int(np.floor(cx - b))), min(w, int(np.ceil(cx + b)) + 1)
    ys, xs = np.ogrid[y0:y1, x0:x1]
    dx, dy = xs - cx, ys - cy
    theta = style.angle if angle is None else angle
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    inside = _shape_mask(style.attrs["shape"], u, v, style.radius)
    light = 1.0 + (style.shading[0] * u + style.shading[1] * v) / style.radius
    marks = _pattern_marks(style, u, v)
    if marks is not None:
        light = np.where(marks, light * style.dark, light)
    body = np.clip(style.rgb[:, None, None] * light[None], 0.0, 1.0)
    window = image[:, y0:y1, x0:x1]
    window[:] = np.where(inside[None], body, window)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = inside
    return mask


def tight_box(mask: np.ndarray) -> np.ndarray:
    """int32 (4,) x0, y0, x1, y1 (exclusive) of the mask's pixels; -1s if the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.full(4, -1, dtype=np.int32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int32)


def sample_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 3×size×size: a tinted grey with two faint low-frequency gratings (texture a CNN must ignore)."""
    coords = np.arange(size, dtype=np.float64)
    grey = rng.uniform(0.25, 0.75)
    tint = grey + rng.uniform(-0.06, 0.06, 3)
    texture = np.zeros((size, size))
    for _ in range(2):
        theta, period = rng.uniform(0.0, np.pi), rng.uniform(12.0, 40.0) * size / 64.0
        phase, amplitude = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.0, 0.06)
        # sin(a·x + b·y + phase) as two outer products: 4·size sines instead of size² (it is the hot spot).
        ax = 2 * np.pi * coords * np.cos(theta) / period + phase
        by = 2 * np.pi * coords * np.sin(theta) / period
        texture += amplitude * (np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax)))
    return (tint[:, None, None] + texture[None]).astype(np.float32)


def add_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Pixel noise of a random strength, then clip to [0, 1]."""
    sigma = rng.uniform(0.01, 0.04)
    noisy = image + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _centre_range(lo: float, hi: float, bound: float) -> tuple[float, float]:
    """Where a centre may go so that the object's bounding disk stays within pixel coordinates [lo, hi]."""
    return lo + bound, hi - bound


def place_objects(rng: np.random.Generator, styles: Sequence[ObjectStyle], size: int
                  ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """For each object, the allowed range of its centre: ((x_lo, x_hi), (y_lo, y_hi)).

    One object: anywhere it fits whole. Two objects: the image is cut at a random line (vertical or horizontal) and
    each object stays on its own side, so their boxes can never overlap, in a still image or along a whole clip.
    """
    full = (_MARGIN, size - 1 - _MARGIN)
    if len(styles) == 1:
        b = styles[0].bound
        return [(_centre_range(*full, b), _centre_range(*full, b))]
    low = int(rng.random() < 0.5)  # which object sits on the low side of the cut
    high = 1 - low
    b_low, b_high = styles[low].bound, styles[high].bound
    # Cut at integer s: the low object's pixels are <= s - 1, the high object's >= s.
    s_lo = int(np.ceil(_MARGIN + 2 * b_low + 1))
    s_hi = int(np.floor(size - 1 - _MARGIN - 2 * b_high))
    if s_lo > s_hi:
        raise UserError(f"two objects do not fit side by side in a {size}-pixel image")
    cut = int(rng.integers(s_lo, s_hi + 1))
    along = {low: _centre_range(_MARGIN, cut - 1, b_low), high: _centre_range(cut, size - 1 - _MARGIN, b_high)}
    across = {o: _centre_range(*full, styles[o].bound) for o in (0, 1)}
    vertical_cut = rng.random() < 0.5
    return [(along[o], across[o]) if vertical_cut else (across[o], along[o]) for o in (0, 1)]


# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


def _row_rng(seed: int, split: str, mode: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SALT, seed, _SPLIT_CODES[split], mode, _ROW_STREAM, index]))


def _block_labels(seed: int, split: str, mode: int, block: int) -> np.ndarray:
    """The class order of indices [12·block, 12·block + 12): a permutation, so labels are exactly balanced."""
    ss = np.random.SeedSequence([_SALT, seed, _SPLIT_CODES[split], mode, _LABEL_STREAM, block])
    return np.random.default_rng(ss).permutation(NUM_CLASSES)


def row_labels(seed: int, split: str, mode: int, indices: np.ndarray) -> np.ndarray:
    """int64 labels of ``indices``; each 12-block's permutation is drawn once per call."""
    blocks: dict[int, np.ndarray] = {}
    out = np.empty(len(indices), dtype=np.int64)
    for j, index in enumerate(indices):
        block, pos = divmod(int(index), NUM_CLASSES)
        if block not in blocks:
            blocks[block] = _block_labels(seed, split, mode, block)
        out[j] = blocks[block][pos]
    return out


def _scene_classes(rng: np.random.Generator, label: int, two_objects: bool) -> list[int]:
    if not two_objects:
        return [label]
    other = int(rng.integers(NUM_CLASSES - 1))
    return [label, other + (other >= label)]  # uniform over the other classes


def _check_options(split: str, seed: int, size: int, sentences_per_image: int) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for scenes; valid: {', '.join(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if size < MIN_SIZE:
        raise UserError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if not 1 <= sentences_per_image <= MAX_SENTENCES:
        raise UserError(f"sentences_per_image must be in 1..{MAX_SENTENCES}, got {sentences_per_image}")


def _empty_extras(n: int, size: int, k: int, frames: int | None = None) -> dict[str, np.ndarray]:
    t = () if frames is None else (frames,)
    return {
        "boxes": np.full((n, *t, 2, 4), -1, dtype=np.int32),
        "box_labels": np.full((n, 2), -1, dtype=np.int64),
        "masks": np.zeros((n, *t, 2, size, size), dtype=bool),
        "attributes": np.zeros((n, len(ATTRIBUTE_KINDS)), dtype=np.int64),
        "discriminative": np.zeros((n, len(ATTRIBUTE_KINDS)), dtype=bool),
    }


def _fill_class_extras(out: dict[str, np.ndarray], j: int, classes: list[int]) -> None:
    out["box_labels"][j, : len(classes)] = classes
    out["attributes"][j] = attribute_indices(classes[0])
    kinds = discriminative_kinds(classes[0])
    out["discriminative"][j] = [k in kinds for k in ATTRIBUTE_KINDS]


def _sentence_array(rows: list[list[str]], k: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, k), dtype="<U1")
    return np.array(rows, dtype=str)


class ScenesDataset(ImageDataset):
    """``n`` generated scenes of one split; rows are drawn on demand by ``get_batch`` (nothing is stored)."""

    name = "scenes"

    def __init__(self, split: str = "train", n: int | None = None, *, seed: int = 0, size: int = 64,
                 two_objects: bool = False, sentences_per_image: int = 5):
        _check_options(split, seed, size, sentences_per_image)
        self.split, self.seed, self.size = split, int(seed), int(size)
        self.n = DEFAULT_ROWS[split] if n is None else int(n)
        if self.n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        self.two_objects = bool(two_objects)
        self.sentences_per_image = int(sentences_per_image)
        self.mode = _MODE_TWO if self.two_objects else _MODE_ONE
        self.class_names = list(CLASS_NAMES)
        self.image_shape = (3, self.size, self.size)

    def __len__(self) -> int:
        return self.n

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices must be in [0, {self.n}), got {idx.min()}..{idx.max()}")
        return idx

    def row_id(self, index: int) -> str:
        kind = "scenes2" if self.two_objects else "scenes"
        return f"{kind}/{self.split}/s{self.seed}/{index:07d}"

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        idx = self._indices(indices)
        n, s, k = len(idx), self.size, self.sentences_per_image
        labels = row_labels(self.seed, self.split, self.mode, idx)
        images = np.empty((n, 3, s, s), dtype=np.float32)
        out = _empty_extras(n, s, k)
        sentences = []
        for j, (index, label) in enumerate(zip(idx, labels)):
            rng = _row_rng(self.seed, self.split, self.mode, int(index))
            classes = _scene_classes(rng, int(label), self.two_objects)
            image = sample_background(rng, s)
            styles = [sample_style(rng, c, s) for c in classes]
            for o, (style, (xr, yr)) in enumerate(zip(styles, place_objects(rng, styles, s))):
                mask = draw_object(image, style, rng.uniform(*xr), rng.uniform(*yr))
                out["masks"][j, o] = mask
                out["boxes"][j, o] = tight_box(mask)
            images[j] = add_noise(rng, image)
            _fill_class_extras(out, j, classes)
            sentences.append(make_sentences(classes[0], rng, k))
        return {"id": np.array([self.row_id(int(i)) for i in idx], dtype=str), "image": images, "label": labels,
                **out, "sentences": _sentence_array(sentences, k)}

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed, "two_objects": self.two_objects,
                "sentences_per_image": self.sentences_per_image, "generator_version": GENERATOR_VERSION}


def load_scenes(split: str = "train", *, n: int | None = None, seed: int = 0, size: int = 64,
                two_objects: bool = False, sentences_per_image: int = 5) -> ScenesDataset:
    """Generated attribute scenes (see the module docstring). ``n`` defaults to 6000 / 1000 / 1000 rows for
    train / val / test; ``sentences_per_image`` is the K of the (N, K) ``sentences`` array (1..10, default 5)."""
    return ScenesDataset(split, n, seed=seed, size=size, two_objects=two_objects,
                         sentences_per_image=sentences_per_image)


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
