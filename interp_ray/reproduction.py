"""Seed statistics and the verdict rule of the reproduction job (``jobs.reproduce``), Ray-free so every stage and the
claims table can share them.

A comparison claim is measured over several seeds (3 in ``configs/reproduce.yaml``). Its figure is written as
mean ± std, the std being the sample standard deviation (ddof = 1; 0 for a single seed), and the rule is:

    **a comparison "a > b" is met when mean(a) − mean(b) > std(a) + std(b)**

i.e. the gap between the means is larger than the two seeds' spreads put end to end, so no choice of one seed from
each side inside its mean ± std could reverse the order. With one seed per side both spreads are 0 and the rule falls
back to a plain strict ">". It is deliberately stricter than "means ordered", and looser than a t-test, which three
seeds cannot power: a gap the spreads swallow is reported "not met", not as a coin toss.

``CLAIM_IDS`` lists every claim of PAPERS.md's "What a faithful reimplementation must reproduce", so the report can
show a claim no stage covers instead of silently leaving it out.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

# Every claim ID of PAPERS.md ("What a faithful reimplementation must reproduce"), in the paper order the report keeps.
CLAIM_IDS: tuple[str, ...] = (
    *(f"InterpNET {i}" for i in range(1, 4)),
    *(f"Dong {i}" for i in range(1, 5)),
    *(f"FLINT {i}" for i in range(1, 7)),
    *(f"CNN-INTE {i}" for i in range(1, 4)),
    *(f"GFI {i}" for i in range(1, 7)),
)

VERDICTS = ("met", "not met", "not tested")


def _values(values: Iterable[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError("mean ± std of no values: a stage must report at least one seed")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"NaN among seed values {out}: a stage measured nothing for some seed")
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of one figure over seeds; the std of a single seed is 0."""
    xs = _values(values)
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var)


def fmt_mean_std(values: Iterable[float], pct: bool = False, digits: int | None = None) -> str:
    """``"0.912 ± 0.004 (n=3)"``, or ``"91.2 ± 0.4% (n=3)"`` with ``pct`` (values given as fractions in [0, 1])."""
    xs = _values(values)
    mean, std = mean_std(xs)
    if pct:
        d = 1 if digits is None else digits
        return f"{100 * mean:.{d}f} ± {100 * std:.{d}f}% (n={len(xs)})"
    d = 3 if digits is None else digits
    return f"{mean:.{d}f} ± {std:.{d}f} (n={len(xs)})"


def beyond_spread(a_values: Iterable[float], b_values: Iterable[float]) -> bool:
    """True when mean(a) > mean(b) beyond the seeds' spread: mean(a) − mean(b) > std(a) + std(b) (module docstring)."""
    ma, sa = mean_std(a_values)
    mb, sb = mean_std(b_values)
    return ma - mb > sa + sb


def within_spread(a_values: Iterable[float], b_values: Iterable[float], tolerance: float = 0.0) -> bool:
    """True when a and b are not distinguishable: |mean(a) − mean(b)| ≤ std(a) + std(b) + tolerance. The rule for
    "does not degrade" / "equals" claims, the mirror of ``beyond_spread``; ``tolerance`` is the claim's stated slack."""
    ma, sa = mean_std(a_values)
    mb, sb = mean_std(b_values)
    return abs(ma - mb) <= sa + sb + tolerance


def not_below(a_values: Iterable[float], b_values: Iterable[float], tolerance: float = 0.0) -> bool:
    """True when a is not worse than b beyond the spread: mean(b) − mean(a) ≤ std(a) + std(b) + tolerance, i.e.
    ``beyond_spread(b, a)`` fails even after granting the claim's slack (claims such as "should not degrade")."""
    ma, sa = mean_std(a_values)
    mb, sb = mean_std(b_values)
    return mb - ma <= sa + sb + tolerance


def ordered(series: Sequence[Iterable[float]]) -> bool:
    """True when each series beats the next beyond the spread: a > b > c … (an ordering claim)."""
    lists = [list(s) for s in series]
    return all(beyond_spread(a, b) for a, b in zip(lists, lists[1:]))


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"
