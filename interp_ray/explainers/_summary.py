"""An ``Explanation`` as text for a reader: the default ``Explainer.summary``'s lines (a method with more to say
builds on them, FLINT) and the one sentence saying whose prediction it explains, re-exported by
``interp_ray.explainers.base``.

Kept apart from the explainer protocol so its module stays readable (issue #34); it needs ``Explanation`` only as a
type, so the protocol's module imports this one and not the other way round.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:
    from interp_ray.explainers.base import Explanation


def summary_lines(e: Explanation, method: str, *, head: str = "", skip: Iterable[str] = ()) -> list[str]:
    """The default ``summary``'s lines: ``method -> class L 'name'`` (+ ``head``), then each filled field, then the
    scalar extras not in ``skip``."""
    name = f" '{e.label_name}'" if e.label_name is not None else ""
    lines = [f"{method} -> class {e.label}{name}{head}"]
    ex = e.extra or {}
    if e.attributes is not None:
        tau = ex.get("tau")
        lines.append(f"  relevant attributes{f' (tau={tau:g}, relevance > {1 / tau:.3f})' if tau else ''}:"
                     + ("" if e.attributes else " none"))
        labels = ex.get("attribute_labels") or {}
        for attr, value in e.attributes.items():
            lines.append(f"    {attr:<10} {value:+.3f}" + (f"   ~ {labels[attr]}" if attr in labels else ""))
    if e.sentence:
        lines.append(f"  sentence: {e.sentence}")
    if e.saliency is not None:
        sal = np.asarray(e.saliency)
        r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
        lines.append(f"  saliency {sal.shape[0]}x{sal.shape[1]}: peak at row {r}, column {c}; mean {sal.mean():.3f}")
    if e.path:
        lines.append(f"  path: {json.dumps(e.path, default=str)}")
    if e.neurons:
        lines.append(f"  neurons: {json.dumps(e.neurons)}")
    if e.explains:
        lines.append(f"  {explains_words(e.explains)}")
    skip = set(skip) | {"tau"}
    scalars = {k: v for k, v in ex.items() if k not in skip and isinstance(v, (int, float, str, bool))}
    if scalars:
        lines.append("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in scalars.items()))
    return lines


def explains_words(w: Mapping[str, Any]) -> str:
    """``Explanation.explains`` in one sentence (a summary's line; the web page words it the same way)."""
    def said(prefix: str = "") -> str:
        name = w.get(f"{prefix}label_name")
        return f"{name if name is not None else w.get(f'{prefix}label')} ({100 * w[f'{prefix}probability']:.1f}%)"

    if w.get("model") == "classifier":
        return f"explains the classifier's prediction: {said()}"
    text = f"explains the prediction of {w.get('about')}, not the classifier's: {said()}"
    if w.get("classifier_label") is not None:
        text += (f"; the classifier predicts {said('classifier_')}, "
                 f"{'the same class' if w.get('agrees') else 'another class'}")
    return text
