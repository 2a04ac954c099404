"""The explanation store and job without Ray: masks equal a direct explain, resume, key checks, bad config, report."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from interp_ray.checkpoint import load_classifier
from interp_ray.data.scenes import load_scenes
from interp_ray.errors import UserError
from interp_ray.explainers import get_explainer
from interp_ray.saliency_report import evaluate_saliency
from interp_ray.saliency_store import SALIENCY_META_KEY, SaliencyStore
from interp_ray.store import MANIFEST_FILE, InjectedFailure, StoreKeyMismatch
from jobs.common import EXIT_USAGE, run_main
from jobs.explain_dataset import main

# The in-process side computes with the one thread Ray gives each 1-CPU worker: float32 sums depend on it.
pytestmark = pytest.mark.usefixtures("ray_worker_torch_threads")

ROWS, SIZE = 20, 32
GFI_FAST = {"stage1_iterations": 1, "stage2_iterations": 1}


@pytest.fixture(scope="module")
def scenes_checkpoint(random_scenes_checkpoint):
    return random_scenes_checkpoint(seed=0, image_size=SIZE)


def methods_yaml(*methods: tuple[str, dict]) -> str:
    items = [f"{{name: {n}, params: {json.dumps(p)}}}" for n, p in methods]
    return f"methods=[{', '.join(items)}]"


def job_args(checkpoint, root, *extra, methods=(("gradient", {}),), engine="local", evaluate=False):
    sets = [f"checkpoint={checkpoint}", "data.name=scenes", f"data.options={{size: {SIZE}, n: {ROWS}}}",
            "split=test", methods_yaml(*methods), f"store.root={root}", f"compute.engine={engine}",
            f"evaluation.enabled={str(evaluate).lower()}", *extra]
    return [a for s in sets for a in ("--set", s)]


def job(*args, **kwargs) -> int:
    return run_main(main, job_args(*args, **kwargs))


def store_dir(root, method: str, split: str = "test") -> Path:
    """The one store of ``method`` over ``split`` under ``root``."""
    (d,) = [p for p in (Path(root) / "scenes_cnn" / method).iterdir()
            if json.loads((p / MANIFEST_FILE).read_text())["identity"]["split"] == split]
    return d


def direct_masks(checkpoint, method: str, params: dict, split="test", n=ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(masks, targets) from calling the explainer on the whole split at once, explaining the true class."""
    loaded = load_classifier(checkpoint)
    batch = load_scenes(split, n=n, size=SIZE).get_batch(np.arange(n))
    out = get_explainer(method)(loaded.model, class_names=loaded.class_names).explain(
        {"image": batch["image"], "target": batch["label"]}, params)
    return np.stack([e.saliency for e in out]), np.array([e.label for e in out])


def assert_store_equals_direct(location, checkpoint, method, params):
    got = SaliencyStore.open(str(location)).read()
    np.testing.assert_array_equal(got["index"], np.arange(ROWS))  # every row exactly once, in order
    ref, targets = direct_masks(checkpoint, method, params)
    assert got["saliency"].shape == (ROWS, SIZE, SIZE) and got["saliency"].dtype == np.float32
    np.testing.assert_allclose(got["saliency"], ref, atol=1e-5)
    np.testing.assert_array_equal(got["target"], targets)
    labels = load_scenes("test", n=ROWS, size=SIZE).get_batch(np.arange(ROWS))["label"]
    np.testing.assert_array_equal(got["label"], labels)


def snapshot(store: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store.glob("part-*.parquet"))}


# --- store contents ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size,shard_rows", [(3, 7), (16, 32)])
def test_masks_equal_direct_explain_whatever_batching(scenes_checkpoint, tmp_path, batch_size, shard_rows):
    methods = (("gradient", {}), ("feature_inversion", GFI_FAST))
    assert job(scenes_checkpoint, tmp_path, f"compute.batch_size={batch_size}", f"store.shard_rows={shard_rows}",
               methods=methods) == 0
    for name, params in methods:
        assert_store_equals_direct(store_dir(tmp_path, name), scenes_checkpoint, name, params)


