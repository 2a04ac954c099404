"""The Dong et al. reproduction stage's verdicts (jobs/reproduce/stages/dong.py) flip with the seeds' numbers."""

from __future__ import annotations

import copy

from stage_rows import SEEDS, by_claim

from jobs.reproduce.stages import dong


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
    rows = by_claim(dong.rows(_dong(ON, OFF), {}))
    assert [rows[c][0]["verdict"] for c in dong.CLAIMS] == ["met"] * 4
    worse = copy.deepcopy(ON)
    worse.update(meteor=[0.20, 0.21, 0.20], purity=[0.20, 0.22, 0.21], probe=[0.80, 0.81, 0.80],
                 rate=[0.05, 0.10, 0.08])
    rows = by_claim(dong.rows(_dong(worse, OFF), {}))
    assert [rows[c][0]["verdict"] for c in dong.CLAIMS] == ["not met"] * 4
    # a high rate that a random edit matches is not an effect of the identified neurons
    lucky = dict(ON, control=[0.30, 0.35, 0.40])
    assert by_claim(dong.rows(_dong(lucky, OFF), {}))["Dong 4"][0]["verdict"] == "not met"


def test_dong_4_is_not_tested_over_too_few_wrong_captions():
    per_seed = _dong(ON, OFF)
    for s in per_seed.values():
        s["lambda_0.1"]["edits"]["wrong"] = 1   # one wrong caption: a rate of 0 or 1 says nothing
    row = by_claim(dong.rows(per_seed, {}))["Dong 4"][0]
    assert row["verdict"] == "not tested" and f"fewer than {dong.MIN_WRONG}" in row["how"]
