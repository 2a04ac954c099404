"""Scenes: drawing one object (shape, colour, pattern, size) and placing objects on a background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from interp_ray.data.scenes.tables import CLASS_NAMES, CLASSES
from interp_ray.errors import UserError

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