def test_schema_metadata_extras_and_reader_by_id(scenes_checkpoint, tmp_path):
    assert job(scenes_checkpoint, tmp_path, "store.shard_rows=8", methods=(("feature_inversion", GFI_FAST),)) == 0
    location = store_dir(tmp_path, "feature_inversion")
    meta = json.loads(pq.read_schema(location / "part-000000.parquet").metadata[SALIENCY_META_KEY])
    assert meta["method"] == "feature_inversion" and meta["mask_shape"] == [SIZE, SIZE]
    assert meta["params"]["stage1_iterations"] == 1 and meta["params"]["stage2_iterations"] == 1
    store = SaliencyStore.open(str(location))
    assert {"extra.p_masked", "extra.fallback"} <= set(store.columns)
    assert store.manifest.method_info["layers"] == {"inversion": "relu4", "base": "relu3"}
    everything = store.read()
    assert everything["extra.fallback"].dtype == bool and np.isfinite(everything["extra.p_masked"]).all()
    ids = [everything["id"][5], everything["id"][2]]
    np.testing.assert_array_equal(store.masks(ids), everything["saliency"][[5, 2]])
    assert tuple(store.masks(ids, format="torch").shape) == (2, SIZE, SIZE)
    with pytest.raises(UserError, match="not in store"):
        store.masks(["no-such-id"])


# --- resume ------------------------------------------------------------------------------------------------------

def test_failed_run_resumes_without_rewriting_finished_parts(scenes_checkpoint, tmp_path):
    with pytest.raises(InjectedFailure):
        job(scenes_checkpoint, tmp_path, "store.shard_rows=6", "compute.batch_size=4", "fail_after_shards=2")
    location = store_dir(tmp_path, "gradient")
    before = snapshot(location)
    assert len(before) == 2  # 2 of the 4 parts made it; the manifest says incomplete
    with pytest.raises(UserError, match="incomplete"):
        SaliencyStore.open(str(location))
    assert job(scenes_checkpoint, tmp_path, "store.shard_rows=6", "compute.batch_size=4") == 0
    after = snapshot(location)
    assert len(after) == 4 and {k: after[k] for k in before} == before  # same files, never rewritten
    assert_store_equals_direct(location, scenes_checkpoint, "gradient", {})
    assert job(scenes_checkpoint, tmp_path, "store.shard_rows=6") == 0  # complete: nothing to do
    assert snapshot(location) == after


# --- keys --------------------------------------------------------------------------------------------------------

def test_changed_inputs_get_another_store_and_a_foreign_store_is_refused(scenes_checkpoint, tmp_path, capsys):
    assert job(scenes_checkpoint, tmp_path) == 0
    first = store_dir(tmp_path, "gradient")
    before = snapshot(first)
    assert job(scenes_checkpoint, tmp_path, "target=predicted") == 0  # another target rule → another key
    stores = sorted(p for p in (tmp_path / "scenes_cnn" / "gradient").iterdir())
    assert len(stores) == 2 and first in stores and snapshot(first) == before
    other = next(p for p in stores if p != first)
    with pytest.raises(StoreKeyMismatch):
        SaliencyStore.open(str(first), key=other.name)
    # a store of another key sitting where this job writes is refused, and left as it was
    (other / MANIFEST_FILE).write_bytes((first / MANIFEST_FILE).read_bytes())
    capsys.readouterr()
    assert job(scenes_checkpoint, tmp_path, "target=predicted") == EXIT_USAGE
    assert "nothing was touched" in capsys.readouterr().err
    assert snapshot(first) == before


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("methods,needle", [
    ((("no_such_method", {}),), "unknown method 'no_such_method'"),
    ((("gradcam", {"stage1_iterations": 3}),), "invalid parameters"),
    ((("feature_inversion", {"stage1_iterations": -1}),), "invalid parameters"),
    ((("gradient", {"target": 3}),), "target"),
    ((("interpnet", {}),), "is learned: give its checkpoint"),
])
def test_bad_method_config_exits_2_with_one_line(scenes_checkpoint, tmp_path, capsys, methods, needle):
    assert job(scenes_checkpoint, tmp_path, methods=methods) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "scenes_cnn").exists()  # nothing written


def test_bad_option_is_a_user_error(scenes_checkpoint, tmp_path, capsys):
    args = job_args(scenes_checkpoint, tmp_path)
    args[args.index(methods_yaml(("gradient", {})))] = "methods=[{name: gradcam, options: {layer: nope}}]"
    assert run_main(main, args) == EXIT_USAGE
    assert "nope" in capsys.readouterr().err


def test_a_checkpoint_for_a_method_that_learns_nothing_exits_2(scenes_checkpoint, tmp_path, capsys):
    args = job_args(scenes_checkpoint, tmp_path)
    args[args.index(methods_yaml(("gradient", {})))] = f"methods=[{{name: gradient, checkpoint: {scenes_checkpoint}}}]"
    assert run_main(main, args) == EXIT_USAGE
    assert "takes no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "scenes_cnn").exists()


