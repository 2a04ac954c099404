"""The bars the project set itself for its real-data part (Fashion-MNIST), against a main-job run: one row per goal,
with its target, our figure and a verdict computed from the run's own entries on that dataset. Not the papers' claims
(``interp_ray.claims``), which share its ``Finding`` and number formats. A run without a Fashion-MNIST part has no
goals table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from interp_ray.claims import Finding, Stages, Verdict, _num, _pct, _verdict


@dataclasses.dataclass(frozen=True)
class GoalRow:
    goal: str
    target: str
    ours: str
    verdict: Verdict
    why: str = ""

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


GOAL_DATASET = "fashion_mnist"
GOALS: list[tuple[str, str, Callable[[list[tuple[str, dict[str, Any]]]], Finding]]] = []


def goal(name: str, target: str) -> Callable:
    """Register a goal check: a function of the run's (entry, result) pairs on GOAL_DATASET giving a Finding."""
    def deco(fn: Callable[[list[tuple[str, dict[str, Any]]]], Finding]) -> Callable:
        GOALS.append((name, target, fn))
        return fn
    return deco


def evaluate_goals(stages: Stages, kinds: dict[str, str] | None = None) -> list[GoalRow]:
    kinds = kinds or {}
    entries = [(kinds.get(name, name), r) for name, r in stages.items()
               if isinstance(r, dict) and r.get("dataset") == GOAL_DATASET]
    if not entries:
        return []
    rows = []
    for name, target, fn in GOALS:
        f = fn(entries)
        rows.append(GoalRow(name, target, f.ours, f.verdict, f.why))
    return rows


def markdown_goals(rows: list[GoalRow]) -> list[str]:
    met = sum(r.verdict == "met" for r in rows)
    lines = ["## Fashion-MNIST goals", "",
             f"The bars set for the real-data part (70,000 Fashion-MNIST images): {met} of {len(rows)} met.", "",
             "| goal | target | ours | verdict | how |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r.goal, r.target, r.ours, f"**{r.verdict}**", r.why]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _of(entries: list[tuple[str, dict[str, Any]]], kind: str, mode: str | None = None) -> dict[str, Any] | None:
    return next((r for k, r in entries if k == kind and (mode is None or r.get("mode") == mode)), None)


def _missing(what: str) -> Finding:
    return Finding("—", GOAL_DATASET, "not tested", f"the run has no {what} on {GOAL_DATASET}")


@goal("BASE-f test accuracy", "≥ 90%")
def goal_base_f(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    r = _of(entries, "flint", "joint")
    base = ((r or {}).get("test") or {}).get("accuracy_base_f")
    if base is None:
        return _missing("joint FLINT entry with a BASE-f classifier")
    return Finding(_pct(base, 2), GOAL_DATASET, _verdict(base >= 0.90), f"BASE-f = classifier {r.get('classifier')}")


@goal("|acc(FLINT-f) − acc(BASE-f)|", "≤ 1 point")
def goal_gap(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    t = (_of(entries, "flint", "joint") or {}).get("test") or {}
    if "accuracy_base_f" not in t:
        return _missing("joint FLINT entry with a BASE-f classifier")
    gap = abs(t["accuracy_f"] - t["accuracy_base_f"]) * 100
    return Finding(f"{gap:.2f} points (FLINT-f {_pct(t['accuracy_f'], 2)})", GOAL_DATASET, _verdict(gap <= 1.0), "")


@goal("FLINT-g fidelity (joint)", "≥ 90%")
def goal_fidelity(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    t = (_of(entries, "flint", "joint") or {}).get("test")
    if not t:
        return _missing("joint FLINT entry")
    return Finding(_pct(t["fidelity"], 2), GOAL_DATASET, _verdict(t["fidelity"] >= 0.90),
                   f"argmax g = argmax f on the {t.get('samples', '?')} test images")


@goal("FLINT-g fidelity above LIME's, same f and images", "FLINT-g > LIME")
def goal_lime(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    rows = [(r.get("mode"), r["test"]) for k, r in entries if k == "flint" and "lime_fidelity" in (r.get("test") or {})]
    if not rows:
        return _missing("FLINT entry with lime_images")
    ours = "; ".join(f"{mode}: FLINT-g {_pct(t['flint_fidelity_lime_images'], 2)} vs LIME {_pct(t['lime_fidelity'], 2)}"
                     f" ({t['lime_images']} images)" for mode, t in rows)
    return Finding(ours, GOAL_DATASET, _verdict(all(t["flint_fidelity_lime_images"] > t["lime_fidelity"]
                                                    for _, t in rows)), "every FLINT entry that ran LIME")


@goal("CNN-INTE fidelity to the CNN on the test images", "≥ 97%")
def goal_cnn_inte(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    r = _of(entries, "cnn_inte")
    if r is None:
        return _missing("CNN-INTE entry")
    split, s = next(iter(r["splits"].items()))
    return Finding(f"{_pct(s['fidelity'], 2)} ({split}, {s.get('rows', '?')} rows)", GOAL_DATASET,
                   _verdict(s["fidelity"] >= 0.97), f"meta accuracy {_pct(s.get('meta_accuracy'), 2)} vs CNN "
                                                    f"{_pct(s.get('cnn_accuracy'), 2)}")


@goal("deletion AUC: feature inversion ≤ Grad-CAM", "GFI ≤ Grad-CAM")
def goal_deletion(entries: list[tuple[str, dict[str, Any]]]) -> Finding:
    m = (_of(entries, "saliency") or {}).get("methods") or {}
    gfi, cam = (m.get(n, {}).get("deletion_auc") for n in ("feature_inversion", "gradcam"))
    if gfi is None or cam is None:
        return _missing("saliency entry with feature_inversion and gradcam deletion AUC")
    return Finding(f"feature inversion {_num(gfi)}, Grad-CAM {_num(cam)}", GOAL_DATASET, _verdict(gfi <= cam),
                   "mean deletion AUC of the explained class's probability (lower: the mask finds what matters)")
