"""FLINT pictures as PNG: per relevant (class, attribute) pair, the maximum-activating samples (MAS) and the
activation-maximisation-with-partial-initialisation (AM+PI) image grown from each; per input, its local
interpretation sheet, composed from the tiles the checkpoint stores (``pictures``) unless AM+PI settings are given.
Matplotlib's object API on the Agg canvas (no pyplot state, no display), as ``interp_ray.plots``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from interp_ray.explainers.flint.am import activation_maximisation
from interp_ray.explainers.flint.config import AMSection
from interp_ray.explainers.flint.interpretation import (collect, compute_global_relevance, global_interpretation,
                                                        max_activating)


if TYPE_CHECKING:
    from interp_ray.explainers.flint.explainer import FlintExplainer


def _display(image: np.ndarray, bounds: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """C×H×W (or H×W) → H×W or H×W×3 in [0, 1], clipped to ``bounds`` then rescaled."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    lo, hi = float(bounds[0]), float(bounds[1])
    return (np.clip(img, lo, hi) - lo) / max(hi - lo, 1e-12)


def _imshow(ax, image, bounds=(0.0, 1.0), title: str = "") -> None:
    img = _display(image, bounds)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return str(path)


def save_pair_picture(path: str | os.PathLike, mas_images: np.ndarray, am_images: np.ndarray, *, title: str = "",
                      bounds: Sequence[float] = (0.0, 1.0), dpi: int = 100) -> str:
    """Top row: the MAS (l×C×H×W); bottom row: the AM+PI image grown from each. Returns the PNG's path."""
    n = len(mas_images)
    fig = _figure(1.6 * n, 3.6, dpi)
    axes = fig.subplots(2, n, squeeze=False)
    for k in range(n):
        _imshow(axes[0, k], mas_images[k], bounds, f"MAS {k + 1}")
        _imshow(axes[1, k], am_images[k], bounds, f"AM+PI {k + 1}")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def save_local_sheet(path: str | os.PathLike, image: np.ndarray, relevance: Sequence[float], tau: float,
                     **kwargs: Any) -> str:
    """``local_sheet_figure`` as a PNG file. Returns its path."""
    return _save(local_sheet_figure(image, relevance, tau, **kwargs), path)


def local_sheet_figure(image: np.ndarray, relevance: Sequence[float], tau: float, *,
                       attribute_names: Sequence[str], relevant: Sequence[str], am_images: dict[str, np.ndarray],
                       mas: dict[str, np.ndarray] | None = None, title: str = "",
                       attribute_labels: dict[str, str] | None = None, bounds: Sequence[float] = (0.0, 1.0),
                       dpi: int = 100):
    """The input, a bar chart of every attribute's relevance with the 1/τ line, then one row per relevant attribute:
    its AM+PI image(s) (``am_images[name]``: one C×H×W, or l×C×H×W), then its maximum-activating samples."""
    mas = mas or {}
    am_images = {k: np.asarray(v) if np.asarray(v).ndim == 4 else np.asarray(v)[None] for k, v in am_images.items()}
    n_mas = max((len(v) for v in mas.values()), default=0)
    n_am = max((len(v) for v in am_images.values()), default=1)
    cols = max(n_am + n_mas, 4)
    rows = 1 + len(relevant)
    fig = _figure(1.5 * cols, 1.7 * rows + 0.3, dpi)
    grid = fig.add_gridspec(rows, cols)
    _imshow(fig.add_subplot(grid[0, 0]), image, bounds, "input")
    ax = fig.add_subplot(grid[0, 1:])
    rel = np.asarray(relevance, dtype=np.float64)
    colours = ["tab:green" if name in relevant else "tab:gray" for name in attribute_names]
    ax.bar(np.arange(len(rel)), rel, color=colours)
    ax.axhline(1.0 / tau, color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(rel)))
    ax.set_xticklabels([n.replace("phi_", "") for n in attribute_names], fontsize=5)
    ax.set_ylabel("relevance", fontsize=7)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title(title or f"relevant attributes (tau={tau:g})", fontsize=7)
    for r, name in enumerate(relevant, start=1):
        label = name if not attribute_labels or name not in attribute_labels else f"{name}\n{attribute_labels[name]}"
        j = list(attribute_names).index(name)
        for k, a in enumerate(am_images[name]):
            _imshow(fig.add_subplot(grid[r, k]), a, bounds, f"{label}\nAM+PI  r={rel[j]:.2f}" if k == 0
                    else f"AM+PI {k + 1}")
        for k, m in enumerate(mas.get(name, [])):
            _imshow(fig.add_subplot(grid[r, n_am + k]), m, bounds, f"MAS {k + 1}")
    fig.tight_layout()
    return fig


def write_local_sheet(explainer: FlintExplainer, image: np.ndarray, path: str | os.PathLike, *,
                      tau: float | None = None, am: AMSection | None = None, target: int = -1) -> tuple[str, Any]:
    """Explain one image (C×H×W in [0, 1]) and write its local interpretation sheet. Returns (path, Explanation).
    ``am`` None composes it from the stored tiles; given, AM+PI is grown from the image with it (``local_sheet``)."""
    fig, exp = local_sheet(explainer, image, tau=tau, am=am, target=target)
    return _save(fig, path), exp