def test_a_learned_method_fills_a_json_store_keyed_by_its_checkpoint(tmp_path):
    """CNN-INTE beside a saliency method in one job: its rows are the in-process explanations as JSON; refitting it
    into the same directory makes a store of a new key and leaves the old one as it was."""
    from interp_ray.data import load_dataset
    from interp_ray.explainers.cnn_inte import CnnInte
    from interp_ray.saliency_store import EXPLANATION_COLUMN, open_store
    from interp_ray.session import ExplainSession
    from interp_ray.testing.specimens import save_digits_classifier

    classifier, explainer = tmp_path / "digits_cnn", tmp_path / "cnn_inte"
    save_digits_classifier(classifier)
    CnnInte.specimen(explainer, classifier)
    rows = 6

    def run() -> int:
        sets = [f"checkpoint={classifier}", "data.name=digits", "split=test", f"rows={rows}",
                f"methods=[{{name: cnn_inte, checkpoint: {explainer}}}, {{name: gradient}}]",
                f"store.root={tmp_path / 'stores'}", "store.shard_rows=4", "compute.engine=local",
                "compute.batch_size=4", "evaluation.enabled=false"]
        return run_main(main, [a for s in sets for a in ("--set", s)])

    def stores(method: str) -> list[Path]:
        return sorted(p.parent for p in (tmp_path / "stores" / "digits_cnn" / method).glob(f"*/{MANIFEST_FILE}"))

    assert run() == 0
    (first,) = stores("cnn_inte")
    store = open_store(str(first))
    assert store.manifest.column == EXPLANATION_COLUMN and store.manifest.rows == rows
    assert pq.read_schema(next(first.glob("part-*.parquet"))).field(EXPLANATION_COLUMN).type == "string"
    images = load_dataset("digits", "test").get_batch(np.arange(rows))["image"]
    session = ExplainSession.build("cnn_inte", load_classifier(classifier), str(explainer))
    want = json.loads(json.dumps([e.to_json() for e in session.explain(images)]))
    assert store.explanations() == want
    assert store.read(columns=["target"])["target"].tolist() == [e["label"] for e in want]
    (gradient,) = stores("gradient")
    assert open_store(str(gradient)).masks().shape == (rows, 8, 8)
    with pytest.raises(UserError, match="not saliency masks"):
        store.mask_shape
    parts = {p.name: p.stat().st_mtime_ns for p in first.glob("part-*.parquet")}

    from interp_ray.activations import ActivationExtractor
    from interp_ray.explainers.cnn_inte import CnnInte

    batch = load_dataset("digits", "train").get_batch(np.arange(120))
    batch = {**ActivationExtractor(str(classifier), ["relu3"])(batch), "image": batch["image"]}
    CnnInte({"layer": "relu3", "k1": 2, "k2": 2, "n_estimators": 5},
            class_names=[str(i) for i in range(10)]).fit(batch).save(str(explainer))
    assert run() == 0
    assert len(stores("cnn_inte")) == 2 and len(stores("gradient")) == 1
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("part-*.parquet")} == parts


# --- evaluation --------------------------------------------------------------------------------------------------

def test_report_matches_the_metrics_on_the_same_maps(scenes_checkpoint, tmp_path):
    from interp_ray.metrics.saliency import (causal_curves, empty_share, localisation_error, pointing_game,
                                             tune_alpha)

    assert job(scenes_checkpoint, tmp_path, "store.shard_rows=8", "evaluation.enabled=true",
               "evaluation.tune_rows=12", "evaluation.overlays=2", "evaluation.causal_steps=4",
               f"evaluation.output={tmp_path / 'report'}", methods=(("gradient", {}), ("center", {}))) == 0
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert (tmp_path / "report" / "report.md").read_text().count("| gradient |") == 1
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["overlay_00.png", "overlay_01.png"]
    test = load_scenes("test", n=ROWS, size=SIZE).get_batch(np.arange(ROWS))
    tune = load_scenes("val", n=12, size=SIZE).get_batch(np.arange(12))
    model = load_classifier(scenes_checkpoint).model.eval()
    for name in ("gradient", "center"):
        maps, targets = direct_masks(scenes_checkpoint, name, {})
        tune_maps, tune_targets = direct_masks(scenes_checkpoint, name, {}, split="val", n=12)
        alpha, _ = tune_alpha(list(tune_maps), tune["boxes"], tune["box_labels"], tune_targets)
        r = res["methods"][name]
        assert r["alpha"] == alpha
        assert r["pointing"] == pytest.approx(pointing_game(list(maps), test["boxes"], test["box_labels"],
                                                            targets)["accuracy"])
        assert r["loc_error"] == pytest.approx(localisation_error(list(maps), test["boxes"], test["box_labels"],
                                                                  targets, alpha=alpha))
        curves = causal_curves(model, test["image"], maps, targets, steps=4)
        assert r["deletion_auc"] == pytest.approx(float(curves.deletion_auc.mean()), abs=1e-5)
        assert r["insertion_auc"] == pytest.approx(float(curves.insertion_auc.mean()), abs=1e-5)
        assert r["empty_share"] == empty_share(maps)
    assert res["methods"]["center"]["empty_share"] == 0.0  # the centre map is never constant
    # a fixed α, no model: the same pointing game, no causal metrics
    stores = {m: str(store_dir(tmp_path, m)) for m in ("gradient", "center")}
    assert all(stores[m] == res["methods"][m]["store"] for m in stores)
    fixed = evaluate_saliency(stores, alpha=2.0)
    assert fixed["methods"]["gradient"]["alpha"] == 2.0 and "deletion_auc" not in fixed["methods"]["gradient"]
    assert fixed["methods"]["gradient"]["pointing"] == res["methods"]["gradient"]["pointing"]


