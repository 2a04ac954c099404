"""The reproduction job (jobs/reproduce): the report has a row for every claim ID, a finished seed is never rerun, a
failing seed leaves the finished ones intact; and the whole job once, at smoke size, on the session's Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from interp_ray.config import load_config
from interp_ray.errors import UserError
from interp_ray.reproduction import CLAIM_IDS
from jobs.common import run_main
from jobs.reproduce import engine
from jobs.reproduce.engine import ReproduceConfig

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "configs" / "reproduce_smoke.yaml"


def _claims_in(report: str) -> set[str]:
    return {line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ") and "|" in line[2:]}


# --- the engine without Ray -----------------------------------------------------------------------------------------

def _stage(claim: str, name: str = "toy"):
    """A stage as the interface defines it: its measurement is the seed itself, its row the mean over seeds."""
    def run(section, seed, workdir):
        if seed in section.get("fail", []) or (workdir / "block").exists():
            raise RuntimeError(f"seed {seed} broke")
        (workdir / "touched").write_text("x")
        return {"value": seed + section.get("offset", 0)}

    def rows(per_seed, section):
        vals = [r["value"] for r in per_seed.values()]
        return [{"claim": claim, "statement": "s", "paper": "p", "ours": str(sum(vals) / len(vals)),
                 "verdict": "met" if min(vals) > 0 else "not met", "how": "h"}]

    return SimpleNamespace(NAME=name, run=run, rows=rows, CLAIMS=(claim,))


@pytest.fixture
def toy(monkeypatch):
    """The engine's registry swapped for one toy stage (the real stages train models: the Ray test runs them)."""
    mod = _stage("Dong 3")
    monkeypatch.setattr(engine, "load_stage_modules", lambda: {"toy": mod})
    monkeypatch.setattr(engine, "machine", lambda: {"cpu": "c", "cores": 2, "python": "3", "torch": "t", "ray": "r",
                                                   "gpu": "none"})
    return mod


def test_report_has_every_claim_id_and_marks_the_missing_ones(tmp_path, toy):
    cfg = ReproduceConfig(output_dir=str(tmp_path / "out"), report=str(tmp_path / "docs" / "r.md"), seeds=[1, 2],
                          stages={"toy": {}})
    report, failures = engine.run(cfg)
    assert failures == []
    text = report.read_text()
    assert set(CLAIM_IDS) <= _claims_in(text)
    assert (tmp_path / "docs" / "r.md").read_text() == text
    assert json.loads((tmp_path / "docs" / "r.json").read_text())["claims"][0]["claim"] == "InterpNET 1"
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["claims"]
    assert [r["claim"] for r in rows] == list(CLAIM_IDS)
    by_id = {r["claim"]: r for r in rows}
    assert by_id["Dong 3"]["ours"] == "1.5" and by_id["Dong 3"]["verdict"] == "met"
    assert by_id["GFI 5"]["verdict"] == "not tested" and "no stage" in by_id["GFI 5"]["how"]


def test_a_finished_seed_is_skipped_and_a_failing_one_leaves_the_others_intact(tmp_path, toy):
    out = tmp_path / "out"
    cfg = ReproduceConfig(output_dir=str(out), report=None, seeds=[0, 1], stages={"toy": {"offset": 1}})
    engine.run(cfg)
    seed0 = (out / "toy" / "seed0.json").read_bytes()
    (out / "toy" / "seed1.json").unlink()
    (out / "toy" / "seed1" / "block").write_text("in the way")   # seed 1 fails on its rerun
    _, failures = engine.run(cfg)
    assert [f["seed"] for f in failures] == [1] and "seed 1 broke" in failures[0]["error"]
    assert not (out / "toy" / "seed1.json").exists()
    assert (out / "toy" / "seed0.json").read_bytes() == seed0   # skipped: byte for byte, time stamp included
    text = (out / "reproduction.md").read_text()
    assert "toy seed 1: RuntimeError: seed 1 broke" in text and "| h. Only seeds [0] of [0, 1] finished" in text
    (out / "toy" / "seed1" / "block").unlink()
    _, failures = engine.run(cfg)
    assert failures == [] and (out / "toy" / "seed0.json").read_bytes() == seed0
    assert json.loads((out / "toy" / "seed1.json").read_text())["result"] == {"value": 2}
    # A changed section is a new measurement: every seed runs again.
    cfg.stages["toy"]["offset"] = 5
    engine.run(cfg)
    assert json.loads((out / "toy" / "seed0.json").read_text())["result"] == {"value": 5}


