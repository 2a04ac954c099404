"""The explain-dataset job on Ray Data: masks equal a direct explain whatever the batching and actor count, a failure
halfway resumes without rewriting finished parts, bad config exits 2 with one line from the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interp_ray.checkpoint import load_classifier
from interp_ray.data.scenes import load_scenes
from interp_ray.errors import UserError
from interp_ray.explainers import get_explainer
from interp_ray.saliency_store import SaliencyStore
from interp_ray.store import MANIFEST_FILE
from jobs.common import EXIT_USAGE, run_main
from jobs.explain_dataset import main

# The in-process side computes with the one thread Ray gives each 1-CPU worker: float32 sums depend on it.
pytestmark = pytest.mark.usefixtures("ray_worker_torch_threads")

REPO = Path(__file__).resolve().parents[2]
ROWS, SIZE = 24, 32
GFI_FAST = {"stage1_iterations": 1, "stage2_iterations": 1}


@pytest.fixture(scope="module")
def scenes_checkpoint(random_scenes_checkpoint):
    return random_scenes_checkpoint(seed=1, image_size=SIZE)


def job_args(checkpoint, root, methods: str, *extra) -> list[str]:
    sets = [f"checkpoint={checkpoint}", "data.name=scenes", f"data.options={{size: {SIZE}, n: {ROWS}}}",
            "split=test", f"methods={methods}", f"store.root={root}", "evaluation.enabled=false",
            "compute.load_num_cpus=0.25", *extra]
    return [a for s in sets for a in ("--set", s)]


def store_of(root, method: str) -> Path:
    (d,) = [p for p in (Path(root) / "scenes_cnn" / method).iterdir() if (p / MANIFEST_FILE).is_file()]
    return d


def direct(checkpoint, method: str, params: dict) -> np.ndarray:
    loaded = load_classifier(checkpoint)
    batch = load_scenes("test", n=ROWS, size=SIZE).get_batch(np.arange(ROWS))
    out = get_explainer(method)(loaded.model, class_names=loaded.class_names).explain(
        {"image": batch["image"], "target": batch["label"]}, params)
    return np.stack([e.saliency for e in out])


def snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store.glob("part-*.parquet"))}


@pytest.mark.ray
def test_ray_two_actors_equal_direct_explain(ray_local, scenes_checkpoint, tmp_path):
    methods = f"[{{name: gradcam}}, {{name: feature_inversion, params: {json.dumps(GFI_FAST)}}}]"
    assert run_main(main, job_args(scenes_checkpoint, tmp_path, methods, "compute.engine=ray",
                                   "compute.actors=2", "compute.batch_size=5", "store.shard_rows=7")) == 0
    for name, params in (("gradcam", {}), ("feature_inversion", GFI_FAST)):
        got = SaliencyStore.open(str(store_of(tmp_path, name))).read()
        np.testing.assert_array_equal(got["index"], np.arange(ROWS))  # every row once, in order
        np.testing.assert_allclose(got["saliency"], direct(scenes_checkpoint, name, params), atol=1e-5)
    # the same store from the in-process engine with other batching: same key, so nothing is recomputed
    before = snapshot(store_of(tmp_path, "gradcam"))
    assert run_main(main, job_args(scenes_checkpoint, tmp_path, "[{name: gradcam}]", "compute.engine=local",
                                   "compute.batch_size=24")) == 0
    assert snapshot(store_of(tmp_path, "gradcam")) == before


@pytest.mark.ray
def test_ray_failure_halfway_then_rerun_finishes_exactly_once(ray_local, scenes_checkpoint, tmp_path):
    args = job_args(scenes_checkpoint, tmp_path, "[{name: gradient}]", "compute.engine=ray", "store.shard_rows=4",
                    "compute.batch_size=4")
    with pytest.raises(Exception, match="injected failure"):
        run_main(main, [*args, "--set", "fail_after_shards=2"])
    store = store_of(tmp_path, "gradient")
    before = snapshot(store)
    assert 2 <= len(before) < ROWS // 4
    assert run_main(main, [*args, "--set", "compute.actors=2", "--set", "compute.batch_size=3"]) == 0
    after = snapshot(store)
    assert len(after) == ROWS // 4 and {k: after[k] for k in before} == before  # finished parts untouched
    got = SaliencyStore.open(str(store)).read()
    np.testing.assert_array_equal(got["index"], np.arange(ROWS))
    np.testing.assert_allclose(got["saliency"], direct(scenes_checkpoint, "gradient", {}), atol=1e-5)


def test_cli_bad_param_exits_2_with_one_line(scenes_checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "explain-dataset", "--config", "configs/explain_scenes.yaml",
         *job_args(scenes_checkpoint, tmp_path, "[{name: feature_inversion, params: {lr: -1}}]")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    expected = "error: invalid parameters for feature_inversion: lr: Input should be greater than 0"
    assert len(lines) == 1 and lines[0] == expected, proc.stderr
    assert not (tmp_path / "scenes_cnn").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_kill_9_midway_then_rerun_finishes_exactly_once(ray_local, scenes_checkpoint, tmp_path):
    """A real ``kill -9`` of the driver while parts are being written (the writer hangs after 2), then a rerun with
    other batching and actor count: finished parts are kept as they are, every row lands once."""
    import os
    import signal
    import time

    address = ray_local.get_runtime_context().gcs_address
    args = job_args(scenes_checkpoint, tmp_path, "[{name: gradient}]", "compute.engine=ray", "store.shard_rows=4",
                    "compute.batch_size=4")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.explain_dataset", "--address", address, *args,
                             "--set", "fail_after_shards=2", "--set", "fail_mode=hang"],
                            cwd=REPO, env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, parts = time.time() + 240, []
        while time.time() < deadline and proc.poll() is None and len(parts) < 2:
            parts = list(tmp_path.glob("scenes_cnn/gradient/*/part-*.parquet"))
            time.sleep(0.5)
        assert proc.poll() is None and len(parts) >= 2, proc.stdout.read().decode()[-3000:]
        time.sleep(1.0)  # let the writer reach its hang: the kill lands with work still queued
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    store = store_of(tmp_path, "gradient")
    before = snapshot(store)
    assert len(before) == 2
    assert run_main(main, [*args, "--set", "compute.actors=2", "--set", "compute.batch_size=5"]) == 0
    after = snapshot(store)
    assert len(after) == ROWS // 4 and {k: after[k] for k in before} == before
    got = SaliencyStore.open(str(store)).read()
    np.testing.assert_array_equal(got["index"], np.arange(ROWS))
    np.testing.assert_allclose(got["saliency"], direct(scenes_checkpoint, "gradient", {}), atol=1e-5)


def test_the_learned_methods_config_reads_the_main_jobs_outputs():
    """configs/explain_learned_digits.yaml names checkpoints where the main job (configs/pipeline.yaml) writes them."""
    from interp_ray.config import load_config, read_yaml
    from jobs.explain_dataset import ExplainDatasetConfig, check_methods

    cfg = load_config(ExplainDatasetConfig, str(REPO / "configs/explain_learned_digits.yaml"))
    out = read_yaml(str(REPO / "configs/pipeline.yaml"))["output_dir"]
    assert cfg.checkpoint == f"{out}/checkpoints/digits"
    assert {m.name: m.checkpoint for m in cfg.methods if m.checkpoint} == {"cnn_inte": f"{out}/cnn_inte",
                                                                         "flint": f"{out}/flint"}
    assert [m.name for m in cfg.methods if not m.checkpoint] == ["gradcam"]
    with pytest.raises(UserError, match="no checkpoint at"):   # before the main job ran: one clear error
        check_methods(cfg.model_copy(update={"methods": [m.model_copy(update={"checkpoint": "/nonexistent/x"})
                                                         for m in cfg.methods[:1]]}))


def test_rows_with_the_default_evaluation_evaluates_those_rows(scenes_checkpoint, tmp_path):
    """`rows:` explains the split's first rows; the evaluation (on by default: α tuned on val) reloads exactly those
    rows from the store's identity, and reports on them rather than refusing the store it just computed."""
    from interp_ray.config import load_config
    from jobs.explain_dataset import ExplainDatasetConfig, explain_dataset

    sets = [f"checkpoint={scenes_checkpoint}", "data.name=scenes", f"data.options={{size: {SIZE}, n: {ROWS}}}",
            "split=test", "rows=6", "methods=[{name: gradient}, {name: center}]", f"store.root={tmp_path}",
            "compute.engine=local", "evaluation.tune_rows=5", "evaluation.causal_steps=4", "evaluation.overlays=1"]
    cfg = load_config(ExplainDatasetConfig, None, sets)
    assert cfg.evaluation.enabled and cfg.evaluation.alpha is None   # the default evaluation
    result = explain_dataset(cfg)
    assert {(s["split"], s["rows"]) for s in result.stores} == {("test", 6), ("val", 5)}
    assert result.results is not None and result.results["rows"] == 6 and result.results["split"] == "test"
    assert set(result.results["methods"]) == {"gradient", "center"}
    assert (result.report_dir / "report.md").is_file()
    # The head is recorded as such (the whole split's store would be another, with its own key).
    identities = {i["split"]: i for i in (SaliencyStore.open(str(p)).manifest.identity
                                          for p in (tmp_path / "scenes_cnn" / "gradient").iterdir()
                                          if (p / MANIFEST_FILE).is_file())}
    assert identities["test"]["data"]["rows"] == 6 and identities["test"]["dataset"]["head_of"] == ROWS
    assert "rows" not in identities["val"]["data"]
