"""The real `ray start --head` + `ray job submit` path, on 127.0.0.1 only: the smoke main job as a user submits it
(the session's ``smoke_main_job``, tests/main_job.py), and every figure its report states checked against what its
definition allows."""

import json
import re

import pytest

from interp_ray.claims import evaluate_claims, markdown_claims
from interp_ray.goals import evaluate_goals, markdown_goals


def is_count(share: float, n: int) -> bool:
    """``share`` is k/n for a whole k: a figure measured on n items."""
    return abs(share * n - round(share * n)) < 1e-6


def table_row(report: str, heading: str, first_cell: str | None = None) -> list[str]:
    """The cells of the first table row of section ``heading`` (or of the row starting with ``first_cell``)."""
    section = report.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")][1:]
    row = next(r for r in rows if first_cell is None or r.startswith(f"| {first_cell} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def check_figures(report: str, results: dict) -> None:
    """The figures the report states are results.json's, and each is what its definition allows at smoke size:
    shares of n items are k/n, accuracies that agree on a share of rows differ by at most the rest, CNS grows with
    τ, the classifier has learnt something. Smoke budgets make most figures poor; none may be impossible."""
    st = results["stages"]
    assert results["smoke"] is True and list(st) == [
        "classifiers", "cnn_inte", "fashion_mnist_cnn_inte", "flint", "fashion_mnist_flint",
        "fashion_mnist_flint_posthoc", "interpnet", "saliency", "fashion_mnist_saliency", "semantic"]
    per_stage = {name: sum(c["seconds"] for c in r.values()) if name == "classifiers" else r["seconds"]
                 for name, r in st.items()}
    assert f"Run time: {results['seconds']:.0f} s (" in report
    assert sum(per_stage.values()) <= results["seconds"] + 1e-6  # stages run inside the run's clock
    for name, seconds in per_stage.items():
        assert f"{name} {seconds:.0f} s" in report

    digits_test = 360  # the digits test split (tests/data); FLINT and CNN-INTE are scored on all of it
    for key, c in st["classifiers"].items():
        assert table_row(report, "## Classifiers", key) == [key, c["model"], c["dataset"], str(c["epochs"]),
                                                              f"{c['test_accuracy']:.4f}", f"{c['seconds']:.0f}"]
        assert 0.0 <= c["test_accuracy"] <= 1.0
    assert [c["epochs"] for c in st["classifiers"].values()] == [2, 1, 1]  # configs/pipeline.yaml's smoke epochs
    # Two epochs on 8×8 digits reach 0.87 (seed 0); 0.5 is five times chance (0.1) and far below any seed seen.
    assert st["classifiers"]["digits"]["test_accuracy"] >= 0.5
    assert is_count(st["classifiers"]["digits"]["test_accuracy"], digits_test)

    s = st["cnn_inte"]["splits"]["test"]
    assert s["rows"] == digits_test and all(is_count(s[k], digits_test)
                                            for k in ("fidelity", "meta_accuracy", "cnn_accuracy"))
    assert s["cnn_accuracy"] == pytest.approx(st["classifiers"]["digits"]["test_accuracy"])  # the same CNN, rows
    assert abs(s["meta_accuracy"] - s["cnn_accuracy"]) <= 1 - s["fidelity"] + 1e-9  # disagreement bounds the gap
    assert s["accuracy_gap_points"] == pytest.approx(100 * (s["meta_accuracy"] - s["cnn_accuracy"]))
    assert sum(v["rows"] for v in s["per_level1"].values()) == s["rows"]
    assert table_row(report, "## CNN-INTE", "test") == [
        "test", f"{s['fidelity']:.4f}", f"{s['meta_accuracy']:.4f}", f"{s['cnn_accuracy']:.4f}",
        f"{s['accuracy_gap_points']:+.2f}"]

    f, t = st["flint"], st["flint"]["test"]
    assert t["samples"] == digits_test and f["epochs"] == 1
    assert all(is_count(t[k], digits_test) for k in ("accuracy_f", "accuracy_g", "fidelity"))
    assert abs(t["accuracy_f"] - t["accuracy_g"]) <= 1 - t["fidelity"] + 1e-9  # g agrees with f on `fidelity`
    cns = [t[f"cns_{tau:g}"] for tau in (1.5, 2, 2.5, 3, 4, 5)]
    assert cns == sorted(cns) and 1.0 <= cns[0] and cns[-1] <= t["active_attributes"] <= 25
    cns_tau = t["cns_{:g}".format(f["tau"])]
    assert table_row(report, "## FLINT") == [f"{t['accuracy_f']:.4f}", f"{t['accuracy_g']:.4f}",
                                             f"{t['fidelity']:.4f}", f"{cns_tau:.3f}"]
    for c, attrs in f["global"].items():  # the global interpretation keeps r_{j,c} > 1/τ, and r ≤ 1
        assert attrs and all(1 / f["tau"] < rel <= 1 + 1e-6 for _, rel in attrs)
        assert f"- class {c}: " + ", ".join(f"{a} ({rel:.2f})" for a, rel in attrs) in report

    (row,) = st["interpnet"]["rows"]
    n = st["interpnet"]["test_images"]
    assert n == 32 and is_count(row["accuracy"], n) and 0 <= row["meteor_segment_mean"] <= 1
    assert row["attributes_named"] <= row["attributes_wanted"]

    sal = st["saliency"]
    assert sal["rows"] == 8 and set(sal["methods"]) == {"feature_inversion", "gradcam"}
    for name, m in sal["methods"].items():
        assert is_count(m["pointing"], sal["rows"]) and 0 <= m["loc_error"] <= 1
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1
        assert f"| {name} | {m['pointing']:.3f} |" in report

    sem = st["semantic"]
    lp = sem["label_precision"]
    assert lp["correct"] <= lp["confident"] <= lp["alive"] <= lp["neurons"]
    assert is_count(sem["faithful_captions"], sem["test_clips"]) and 0 <= sem["scores"]["meteor_segment_mean"] <= 1
    share = f"{lp['share'] * 100:.1f}% ({lp['correct']} of {lp['confident']}" if lp["confident"] else "–"
    assert table_row(report, "## Semantic captioner")[:2] == [str(sem["test_clips"]),
                                                             f"{sem['scores']['meteor_segment_mean'] * 100:.1f}"]
    assert share in report and len(sem["neurons"]) <= lp["confident"]

    check_fashion_mnist(report, st)

    # The claims and goals tables are the job's own: recomputed from its stage results, the same rows and verdicts.
    kinds = results["kinds"]
    assert kinds["fashion_mnist_flint_posthoc"] == "flint" and kinds["fashion_mnist_saliency"] == "saliency"
    claims = evaluate_claims(st, kinds)
    assert results["claims"] == [c.to_dict() for c in claims]
    assert "\n".join(markdown_claims(claims)) in report
    rows = {}
    for c in claims:
        rows.setdefault(c.claim, []).append((c.dataset.split()[0], c.verdict))
    assert rows["CNN-INTE 2"] == [("digits", "met"), ("fashion_mnist", "met")]  # one route diagram each
    assert rows["GFI 5"] == [("—", "not tested")] and rows["Dong 1"] == [("scene", "not tested")]  # "scene clips"
    # BASE-f and post hoc FLINT exist on Fashion-MNIST only; the localisation claims need the scenes' boxes
    assert [d for d, v in rows["FLINT 1"]] == ["digits", "fashion_mnist"] and rows["FLINT 1"][1][1] != "not tested"
    assert [d for d, v in rows["FLINT 5"]] == ["fashion_mnist"] and [d for d, v in rows["GFI 1"]] == ["scenes"]
    goals = evaluate_goals(st, kinds)
    assert results["goals"] == [g.to_dict() for g in goals] and len(goals) == 6
    assert all(g.verdict != "not tested" for g in goals)   # every goal has its entry in the main job
    assert "\n".join(markdown_goals(goals)) in report


def check_fashion_mnist(report: str, st: dict) -> None:
    """The Fashion-MNIST part at smoke size (data.options.limit 512: each split's first 512 rows)."""
    n = 512
    acc = st["classifiers"]["fashion_mnist"]["test_accuracy"]
    assert is_count(acc, n)
    s = st["fashion_mnist_cnn_inte"]["splits"]
    assert list(s) == ["test", "val"] and s["test"]["rows"] == s["val"]["rows"] == n
    assert s["test"]["cnn_accuracy"] == pytest.approx(acc)   # CNN-INTE explains that very classifier
    joint, post = st["fashion_mnist_flint"], st["fashion_mnist_flint_posthoc"]
    t = joint["test"]
    assert joint["mode"] == "joint" and t["samples"] == n and t["accuracy_base_f"] == acc  # BASE-f: the classifier
    assert t["lime_images"] == 8 and is_count(t["lime_fidelity"], 8) and is_count(t["flint_fidelity_lime_images"], 8)
    assert f"BASE-f (classifier `fashion_mnist`, FLINT-f's model, data and budget, L_pred alone): test accuracy " \
           f"{acc:.4f}" in report
    # post hoc FLINT freezes the classifier: f's accuracy is the classifier's, to the last test image
    assert post["mode"] == "posthoc" and post["test"]["accuracy_f"] == pytest.approx(acc, abs=1e-12)
    assert post["predictor_accuracy"] == acc and not post["pictures"] and not post["pictures_enabled"]
    sal = st["fashion_mnist_saliency"]
    assert sal["dataset"] == "fashion_mnist" and sal["rows"] == 8
    for m in sal["methods"].values():   # no boxes: deletion and insertion only
        assert "pointing" not in m and 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1
    assert "## Saliency: Guided Feature Inversion and baselines (fashion_mnist, 8 test images" in report


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_pipeline_through_ray_job_submit(smoke_main_job):
    proc, out = smoke_main_job, smoke_main_job.out
    proc.check()
    assert "succeeded" in proc.stdout
    # Ray Train's per-report INFO lines stay in its log files, off the terminal (run.log_level: WARNING)
    assert "Reporting training result" not in proc.stdout + proc.stderr
    # ... and a progress line per epoch for people instead (the job's log is not a terminal: lines, not a bar): the
    # digits classifier's 2 smoke epochs, as its Ray Train worker reported them
    assert re.search(r"\[progress\] digits_cnn-[^:]* epochs: 2/2 epochs \(100%\), .*; train_loss", proc.stdout), \
        proc.stdout[-3000:]
    # Ray Data's bars and execution lines for the stores streamed to Ray Train workers (re-run every epoch), and the
    # E lines of Train's controller, stay in the session's log files (jobs/terminal.py; issue 33)
    terminal = proc.stdout + proc.stderr
    assert not re.search(r"split\(\d+, equal=True\): Tasks", terminal)
    assert not re.search(r"Starting execution of Dataset|Execution plan of Dataset|PreemptionWatcher", terminal)
    assert re.search(r"\[progress\] pipeline stages: (\d+)/\1 stages \(100%\)", terminal), terminal[-3000:]
    report = (out / "report.md").read_text()
    assert "| digits | digits_cnn | digits |" in report and "| scenes | scenes_cnn | scenes |" in report
    assert "| fashion_mnist | flint_mnist | fashion_mnist |" in report
    for section in ("## CNN-INTE", "## FLINT", "## InterpNET", "## Saliency", "## Semantic captioner",
                    "## Paper claims", "## Fashion-MNIST goals"):
        assert section in report
    check_figures(report, json.loads((out / "results.json").read_text()))
    # Every picture the report shows was written next to it.
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert "cnn_inte/route_0.png" in pictures and "saliency/overlay_00.png" in pictures
    assert "fashion_mnist_cnn_inte/route_0.png" in pictures and "fashion_mnist_saliency/overlay_00.png" in pictures
    assert any(p.startswith("flint/") for p in pictures)
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pictures)
    assert (out / "checkpoints" / "digits" / "weights.safetensors").is_file()