def local_sheet(explainer: FlintExplainer, image: np.ndarray, *, tau: float | None = None,
                am: AMSection | None = None, target: int = -1) -> tuple[Any, Any]:
    """Explain one image and draw its local interpretation sheet (``local_sheet_figure``). Returns
    (Figure, Explanation). With ``am`` None, each relevant attribute's row is the explainer's stored tiles
    (``FlintExplainer.tiles_for``: the AM+PI images grown once from the MAS of the explained class, or of the attribute,
    then those MAS); with ``am``, its AM+PI image is grown from this input with those settings (the per-image
    picture: hundreds of optimiser steps per attribute) beside the attribute's MAS."""
    tau = tau or explainer.tau
    exp = explainer.explain({"image": np.asarray(image, dtype=np.float32)[None]}, {"tau": tau, "target": target})[0]
    relevant = list(exp.attributes or {})
    idx = [explainer.attribute_names.index(name) for name in relevant]
    if am is None:
        tiles = explainer.tiles_for(exp.label, idx)
        mas = {name: t[0] for name, t in zip(relevant, tiles)}
        am_images = {name: t[1] for name, t in zip(relevant, tiles)}
    else:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)[None])
        am_images = {name: activation_maximisation(explainer.flint, j, x, am)[0].cpu().numpy()
                     for name, j in zip(relevant, idx)}
        mas = ({name: explainer.mas_images[j] for name, j in zip(relevant, idx)}
               if explainer.mas_images is not None else {})
    bounds = (am or explainer.am_settings()).bounds
    title = sheet_title(exp, tau)
    fig = local_sheet_figure(image, exp.extra["relevance"], tau, attribute_names=explainer.attribute_names,
                             relevant=relevant, am_images=am_images, mas=mas, title=title,
                             attribute_labels=explainer.attribute_labels(), bounds=bounds)
    return fig, exp


def sheet_title(exp: Any, tau: float) -> str:
    """A local sheet's title: g's class and probability, f's class, τ."""
    return (f"g: {exp.label_name or exp.label} (p={exp.extra['interpreter_probability']:.2f}), "
            f"f: {exp.extra['predictor_class_name'] or exp.extra['predictor_class']}, tau={tau:g}")


def write_global_pictures(explainer: FlintExplainer, ds, out_dir: str | os.PathLike, *, tau: float | None = None,
                          am: AMSection | None = None, n_mas: int = 3, samples: int = 1020, max_pairs: int = 40,
                          seed: int = 21, random_init: bool = False) -> list[dict[str, Any]]:
    """One PNG per relevant (class, attribute) pair of the global interpretation: the pair's MAS (top ``n_mas``
    samples of the true class by φ_j, from a random subset of ``ds``) over their AM+PI images. ``random_init`` adds,
    per attribute that appears, an AM image grown from U(0, 1) noise (the code makes these for CUB only; on the
    digits model several come out flat, as the attribute is inactive on noise). Returns one record per picture.
    ``am`` defaults to the checkpoint's AM+PI settings."""
    am = am or explainer.am_settings()
    tau = tau or explainer.tau
    flint = explainer.flint
    rel = flint.global_relevance.cpu().numpy()
    if not rel.any():  # a model saved without relevance: compute it now on the same subset
        rel, idx, data = compute_global_relevance(flint, ds, samples=samples, seed=seed)
    else:
        idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:samples])
        data = collect(flint, ds.loader(256, sampler=[int(i) for i in idx]))
    out_dir = Path(out_dir)
    records: list[dict[str, Any]] = []
    attrs_seen: list[int] = []
    for c, j, r in global_interpretation(rel, tau)[:max_pairs]:
        rows = max_activating(data["phi"], data["labels"], j, cls=c, count=n_mas)
        if not len(rows):
            continue
        images = ds.get_batch(idx[rows])["image"]
        grown = activation_maximisation(flint, j, torch.from_numpy(np.ascontiguousarray(images)), am).cpu().numpy()
        name = explainer.attribute_names[j]
        cname = explainer._class_name(c) or str(c)
        path = save_pair_picture(out_dir / f"class{c:02d}_{name}.png", images, grown, bounds=am.bounds,
                                 title=f"class {cname} - {name} (r={r:.2f})")
        records.append({"class": c, "class_name": cname, "attribute": name, "relevance": r, "path": path,
                        "mas_rows": [str(i) for i in idx[rows]],
                        # what the picture shows, measured: φ_j recomputed on the pictured images, beside its mean
                        # over the random subset (all classes) the MAS were drawn from
                        "activation": {"mas": _mean_attribute(flint, images, j), "am": _mean_attribute(flint, grown, j),
                                       "random": float(data["phi"][:, j].mean())}})
        if j not in attrs_seen:
            attrs_seen.append(j)
    if random_init:
        for j in attrs_seen:
            img = activation_maximisation(flint, j, None, am, seed=seed)[0].cpu().numpy()
            fig = _figure(2.0, 2.2, 100)
            _imshow(fig.add_subplot(1, 1, 1), img, am.bounds, f"{explainer.attribute_names[j]} AM (random init)")
            fig.tight_layout()
            records.append({"class": None, "attribute": explainer.attribute_names[j], "relevance": None,
                            "path": _save(fig, out_dir / f"random_init_{explainer.attribute_names[j]}.png")})
    return records


@torch.no_grad()
def _mean_attribute(flint, images: np.ndarray, j: int) -> float:
    """Mean φ_j over ``images`` (N×C×H×W), through the model in eval mode."""
    was = flint.training
    flint.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return float(flint.attributes(x.to(next(flint.parameters()).device))[:, j].mean())
    finally:
        flint.train(was)


def png_pixel_variance(path: str | os.PathLike, *, ignore_background: bool = True) -> float:
    """Variance of a PNG's pixel values (0..1). With ``ignore_background``, the figure's white background is left
    out, so what is measured is the panels (and the thin text): a picture whose panels are blank (constant) scores
    near 0.01–0.03, one with real image content above 0.1."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    if ignore_background:
        arr = arr[~(arr == 1.0).all(-1)]
    return float(arr.var()) if arr.size else 0.0