def test_the_report_counts_the_time_a_seed_ran_not_the_time_it_was_stopped(tmp_path, toy):
    cfg = ReproduceConfig(output_dir=str(tmp_path), report=None, seeds=[0, 1], stages={"toy": {}})
    engine.run(cfg)
    for seed, record in [(0, {"seconds": 100.0, "stopped_s": 30.0}), (1, {"seconds": 50.0})]:
        path = tmp_path / "toy" / f"seed{seed}.json"
        saved = json.loads(path.read_text())
        saved.pop("stopped_s")
        path.write_text(json.dumps({**saved, **record}))
    engine.run(cfg)   # both seeds finished: skipped, the report rewritten from their files
    header = (tmp_path / "reproduction.md").read_text().split("| claim |")[0]
    assert "Wall time: 150 s in all" in header and "not counting 30 s when their processes were stopped" in header
    assert ("toy seed 1 finished before stops were measured, so its time includes any time it was stopped\n"
            in header)


def test_the_stopwatch_leaves_out_the_time_its_process_was_stopped(tmp_path):
    """A real SIGSTOP of a process timing itself: the 1.5 s it was stopped are counted apart from the time it ran."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import time; from jobs.reproduce.engine import StopWatch; w = StopWatch(tick=0.05, gap=0.5); "
            "print('ready', flush=True); time.sleep(3); t = time.monotonic() - w.t0; r, s = w.stop(); print(r, s, t)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(child.pid, signal.SIGCONT)
    running, stopped, wall = map(float, child.communicate(timeout=60)[0].split())
    assert 1.2 < stopped < 2.2 and abs(running + stopped - wall) < 0.2 and running < wall - 1.2
    # not stopped: nothing is taken off
    watch = engine.StopWatch(tick=0.01, gap=0.5)
    time.sleep(0.3)
    running, stopped = watch.stop()
    assert stopped == 0 and running >= 0.3


def test_a_seed_killed_partway_and_resumed_counts_the_time_of_both_runs(tmp_path):
    """A real kill -9 of a process timing itself into a ledger: the next run of the same work starts its count from
    what the killed one had run; other work (another key) starts from zero."""
    import os
    import subprocess
    import sys
    import time

    ledger = tmp_path / "seed0" / "time.json"
    code = (f"import time; from pathlib import Path; from jobs.reproduce.engine import StopWatch; "
            f"w = StopWatch(tick=0.05, ledger=Path({str(ledger)!r}), key='k1', save_every=0.1); "
            f"print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    child.kill()
    child.wait(timeout=30)
    resumed = engine.StopWatch(tick=0.01, ledger=ledger, key="k1")
    assert 1.2 < resumed.earlier_running < 1.6 and resumed.earlier_stopped == 0
    time.sleep(0.2)
    running, _ = resumed.stop()
    assert resumed.earlier_running + 0.2 <= running < resumed.earlier_running + 1.0
    assert json.loads(ledger.read_text())["running_s"] == running   # a later resume starts from both runs
    other = engine.StopWatch(tick=0.01, ledger=ledger, key="k2")
    assert other.earlier_running == 0 and other.stop()[0] < 1.0


def test_a_stage_with_no_finished_seed_shows_its_claims_as_not_tested_with_the_reason(tmp_path, toy):
    cfg = ReproduceConfig(output_dir=str(tmp_path), report=None, seeds=[0], stages={"toy": {"fail": [0]}})
    _, failures = engine.run(cfg)
    row = {r["claim"]: r for r in json.loads((tmp_path / "results.json").read_text())["claims"]}["Dong 3"]
    assert len(failures) == 1 and row["verdict"] == "not tested" and "seed 0 failed" in row["how"]


def test_bad_stage_names_are_user_errors(tmp_path, toy):
    with pytest.raises(UserError, match="stages.nope: no such reproduction stage"):
        engine.run(ReproduceConfig(output_dir=str(tmp_path), report=None, stages={"nope": {}}))
    with pytest.raises(UserError, match="--only other"):
        engine.run(ReproduceConfig(output_dir=str(tmp_path), report=None, stages={"toy": {}}), only=["other"])


def test_the_cli_refuses_an_unknown_stage_before_starting_ray(tmp_path, capsys):
    code = run_main(engine.main, ["--config", str(SMOKE), "--out", str(tmp_path), "--only", "nope"])
    assert code == 2 and "--only nope" in capsys.readouterr().err


def test_the_configs_name_real_stages_and_three_seeds():
    modules = engine.load_stage_modules()
    full = load_config(ReproduceConfig, REPO / "configs" / "reproduce.yaml")
    assert full.seeds == [0, 1, 2] and engine.selected(full, modules, None)
    smoke = load_config(ReproduceConfig, SMOKE)
    assert set(engine.selected(smoke, modules, None)) == set(full.stages)
    for mod in modules.values():   # every claim a stage declares is an ID of PAPERS.md
        assert set(getattr(mod, "CLAIMS", ())) <= set(CLAIM_IDS)


# --- the whole job, smoke size, on Ray -------------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.slow
def test_smoke_job_reports_every_claim_and_resumes_seed_by_seed(tmp_path, ray_local):
    out = tmp_path / "out"
    cfg = load_config(ReproduceConfig, SMOKE, [f"output_dir={out}"])
    report, failures = engine.run(cfg)
    assert failures == [], failures
    text = report.read_text()
    assert set(CLAIM_IDS) <= _claims_in(text)
    results = json.loads((out / "results.json").read_text())
    ours: dict = {}
    for r in results["claims"]:   # each claim's first row (InterpNET 3 has one per protocol, then GVE's)
        if r["stage"]:
            ours.setdefault(r["claim"], r)
    assert {"InterpNET 1", "InterpNET 2", "InterpNET 3", "Dong 4", "CNN-INTE 2", "CNN-INTE 3"} <= set(ours)
    for claim in ("InterpNET 1", "InterpNET 3", "Dong 1", "Dong 2", "Dong 3", "CNN-INTE 1"):   # measured: mean ± std
        assert "(n=1)" in ours[claim]["ours"], ours[claim]
    assert ours["InterpNET 1"]["verdict"] == "met"          # each variant's classifier is bit-identical
    assert ours["CNN-INTE 2"]["verdict"] == "met"
    finished = {p: p.read_bytes() for p in out.glob("*/seed0.json")}
    assert {p.parent.name for p in finished} == set(cfg.stages)

    # A second seed whose CNN-INTE output folder is blocked by a file: it fails; every finished seed stays as it was.
    cfg.seeds = [0, 1]
    blocker = out / "cnn_inte" / "seed1" / "digits"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    report, failures = engine.run(cfg, only=["cnn_inte"])
    assert [(f["stage"], f["seed"]) for f in failures] == [("cnn_inte", 1)]
    assert not (out / "cnn_inte" / "seed1.json").exists()
    assert all(p.read_bytes() == b for p, b in finished.items())
    assert set(CLAIM_IDS) <= _claims_in(report.read_text())

    # Unblocked, the rerun skips seed 0 and finishes seed 1; the report now averages two seeds.
    shutil.rmtree(out / "cnn_inte" / "seed1")
    report, failures = engine.run(cfg, only=["cnn_inte"])
    assert failures == [] and all(p.read_bytes() == b for p, b in finished.items())
    assert json.loads((out / "cnn_inte" / "seed1.json").read_text())["seed"] == 1
    rows: dict = {}
    for r in json.loads((out / "results.json").read_text())["claims"]:
        if r["stage"]:
            rows.setdefault(r["claim"], r)
    assert "(n=2)" in rows["CNN-INTE 1"]["ours"] and "Only seeds [0] of [0, 1]" in rows["Dong 1"]["how"]
