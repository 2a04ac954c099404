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


def caption_errors(caption: str, label: int, attrs: dict[str, str]) -> tuple[list[str], list[str]]:
    """What makes a caption wrong (``caption_faithfulness``'s rule): (untrue, missing) — the attribute words it names
    that the clip does not have, and the discriminative attributes of its class it does not name."""
    named = attribute_mentions(caption)
    return sorted(named - set(attrs.values())), [w for w in discriminative_attributes(label) if w not in named]


def correcting_edit(ex: Any, caption: str, label: int, attrs: dict[str, str]) -> tuple[list[str], list[str]]:
    """The edit a user would make from the neuron labels, (suppress, boost): suppress the neurons labelled with each
    untrue word, boost those labelled with the clip's true value of that word's kind and with each missing word.
    Words no confidently labelled neuron carries are left out (there is nothing to edit for them)."""
    labelled = {n.label for n in ex.neurons if n.confident}
    untrue, missing = caption_errors(caption, label, attrs)
    suppress = [w for w in untrue if w in labelled]
    boost: list[str] = []
    for w in [attrs[ATTRIBUTE_VOCAB[w]] for w in suppress] + missing:
        if w in labelled and w not in boost:
            boost.append(w)
    return suppress, boost


def first_correction(ex: Any, items, captions: list[str]) -> dict[str, Any] | None:
    """The edit example, chosen by rule, not by hand: the first clip (in the items' order) whose caption is wrong
    (``caption_errors``) and has a wrong or missing word that a confidently labelled neuron carries. Applies
    ``correcting_edit`` with ``ex.revise`` and says whether it worked: the suppressed words gone, the boosted ones
    named, the caption no longer wrong. None when no wrong caption can be edited."""
    attrs = clip_attributes(items)
    for i, (caption, label) in enumerate(zip(captions, items.labels)):
        untrue, missing = caption_errors(caption, int(label), attrs[i])
        if not (untrue or missing):
            continue
        suppress, boost = correcting_edit(ex, caption, int(label), attrs[i])
        if not (suppress or boost):
            continue
        before, after = ex.revise(items.features[i:i + 1], items.mask[i:i + 1], wrong=suppress, right=boost)
        named = attribute_mentions(after[0])
        still_untrue, still_missing = caption_errors(after[0], int(label), attrs[i])
        return {"id": str(items.ids[i]), "untrue": untrue, "missing": missing, "suppress": suppress, "boost": boost,
                "before": before[0], "after": after[0], "suppressed_gone": not set(suppress) & named,
                "boosted_named": set(boost) <= named, "corrected": not (still_untrue or still_missing)}
    return None
