"""CNN-INTE's pictures: the route of one explanation (input → level-1 → level-2 → votes → label) and the global
view of every cluster. Drawn on matplotlib's Agg canvas directly (no pyplot), imported only when a figure is made."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from interp_ray.explainers.base import Explanation
    from interp_ray.explainers.cnn_inte.explainer import CnnInte


def _new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend switch, safe in threads and servers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _show(ax, image: np.ndarray | None) -> None:
    """Draw one C × H × W image (uint8 or float in [0, 1]) on ``ax``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return
    img = np.asarray(image, dtype=np.float32)
    if image.dtype == np.uint8:
        img = img / 255.0
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0.0, 1.0), interpolation="nearest")


def _mix_text(model: CnnInte, mix: dict[int, int] | None, size: int, top: int = 3) -> str:
    if not mix or not size:
        return "empty"
    parts = sorted(mix.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{model.class_name(c) or c}: {100.0 * n / size:.0f}%" for c, n in parts)


def _image_panel(fig, cell, title: str, images: np.ndarray | None, ids: list[str]) -> None:
    """A titled grid of representative images inside one grid cell (ids as text when no images were kept)."""
    frame = fig.add_subplot(cell)
    frame.axis("off")
    frame.set_title(title, fontsize=9)
    n = len(images) if images is not None else len(ids)
    if n == 0:
        frame.text(0.5, 0.5, "no representatives", ha="center", va="center", fontsize=8)
        return
    cols = min(n, 3)
    grid = cell.subgridspec(math.ceil(n / cols) + 1, cols, height_ratios=[0.15] + [1] * math.ceil(n / cols))
    for k in range(n):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        if images is not None:
            _show(ax, images[k])
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, ids[k], ha="center", va="center", fontsize=5, wrap=True, transform=ax.transAxes)


def route_figure(model: CnnInte, explanation: Explanation, image: np.ndarray | None = None):
    """The route an explanation states, as a figure: input → level-1 cluster → level-2 cluster → votes → label.

    Everything drawn is read from ``explanation.path`` (and the model's stored representatives), so the picture
    can only show the route the explanation gives.
    """
    path = explanation.path
    i, j, votes = int(path["level1"]), int(path["level2"]), path["votes"]
    c1, c2 = model.clusters[i], model.clusters[i]["level2"][j]
    fig = _new_figure(15, 4.2)
    gs = fig.add_gridspec(1, 9, width_ratios=[1.1, 0.3, 2, 0.3, 2, 0.3, 2.2, 0.3, 1.3], wspace=0.15,
                          left=0.02, right=0.98, top=0.8, bottom=0.08)
    ax_in = fig.add_subplot(gs[0, 0])
    _show(ax_in, image)
    ax_in.set_title("input", fontsize=9)
    _image_panel(fig, gs[0, 2], f"level-1 cluster {i}\n{c1['size']} rows · {_mix_text(model, c1['mix'], c1['size'])}",
                 model.representative_images(i), c1["representatives"])
    _image_panel(fig, gs[0, 4], f"level-2 cluster {i}.{j}\n{c2['size']} rows · "
                 f"{_mix_text(model, c2['mix'], c2['size'])}", model.representative_images(i, j),
                 c2["representatives"])
    ax_v = fig.add_subplot(gs[0, 6])
    classes = sorted(votes)
    names = [str(model.class_name(c) or c) for c in classes]
    colours = ["tab:orange" if c == explanation.label else "tab:blue" for c in classes]
    ax_v.barh(range(len(classes)), [votes[c] for c in classes], color=colours)
    ax_v.set_yticks(range(len(classes)), names, fontsize=7)
    ax_v.set_xlim(0, 1)
    ax_v.invert_yaxis()
    ax_v.tick_params(axis="x", labelsize=7)
    ax_v.set_title("random-forest votes", fontsize=9)
    ax_l = fig.add_subplot(gs[0, 8])
    ax_l.axis("off")
    name = explanation.label_name or str(explanation.label)
    ax_l.text(0.5, 0.6, f"label\n{name}", ha="center", va="center", fontsize=16, weight="bold")
    if "cnn_prediction" in explanation.extra:
        cnn = explanation.extra["cnn_prediction"]
        ax_l.text(0.5, 0.25, f"CNN: {model.class_name(cnn) or cnn}", ha="center", va="center", fontsize=9)
    for col in (1, 3, 5, 7):
        ax = fig.add_subplot(gs[0, col])
        ax.axis("off")
        ax.text(0.5, 0.5, "→", ha="center", va="center", fontsize=22)
    fig.suptitle(f"CNN-INTE route ({model.config.layer}): level-1 {i} → level-2 {i}.{j} → "
                 f"votes {votes.get(explanation.label, 0.0):.0%} → label {name}", fontsize=11)
    return fig


def route_diagram(model: CnnInte, explanation: Explanation, image: np.ndarray | None = None,
                  path: str | None = None) -> bytes:
    """``route_figure`` as PNG bytes, also written to ``path`` when given."""
    png = _png(route_figure(model, explanation, image))
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return png


def _strip(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """r × C × H × W uint8 → one C × H × (r·(W+pad)−pad) strip with white gaps: one axes instead of r."""
    r, c, h, w = images.shape
    out = np.full((c, h, r * (w + pad) - pad), 255, dtype=np.uint8)
    for k in range(r):
        out[:, :, k * (w + pad):k * (w + pad) + w] = images[k]
    return out


def global_figure(model: CnnInte, *, path: str | None = None) -> bytes:
    """One row per level-1 cluster: size and class mix, its representatives, its level-2 sizes (PNG bytes)."""
    model._ready()
    k1 = len(model.clusters)
    height = 1.1 * k1 + 0.6
    fig = _new_figure(12, height)
    gs = fig.add_gridspec(k1, 3, width_ratios=[2.0, 5.0, 4.0], left=0.01, right=0.99, top=1 - 0.5 / height,
                          bottom=0.03, hspace=0.4, wspace=0.1)
    for i, c in enumerate(model.clusters):
        ax = fig.add_subplot(gs[i, 0])
        ax.axis("off")
        ax.text(0, 0.5, f"level-1 {i}\n{c['size']} rows\n{_mix_text(model, c['mix'], c['size'])}",
                va="center", fontsize=8)
        imgs = model.representative_images(i)
        ax_img = fig.add_subplot(gs[i, 1])
        if imgs is not None:
            _show(ax_img, _strip(imgs))
        else:
            ax_img.axis("off")
            ax_img.text(0, 0.5, ", ".join(c["representatives"]), va="center", fontsize=6)
        ax2 = fig.add_subplot(gs[i, 2])
        sizes = [s["size"] for s in c["level2"]]
        ax2.bar(range(len(sizes)), sizes, color="tab:gray")
        ax2.set_xticks(range(len(sizes)), [f"{i}.{j}" for j in range(len(sizes))], fontsize=6)
        ax2.tick_params(axis="y", labelsize=6)
    fig.suptitle(f"CNN-INTE global view ({model.config.layer}): level-1 clusters, representatives, level-2 sizes",
                 fontsize=10)
    png = _png(fig)
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return png


__all__ = ["global_figure", "route_diagram", "route_figure"]
