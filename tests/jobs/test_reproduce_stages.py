"""The reproduction stages' verdicts (jobs/reproduce/stages): each flips with the seeds' numbers it reads. The
measurements are the ones run() returns (tests/jobs/test_reproduce.py runs them for real at smoke size)."""

from __future__ import annotations

import copy

from jobs.reproduce.stages import cnn_inte, dong, interpnet

SEEDS = (0, 1, 2)


def _by_claim(rows):
    out = {}
    for r in rows:
        out.setdefault(r["claim"], []).append(r)
    return out


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
    rows = _by_claim(interpnet.rows(_interpnet(PAPER_ORDER), {}))
    assert [r["verdict"] for r in rows["InterpNET 3"]] == ["met"] * 4 + ["not tested"]   # 2 protocols × 2, GVE
    assert rows["InterpNET 1"][0]["verdict"] == "met" and rows["InterpNET 2"][0]["verdict"] == "not tested"
    swapped = dict(PAPER_ORDER, interpnet_0=[0.36, 0.37, 0.36], captioning=[0.39, 0.40, 0.39])  # _0 below captioning
    rows = _by_claim(interpnet.rows(_interpnet(swapped), {}))
    ordering, worst = rows["InterpNET 3"][0], rows["InterpNET 3"][1]
    assert ordering["verdict"] == "not met" and "_0 > captioning" in ordering["how"]
    assert worst["verdict"] == "met"
    noisy = dict(PAPER_ORDER, interpnet_3=[0.20, 0.45, 0.33])   # _3 lowest on average, but within the spread
    assert _by_claim(interpnet.rows(_interpnet(noisy), {}))["InterpNET 3"][1]["verdict"] == "not met"


def test_interpnet_1_fails_when_a_classifier_changed():
    per_seed = _interpnet(PAPER_ORDER)
    per_seed[2]["variants"]["interpnet_1"]["classifier_unchanged"] = False
    row = _by_claim(interpnet.rows(per_seed, {}))["InterpNET 1"][0]
    assert row["verdict"] == "not met" and "14 of 15" in row["ours"]


def _dong(on: dict, off: dict):
    def measured(m):
        return {"scores": {"meteor_segment_mean": m["meteor"], "meteor": m["meteor"], "cider": m["cider"]},
                "purity": {"lift": m["purity"]}, "label_precision": {"share": 0.8}, "probe_accuracy": m["probe"],
                "edits": {"rate": m.get("rate"), "control_rate": m.get("control"), "wrong": 40, "applicable": 30},
                "train_clips": 1200, "test_clips": 240, "epochs": 10}

    return {s: {"lambda_0.1": measured({k: v[i] if isinstance(v, list) else v for k, v in on.items()}),
                "lambda_0": measured({k: v[i] if isinstance(v, list) else v for k, v in off.items()})}
            for i, s in enumerate(SEEDS)}


ON = {"meteor": [0.30, 0.31, 0.30], "cider": [1.0, 1.1, 1.0], "purity": [0.40, 0.41, 0.42],
      "probe": [0.95, 0.96, 0.95], "rate": [0.30, 0.35, 0.40], "control": [0.02, 0.03, 0.02]}
OFF = {"meteor": [0.30, 0.31, 0.31], "cider": [1.0, 1.05, 1.1], "purity": [0.20, 0.21, 0.22],
       "probe": [0.95, 0.95, 0.96]}


def test_dong_verdicts_flip_with_the_numbers():
    rows = _by_claim(dong.rows(_dong(ON, OFF), {}))
    assert [rows[c][0]["verdict"] for c in dong.CLAIMS] == ["met"] * 4
    worse = copy.deepcopy(ON)
    worse.update(meteor=[0.20, 0.21, 0.20], purity=[0.20, 0.22, 0.21], probe=[0.80, 0.81, 0.80],
                 rate=[0.05, 0.10, 0.08])
    rows = _by_claim(dong.rows(_dong(worse, OFF), {}))
    assert [rows[c][0]["verdict"] for c in dong.CLAIMS] == ["not met"] * 4
    # a high rate that a random edit matches is not an effect of the identified neurons
    lucky = dict(ON, control=[0.30, 0.35, 0.40])
    assert _by_claim(dong.rows(_dong(lucky, OFF), {}))["Dong 4"][0]["verdict"] == "not met"


def _cnn_inte(meta: list[float], cnn: list[float]):
    return {s: {"digits": {"test": {"rows": 360, "meta_accuracy": meta[i], "cnn_accuracy": cnn[i],
                                    "fidelity": 0.98},
                           "classifier": {"test_accuracy": cnn[i]}, "settings": {"k1": 10}, "grid": [{}, {}],
                           "val_rows": 180, "fit_rows": 1257,
                           "routes": {"explained": 3, "consistent": 3, "diagrams": 3}}}
            for i, s in enumerate(SEEDS)}


def test_cnn_inte_same_accuracy_flips_with_the_gap():
    rows = _by_claim(cnn_inte.rows(_cnn_inte([0.985, 0.987, 0.986], [0.988] * 3), {}))
    assert rows["CNN-INTE 1"][0]["verdict"] == "met" and rows["CNN-INTE 2"][0]["verdict"] == "met"
    rows = _by_claim(cnn_inte.rows(_cnn_inte([0.97, 0.971, 0.972], [0.988] * 3), {}))
    assert rows["CNN-INTE 1"][0]["verdict"] == "not met"
    broken = _cnn_inte([0.985] * 3, [0.988] * 3)
    broken[1]["digits"]["routes"]["consistent"] = 2
    assert _by_claim(cnn_inte.rows(broken, {}))["CNN-INTE 2"][0]["verdict"] == "not met"
