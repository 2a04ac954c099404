"""The CNN-INTE reproduction stage's verdicts (jobs/reproduce/stages/cnn_inte.py) flip with the seeds' numbers."""

from __future__ import annotations

from stage_rows import SEEDS, by_claim

from jobs.reproduce.stages import cnn_inte


def _cnn_inte(meta: list[float], cnn: list[float]):
    return {s: {"digits": {"test": {"rows": 360, "meta_accuracy": meta[i], "cnn_accuracy": cnn[i],
                                    "fidelity": 0.98},
                           "classifier": {"test_accuracy": cnn[i]}, "settings": {"k1": 10}, "grid": [{}, {}],
                           "val_rows": 180, "fit_rows": 1257,
                           "routes": {"explained": 3, "consistent": 3, "diagrams": 3}}}
            for i, s in enumerate(SEEDS)}


def test_cnn_inte_same_accuracy_flips_with_the_gap():
    rows = by_claim(cnn_inte.rows(_cnn_inte([0.985, 0.987, 0.986], [0.988] * 3), {}))
    assert rows["CNN-INTE 1"][0]["verdict"] == "met" and rows["CNN-INTE 2"][0]["verdict"] == "met"
    rows = by_claim(cnn_inte.rows(_cnn_inte([0.97, 0.971, 0.972], [0.988] * 3), {}))
    assert rows["CNN-INTE 1"][0]["verdict"] == "not met"
    broken = _cnn_inte([0.985] * 3, [0.988] * 3)
    broken[1]["digits"]["routes"]["consistent"] = 2
    assert by_claim(cnn_inte.rows(broken, {}))["CNN-INTE 2"][0]["verdict"] == "not met"