def test_one_shuffled_batch_mixing_methods_and_splits_lands_in_each_store(scenes_checkpoint, tmp_path):
    """The routed stages as Ray Data may feed them: one batch holding rows of every store, in any order."""
    from interp_ray.config import load_config
    from interp_ray.store import finalize_store, prepare_store
    from jobs.explain_dataset import (ExplainDatasetConfig, RoutedMapper, RoutedWriter, loader_of, make_plans,
                                      mapper_kwargs, writer_kwargs)

    sets = job_args(scenes_checkpoint, tmp_path, "store.shard_rows=8", "evaluation.enabled=true",
                    "evaluation.tune_rows=12", methods=(("gradient", {}), ("feature_inversion", GFI_FAST)))[1::2]
    cfg = load_config(ExplainDatasetConfig, None, sets)
    plans = make_plans(cfg)
    assert sorted((p.method.name, p.split) for p in plans) == [
        ("feature_inversion", "test"), ("feature_inversion", "val"), ("gradient", "test"), ("gradient", "val")]
    missing = [prepare_store(p.location, p.manifest)[1] for p in plans]
    loader = loader_of(cfg, plans)
    chunks = [rows for sid, shards in enumerate(missing) for s in shards
              for rows in loader({"store": np.array([sid]), "shard": np.array([s])})]
    batch = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.random.default_rng(0).permutation(len(batch["index"]))
    records = RoutedWriter(**writer_kwargs(cfg, plans))(RoutedMapper(**mapper_kwargs(cfg, plans))(
        {k: v[order] for k, v in batch.items()}))
    assert (records["shard"] >= 0).sum() == sum(len(m) for m in missing)  # every part written from the one batch
    for plan in plans:
        finalize_store(plan.location, plan.manifest)
        got = SaliencyStore.open(plan.location).read()
        n = len(plan.dataset)
        np.testing.assert_array_equal(got["index"], np.arange(n))
        ref, targets = direct_masks(scenes_checkpoint, plan.method.name, plan.method.params, plan.split, n)
        np.testing.assert_allclose(got["saliency"], ref, atol=1e-5)
        np.testing.assert_array_equal(got["target"], targets)
        extras = {c for c in got if c.startswith("extra.")}
        assert extras == ({"extra.p_masked", "extra.fallback", "extra.mask_area", "extra.p_original",
                           "extra.p_complement", "extra.stage1_loss", "extra.stage2_loss"}
                          if plan.method.name == "feature_inversion" else set())


def test_dataset_without_boxes_gets_deletion_insertion_only(digits_checkpoint, tmp_path):
    """digits has no boxes: no α tuning (no val stores made), no pointing game; deletion/insertion still scored."""
    sets = [f"checkpoint={digits_checkpoint}", "data.name=digits", "split=test", "methods=[{name: gradient}]",
            f"store.root={tmp_path}", "compute.engine=local", "evaluation.causal_steps=4",
            f"evaluation.output={tmp_path / 'report'}"]
    assert run_main(main, [a for s in sets for a in ("--set", s)]) == 0
    assert len(list((tmp_path / "digits_cnn" / "gradient").iterdir())) == 1  # the test split only
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    row = res["methods"]["gradient"]
    assert "pointing" not in row and 0 <= row["deletion_auc"] <= 1 and res["alpha_source"] is None
    assert "| gradient | – | – | – | – |" in (tmp_path / "report" / "report.md").read_text()
