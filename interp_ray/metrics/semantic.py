"""Scores for the semantic (Dong et al.) explainer on generated scene clips, whose true attributes are known.

Used by the pipeline's semantic stage and ``benchmarks/semantic_eval.py``. ``items`` are
``interp_ray.data.video_features.VideoItems`` with ``attributes`` (N × 4 attribute value indices).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from interp_ray.data.scenes import (ATTRIBUTE_KINDS, ATTRIBUTE_VALUES, ATTRIBUTE_VOCAB, attribute_mentions,
                                    discriminative_attributes)
from interp_ray.errors import UserError


def _require_attributes(items) -> None:
    if getattr(items, "attributes", None) is None:
        raise UserError("these videos carry no ground-truth attributes (generated scene clips do)")


def clip_attributes(items) -> list[dict[str, str]]:
    """Each clip's attribute kind → value word (shape, colour, pattern, size)."""
    _require_attributes(items)
    return [{k: ATTRIBUTE_VALUES[k][int(v)] for k, v in zip(ATTRIBUTE_KINDS, row)} for row in items.attributes]


def caption_faithfulness(captions, items) -> float:
    """Share of captions naming every discriminative attribute of the clip's class and nothing untrue."""
    ok = 0
    for cap, label, attrs in zip(captions, items.labels, clip_attributes(items)):
        named = attribute_mentions(cap)
        ok += set(discriminative_attributes(int(label))) <= named and named <= set(attrs.values())
    return ok / max(len(captions), 1)


def label_precision(ex: Any, train, presence: float = 0.5) -> dict:
    """(b): confident labels that are attributes of ≥ ``presence`` of their top-activating clips."""
    attrs = clip_attributes(train)
    confident = [n for n in ex.neurons if n.confident]
    correct = [n for n in confident
               if np.mean([n.label in attrs[i].values() for i in n.top_items]) >= presence]

    def present_share(n) -> float:   # share of the attribute words that would count as correct for this neuron
        return np.mean([np.mean([w in attrs[i].values() for i in n.top_items]) >= presence for w in ATTRIBUTE_VOCAB])

    return {"neurons": len(ex.neurons), "alive": sum(bool(n.top_items) for n in ex.neurons),
            "confident": len(confident), "correct": len(correct),
            "share": len(correct) / len(confident) if confident else float("nan"),
            "chance": float(np.mean([present_share(n) for n in confident])) if confident else float("nan"),
            "labels": sorted({n.label for n in confident})}
