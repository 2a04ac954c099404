"""The InterpNET reproduction stage's verdicts (jobs/reproduce/stages/interpnet.py) flip with the seeds' numbers."""

from __future__ import annotations

from stage_rows import SEEDS, by_claim

from jobs.reproduce.stages import interpnet


def _interpnet(meteor: dict[str, list[float]], unchanged: bool = True):
    per_seed = {}
    for i, s in enumerate(SEEDS):
        per_seed[s] = {"variants": {v: {"meteor_segment_mean": m[i], "meteor": m[i] - 0.05, "bleu4": 0.4,
                                        "cider": 1.2, "accuracy": 0.9, "classifier_unchanged": unchanged}
                                    for v, m in meteor.items()},
                       "test_images": 1000, "image_model": {"test_accuracy": 0.998},
                       "train_rows": {"train": 3000, "test": 1000}, "explainer_epochs": 5, "classifier_epochs": 30}
    return per_seed


PAPER_ORDER = {"interpnet_2": [0.45, 0.46, 0.45], "interpnet_1": [0.42, 0.43, 0.42],
               "interpnet_0": [0.39, 0.40, 0.39], "captioning": [0.36, 0.37, 0.36], "interpnet_3": [0.30, 0.31, 0.30]}


def test_interpnet_ordering_and_worst_flip_with_the_numbers():
    rows = by_claim(interpnet.rows(_interpnet(PAPER_ORDER), {}))
    assert [r["verdict"] for r in rows["InterpNET 3"]] == ["met"] * 4 + ["not tested"]   # 2 protocols × 2, GVE
    assert rows["InterpNET 1"][0]["verdict"] == "met" and rows["InterpNET 2"][0]["verdict"] == "not tested"
    swapped = dict(PAPER_ORDER, interpnet_0=[0.36, 0.37, 0.36], captioning=[0.39, 0.40, 0.39])  # _0 below captioning
    rows = by_claim(interpnet.rows(_interpnet(swapped), {}))
    ordering, worst = rows["InterpNET 3"][0], rows["InterpNET 3"][1]
    assert ordering["verdict"] == "not met" and "_0 > captioning" in ordering["how"]
    assert worst["verdict"] == "met"
    noisy = dict(PAPER_ORDER, interpnet_3=[0.20, 0.45, 0.33])   # _3 lowest on average, but within the spread
    assert by_claim(interpnet.rows(_interpnet(noisy), {}))["InterpNET 3"][1]["verdict"] == "not met"


def test_interpnet_1_fails_when_a_classifier_changed():
    per_seed = _interpnet(PAPER_ORDER)
    per_seed[2]["variants"]["interpnet_1"]["classifier_unchanged"] = False
    row = by_claim(interpnet.rows(per_seed, {}))["InterpNET 1"][0]
    assert row["verdict"] == "not met" and "14 of 15" in row["ours"]
