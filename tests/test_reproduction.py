"""The reproduction job's seed statistics and verdict rule (interp_ray/reproduction.py): each rule flips with its
numbers."""

import math

import pytest

from interp_ray.reproduction import (CLAIM_IDS, beyond_spread, fmt_mean_std, mean_std, not_below, ordered,
                                     within_spread)


def test_mean_std_is_the_sample_std_and_zero_for_one_seed():
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)  # ddof = 1: sqrt((1 + 0 + 1) / 2)
    assert mean_std([0.7]) == (0.7, 0.0)


def test_mean_std_refuses_nothing_and_nan():
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
    with pytest.raises(ValueError, match="NaN"):
        mean_std([0.5, math.nan])


def test_fmt_mean_std():
    assert fmt_mean_std([0.91, 0.92, 0.93], pct=True) == "92.0 ± 1.0% (n=3)"
    assert fmt_mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (n=3)"


def test_beyond_spread_flips_when_the_gap_shrinks_below_the_spreads():
    a, b = [0.90, 0.91, 0.92], [0.80, 0.81, 0.82]  # gap 0.10, spreads 0.01 + 0.01
    assert beyond_spread(a, b) and not beyond_spread(b, a)
    assert not beyond_spread([0.83, 0.84, 0.85], [0.80, 0.82, 0.84])  # gap 0.02 < 0.01 + 0.02
    assert beyond_spread([0.83, 0.84, 0.85], [0.80, 0.805, 0.81])  # gap 0.035 > 0.01 + 0.005
    # a noisier a swallows the same gap of means
    assert not beyond_spread([0.70, 0.91, 1.12], b)
    # one seed per side: a plain strict ">"
    assert beyond_spread([0.5], [0.4]) and not beyond_spread([0.5], [0.5])


def test_within_spread_and_not_below():
    assert within_spread([0.90, 0.91, 0.92], [0.905, 0.915, 0.925])
    assert not within_spread([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
    assert within_spread([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], tolerance=0.09)
    assert not_below([0.95], [0.90]) and not_below([0.90, 0.91, 0.92], [0.91, 0.92, 0.93])
    assert not not_below([0.80, 0.81, 0.82], [0.90, 0.91, 0.92])


def test_ordered():
    assert ordered([[3.0, 3.1], [2.0, 2.1], [1.0, 1.1]])
    assert not ordered([[3.0, 3.1], [1.0, 1.1], [2.0, 2.1]])


def test_claim_ids_are_the_22_of_papers_md():
    assert len(CLAIM_IDS) == len(set(CLAIM_IDS)) == 22
    assert CLAIM_IDS[0] == "InterpNET 1" and "Dong 4" in CLAIM_IDS and CLAIM_IDS[-1] == "GFI 6"
