"""Figures as PNG files. Matplotlib's object API with the Agg canvas, chosen inside each function: nothing here
touches pyplot's global state or needs a display, so it is safe in Ray workers and Serve replicas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from interp_ray.errors import UserError


def _image_hwc(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):  # C×H×W → H×W×C
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise UserError(f"image must be C×H×W, H×W×C or H×W, got shape {np.shape(image)}")
    return np.clip(img, 0.0, 1.0)


def figure_png(fig) -> bytes:
    """A Figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _save(fig, path: str | os.PathLike) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return str(path)


def save_overlays(path: str | os.PathLike, image: np.ndarray, maps: Sequence[np.ndarray], *,
                  titles: Sequence[str] | None = None, boxes: np.ndarray | None = None, alpha: float = 0.5,
                  cmap: str = "jet", dpi: int = 100) -> str:
    """``overlays_figure`` as a PNG file. Returns its path."""
    return _save(overlays_figure(image, maps, titles=titles, boxes=boxes, alpha=alpha, cmap=cmap, dpi=dpi), path)


def overlays_figure(image: np.ndarray, maps: Sequence[np.ndarray], *, titles: Sequence[str] | None = None,
                    boxes: np.ndarray | None = None, alpha: float = 0.5, cmap: str = "jet", dpi: int = 100):
    """One row of panels: the image, then each saliency map laid over it (with its peak marked and the
    ground-truth ``boxes`` (x0, y0, x1, y1, exclusive) drawn when given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    img = _image_hwc(image)
    h, w = img.shape[:2]
    for m in maps:
        if np.shape(m) != (h, w):
            raise UserError(f"saliency map has shape {np.shape(m)}, the image is {h}×{w}")
    titles = list(titles) if titles is not None else [""] * len(maps)
    fig = Figure(figsize=(2.2 * (len(maps) + 1), 2.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    for ax, m, title in zip(axes[1:], maps, titles):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.imshow(np.asarray(m, dtype=np.float32), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0,
                  interpolation="bilinear")
        r, c = np.unravel_index(int(np.argmax(m)), (h, w))
        ax.plot([c], [r], marker="+", color="white", markersize=8, mew=2)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        for b in (np.asarray(boxes).reshape(-1, 4) if boxes is not None else []):
            if b[2] > b[0] and b[3] > b[1]:
                ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                       edgecolor="white", linewidth=1))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_overlay(path: str | os.PathLike, image: np.ndarray, saliency: np.ndarray, *, title: str = "",
                 boxes: np.ndarray | None = None, alpha: float = 0.5) -> str:
    """The image and one saliency map over it, as a PNG."""
    return save_overlays(path, image, [saliency], titles=[title], boxes=boxes, alpha=alpha)


def save_captioned(path: str | os.PathLike, image: np.ndarray, text: str, *, title: str = "", dpi: int = 100) -> str:
    """``captioned_figure`` as a PNG file. Returns its path."""
    return _save(captioned_figure(image, text, title=title, dpi=dpi), path)


def captioned_figure(image: np.ndarray, text: str, *, title: str = "", dpi: int = 100):
    """The image with a sentence under it (a captioner's explanation)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = _image_hwc(image)
    fig = Figure(figsize=(3.6, 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.2, 0.3, 0.6, 0.6))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    fig.text(0.5, 0.14, "\n".join(textwrap.wrap(text, 48)), ha="center", va="center", fontsize=8, wrap=True)
    return fig
