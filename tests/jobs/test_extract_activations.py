"""The extraction job: store equals a direct model call, resumes after a kill, refuses bad input with exit code 2."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ray.checkpoint import load_classifier, save_classifier
from interp_ray.data import load_dataset
from interp_ray.models import build_model
from interp_ray.store import MANIFEST_FILE, ActivationStore, find_store
from jobs.common import EXIT_USAGE, run_main
from jobs.extract_activations import main, user_error_in

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["relu2", "relu3"]


def job(checkpoint, root, *extra, split="val", engine="local"):
    """run_main over the job with a digits config assembled from --set overrides."""
    args = ["--set", f"checkpoint={checkpoint}", "--set", f"store.root={root}", "--set", f"splits=[{split}]",
            "--set", f"layers=[{','.join(LAYERS)}]", "--set", f"compute.engine={engine}"]
    for item in extra:
        args += ["--set", item]
    return run_main(main, args)


def only_store(root) -> Path:
    (store,) = [p for p in Path(root).glob("*/*") if p.is_dir()]
    return store


def parts_snapshot(store: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(store.glob("part-*.parquet"))}


def assert_matches_direct_call(store: Path, checkpoint, split="val"):
    ds = load_dataset("digits", split)
    got = ActivationStore.open(str(store)).read()
    assert len(got["index"]) == len(ds)
    np.testing.assert_array_equal(got["index"], np.arange(len(ds)))  # every row exactly once, in order
    assert len(set(got["id"])) == len(ds)
    batch = ds.get_batch(np.arange(len(ds)))
    np.testing.assert_array_equal(got["id"], batch["id"])
    np.testing.assert_array_equal(got["label"], batch["label"])
    model = load_classifier(checkpoint).model
    with torch.inference_mode():
        ref = model.activations(torch.from_numpy(batch["image"]), LAYERS, with_logits=True)
    for layer in LAYERS:
        assert got[layer].shape == (len(ds), *ref[layer].shape[1:]) and got[layer].dtype == np.float32
        np.testing.assert_allclose(got[layer], ref[layer].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], torch.softmax(ref["logits"], 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["prediction"], ref["logits"].argmax(1).numpy())


# --- without Ray -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size,shard_rows", [(7, 40), (256, 1000)])
def test_store_equals_direct_call_whatever_batching(digits_checkpoint, tmp_path, batch_size, shard_rows):
    root = tmp_path / "acts"
    assert job(digits_checkpoint, root, f"compute.batch_size={batch_size}", f"store.shard_rows={shard_rows}") == 0
    store = only_store(root)
    assert_matches_direct_call(store, digits_checkpoint)
    # the reader finds it again from what produced it; the key does not depend on batching
    found = find_store(str(root), str(digits_checkpoint), data={"name": "digits"}, split="val", layers=LAYERS)
    assert found.location == str(store) and found.layers == {"relu2": (64, 8, 8), "relu3": (128,)}


def test_failed_run_resumes_without_rewriting_finished_shards(digits_checkpoint, tmp_path):
    root = tmp_path / "acts"
    with pytest.raises(Exception, match="injected failure after writing 2 shard"):
        job(digits_checkpoint, root, "store.shard_rows=40", "fail_after_shards=2")
    store = only_store(root)
    before = parts_snapshot(store)
    assert len(before) == 2
    with pytest.raises(Exception, match="incomplete"):
        ActivationStore.open(str(store))
    assert job(digits_checkpoint, root, "store.shard_rows=40", "compute.batch_size=33") == 0
    after = parts_snapshot(store)
    assert len(after) == 5 and {k: after[k] for k in before} == before
    assert_matches_direct_call(store, digits_checkpoint)
    assert job(digits_checkpoint, root) == 0  # complete: nothing to do, nothing rewritten
    assert parts_snapshot(store) == after


def test_unknown_layer_exits_2_with_one_line_from_the_cli(digits_checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.extract_activations", "--config", "configs/extract_digits.yaml",
         "--set", f"checkpoint={digits_checkpoint}", "--set", f"store.root={tmp_path / 'acts'}",
         "--set", "layers=[relu2,fc9]"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == ["error: unknown layer 'fc9'; valid: conv1, relu1, conv2, relu2, pool, flatten, fc1, relu3, "
                     "dropout, fc2 (and 'input', the input itself)"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "acts").exists()


def test_output_path_of_another_key_exits_2_and_is_untouched(digits_checkpoint, tmp_path, capsys):
    path = tmp_path / "mine"
    assert job(digits_checkpoint, tmp_path / "unused", f"store.path={path}", "store.shard_rows=100") == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.iterdir()}
    capsys.readouterr()
    rc = run_main(main, ["--set", f"checkpoint={digits_checkpoint}", "--set", f"store.path={path}",
                         "--set", "splits=[val]", "--set", "layers=[relu3]", "--set", "compute.engine=local"])
    assert rc == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds activations for key" in err and "nothing was touched" in err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.iterdir()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a store")
    assert job(digits_checkpoint, tmp_path, f"store.path={tmp_path / 'other'}") == EXIT_USAGE
    assert os.listdir(tmp_path / "other") == ["keep.txt"]


def broken_image_folder(tmp_path: Path, checkpoint_dir: Path) -> tuple[Path, Path]:
    """A 3-class RGB ImageFolder whose second image is not an image, and a matching 3-channel checkpoint."""
    root = tmp_path / "images"
    for cls, colour in [("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))]:
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(root / cls / "ok.png")
    (root / "a" / "zz_broken.png").write_bytes(b"\x89PNG but not really")
    torch.manual_seed(0)
    opts = {"num_classes": 3, "in_channels": 3, "image_size": 8}
    save_classifier(checkpoint_dir, build_model("digits_cnn", **opts), model_name="digits_cnn", model_options=opts,
                    class_names=["a", "b", "c"])
    return root, checkpoint_dir


def run_on_folder(root, checkpoint, out, engine):
    options = f"data.options={{root: '{root}', image_size: 8}}"
    return run_main(main, ["--set", f"checkpoint={checkpoint}", "--set", f"store.root={out}",
                           "--set", "data.name=image_folder", "--set", options,
                           "--set", "store.shard_rows=2", "--set", f"compute.engine={engine}"])


def assert_broken_row_skipped(root, out, err, ckpt):
    """The corrupt file is named in one line, and every other row landed once, its label its class's."""
    lines = [ln for ln in err.splitlines() if "zz_broken.png" in ln]
    assert len(lines) == 1 and "not a decodable image" in lines[0], err
    assert "1 of 4 rows skipped as unreadable" in err
    (store,) = [p for p in Path(out).glob("*/*") if (p / MANIFEST_FILE).is_file()]
    opened = ActivationStore.open(str(store))
    got = opened.read()
    assert len(opened) == 3 and [r["index"] for r in opened.manifest.skipped] == [1]
    assert list(got["index"]) == [0, 2, 3] and list(got["id"]) == ["a/ok.png", "b/ok.png", "c/ok.png"]
    np.testing.assert_array_equal(got["label"], [0, 1, 2])
    # the loader ships uint8 pixels and the extractor scales them: the store holds what the model gives on the
    # dataset's float images (a pixel left at 0..255 would saturate the softmax)
    images = load_dataset("image_folder", "train", root=str(root), image_size=8).get_batch([0, 2, 3])["image"]
    with torch.inference_mode():
        logits = load_classifier(str(ckpt)).model(torch.from_numpy(images))
    np.testing.assert_allclose(got["probabilities"], torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-6)
    return store


def logged(caplog) -> str:
    text = caplog.text
    caplog.clear()
    return text


def test_unreadable_input_file_is_one_line_and_every_other_row_lands(tmp_path, caplog):
    root, ckpt = broken_image_folder(tmp_path, tmp_path / "ckpt")
    assert run_on_folder(root, ckpt, tmp_path / "acts", "local") == 0
    store = assert_broken_row_skipped(root, tmp_path / "acts", logged(caplog), ckpt)
    # a rerun finds the store complete (the part of the skipped row accounts for it): nothing is rewritten, the
    # skipped row is reported again
    before = parts_snapshot(store)
    assert run_on_folder(root, ckpt, tmp_path / "acts", "local") == 0
    assert "1 of 4 rows skipped" in logged(caplog) and parts_snapshot(store) == before
    # the part holding the skipped row deleted by hand: only it is recomputed, with the same skip
    (store / "part-000000.parquet").unlink()
    assert run_on_folder(root, ckpt, tmp_path / "acts", "local") == 0
    assert_broken_row_skipped(root, tmp_path / "acts", logged(caplog), ckpt)
    assert parts_snapshot(store)["part-000001.parquet"] == before["part-000001.parquet"]


def test_a_store_whose_every_row_is_unreadable_is_refused(tmp_path, capsys):
    root, ckpt = broken_image_folder(tmp_path, tmp_path / "ckpt")
    for png in root.glob("*/ok.png"):
        png.write_bytes(b"broken too")
    assert run_on_folder(root, ckpt, tmp_path / "acts", "local") == EXIT_USAGE
    assert "no input row of" in capsys.readouterr().err


def test_user_error_is_recovered_from_ray_task_text():
    class Wrapped(Exception):
        pass

    text = ("\x1b[36mray::MapBatches(ShardLoader)()\x1b[39m (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 1\n"
            "interp_ray.models.base.UnknownLayerError: unknown layer 'x'; valid: a\n\nThe above exception…\n"
            "ray.exceptions.UserCodeException: UDF failed")
    assert str(user_error_in(Wrapped(text))) == "unknown layer 'x'; valid: a"
    assert user_error_in(Wrapped("builtins.ValueError: nope")) is None


# --- on Ray ------------------------------------------------------------------------------------------------------

@pytest.mark.ray
def test_ray_unreadable_input_file_is_skipped_in_the_loader_tasks(ray_local, tmp_path, caplog):
    root, ckpt = broken_image_folder(tmp_path, tmp_path / "ckpt")
    assert run_on_folder(root, ckpt, tmp_path / "acts", "ray") == 0
    assert_broken_row_skipped(root, tmp_path / "acts", logged(caplog), ckpt)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_kill_9_midway_then_rerun_finishes_exactly_once(ray_local, digits_checkpoint, tmp_path):
    """A real ``kill -9`` of the driver while shards are being written, then a rerun with other batching and
    concurrency: finished parts are kept as they are, every row lands once, values equal a direct model call."""
    root = tmp_path / "acts"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jobs.extract_activations", "--address", address,
           "--set", f"checkpoint={digits_checkpoint}", "--set", f"store.root={root}", "--set", "splits=[val]",
           "--set", f"layers=[{','.join(LAYERS)}]", "--set", "store.shard_rows=20", "--set", "compute.batch_size=8",
           "--set", "fail_after_shards=3", "--set", "fail_mode=hang"]  # the writer stops after 3 parts
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            parts = list(root.glob("*/*/part-*.parquet"))
            if len(parts) >= 3:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert len(parts) >= 3, "the job wrote no parts in time"
        time.sleep(1.0)  # let the writer reach its hang: the kill lands with work still queued
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    store = only_store(root)
    before = parts_snapshot(store)
    assert len(before) == 3 and (store / MANIFEST_FILE).is_file()

    assert job(digits_checkpoint, root, "store.shard_rows=20", "compute.batch_size=13", "compute.actors=2",
               engine="ray") == 0
    after = parts_snapshot(store)
    assert len(after) == 9  # 180 val rows / 20
    assert {k: after[k] for k in before} == before  # not one finished shard rewritten
    assert_matches_direct_call(store, digits_checkpoint)
    # the same rows through Ray Data, as Ray Train's get_dataset_shard would stream them
    opened = ActivationStore.open(str(store))
    rows = list(opened.to_ray(columns=["index", "relu3"]).iter_rows())
    by_index = {int(r["index"]): np.asarray(r["relu3"]) for r in rows}
    local = opened.read(columns=["index", "relu3"])
    assert sorted(by_index) == list(range(180)) and by_index[17].shape == (128,)
    np.testing.assert_array_equal(np.stack([by_index[i] for i in range(180)]), local["relu3"])


def test_kept_columns_and_clips_are_stored_beside_the_activations(tmp_path):
    """``keep`` copies dataset columns (sentences, attributes) into the same rows; a clip dataset gives one row per
    clip with every frame's layer, equal to each frame through the model on its own; the key covers ``keep``."""
    from interp_ray.data.scenes import load_scene_clips
    from jobs.extract_activations import ExtractJobConfig, extract

    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    save_classifier(tmp_path / "cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn",
                    model_options=opts, class_names=[str(i) for i in range(12)])

    def run(data, keep):
        cfg = ExtractJobConfig.model_validate({
            "checkpoint": str(tmp_path / "cnn"), "layers": ["gap"], "data": data, "splits": ["train"], "keep": keep,
            "store": {"root": str(tmp_path / "store"), "shard_rows": 4}, "compute": {"engine": "local",
                                                                                    "batch_size": 3}})
        return ActivationStore.open(extract(cfg)[0]["location"])

    clips = {"name": "scene_clips", "options": {"n": 6, "frames": 3, "size": 32, "sentences_per_image": 2}}
    store = run(clips, ["sentences", "attributes"])
    got = store.read()
    truth = load_scene_clips("train", n=6, frames=3, size=32, sentences_per_image=2).get_batch(np.arange(6))
    assert got["gap"].shape == (6, 3, 32, 1, 1) and store.layers["gap"] == (3, 32, 1, 1)
    assert got["sentences"].tolist() == truth["sentences"].tolist()
    assert (got["attributes"] == truth["attributes"]).all() and got["attributes"].dtype == np.int64
    model = load_classifier(tmp_path / "cnn").model
    with torch.no_grad():
        frame2 = model.activations(torch.from_numpy(truth["clip"][:, 2]), ["gap"])["gap"].numpy()
    np.testing.assert_allclose(got["gap"][:, 2], frame2, rtol=1e-5, atol=1e-6)
    assert run(clips, ["sentences"]).key != store.key and run(clips, []).key not in (store.key,)
    with pytest.raises(Exception, match="no column nope"):
        run(clips, ["nope"])


def test_jobs_that_share_a_classifier_share_one_pipeline(tmp_path, monkeypatch):
    """extract_many: stores of several jobs (other row counts per split, as a training job's roles) are filled by
    one pipeline when classifier, layers and compute agree, by another when compute differs; a store asked for twice
    is filled once; results come back per (job, split), in order, each with its own rows."""
    import jobs.extract_activations as ex

    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    save_classifier(tmp_path / "cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn",
                    model_options=opts, class_names=[str(i) for i in range(12)])
    calls = []
    fill = ex.fill_stores
    monkeypatch.setattr(ex, "fill_stores", lambda cfg, prepared, **kw: calls.append(len(prepared))
                        or fill(cfg, prepared, **kw))

    def job(split, n, batch_size=4):
        return ex.ExtractJobConfig.model_validate({
            "checkpoint": str(tmp_path / "cnn"), "layers": ["gap"], "splits": [split],
            "data": {"name": "scenes", "options": {"n": n, "size": 32}}, "store": {"root": str(tmp_path / "s")},
            "compute": {"engine": "local", "batch_size": batch_size}})

    outs = ex.extract_many([job("train", 12), job("val", 5), job("train", 12), job("test", 7, batch_size=3)])
    assert calls == [2, 1]                 # train+val in one pipeline, test (other batching) in its own
    assert [o["rows"] for o in outs] == [12, 5, 12, 7] and outs[0]["location"] == outs[2]["location"]
    for out, split in zip(outs, ["train", "val", "train", "test"]):
        ids = ActivationStore.open(out["location"]).read(columns=["id"])["id"]
        truth = load_dataset("scenes", split, n=out["rows"], size=32).get_batch(np.arange(out["rows"]))["id"]
        np.testing.assert_array_equal(ids, truth)
    assert ex.extract_many([job("val", 5)])[0]["computed_shards"] == 0  # complete: nothing recomputed


@pytest.mark.ray
def test_one_ray_data_pipeline_fills_every_split_with_its_own_rows(ray_local, tmp_path):
    """Three splits through one Ray Data pipeline: each store holds exactly its split's rows — ids, the model's
    activations of its images, and its sentences, of different lengths in different batches (numpy str arrays of
    different widths) — nothing routed to another split's store."""
    from jobs.extract_activations import ExtractJobConfig, extract

    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    save_classifier(tmp_path / "cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn",
                    model_options=opts, class_names=[str(i) for i in range(12)])
    data = {"name": "scenes", "options": {"n": 24, "size": 32}}
    cfg = ExtractJobConfig.model_validate({
        "checkpoint": str(tmp_path / "cnn"), "layers": ["gap"], "data": data, "splits": ["train", "val", "test"],
        "keep": ["sentences"], "store": {"root": str(tmp_path / "store"), "shard_rows": 8},
        "compute": {"engine": "ray", "batch_size": 5, "load_num_cpus": 0.25}})
    outs = extract(cfg)
    model = load_classifier(tmp_path / "cnn").model
    assert [o["split"] for o in outs] == ["train", "val", "test"] and len({o["location"] for o in outs}) == 3
    for out in outs:
        got = ActivationStore.open(out["location"]).read()
        truth = load_dataset("scenes", out["split"], n=24, size=32).get_batch(np.arange(24))
        assert out["computed_shards"] == 3 and out["computed_rows"] == 24
        np.testing.assert_array_equal(got["id"], truth["id"])
        assert got["sentences"].tolist() == truth["sentences"].tolist()
        with torch.no_grad():
            ref = model.activations(torch.from_numpy(truth["image"]), ["gap"])["gap"].numpy()
        np.testing.assert_allclose(got["gap"], ref, rtol=1e-5, atol=1e-6)


def test_a_users_imported_model_is_extracted_with_its_normalisation(tmp_path):
    """A model of the user's own module, imported from a `.pt` file with normalisation: the extraction job (local
    engine) stores what the original module gives on normalised pixels, under its spec's name."""
    from interp_ray.checkpoint import import_model
    from user_models import build

    torch.manual_seed(0)
    original = build(num_classes=12).eval()
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, tmp_path / "w.pt")
    ckpt = tmp_path / "ckpt"
    import_model("user_models:build", weights=tmp_path / "w.pt", output=ckpt,
                 options={"image_size": 32, "num_classes": 12, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]})
    assert run_main(main, ["--set", f"checkpoint={ckpt}", "--set", f"store.root={tmp_path / 'acts'}",
                           "--set", "splits=[val]", "--set", "layers=[features,pool]", "--set", "data.name=scenes",
                           "--set", "data.options={size: 32, n: 24}", "--set", "compute.engine=local"]) == 0
    (store,) = [p for p in (tmp_path / "acts").glob("*/*") if p.is_dir()]
    assert store.parent.name == "user_models:build"
    got = ActivationStore.open(str(store)).read()
    images = load_dataset("scenes", "val", size=32, n=24).get_batch(np.arange(len(got["index"])))["image"]
    x = (torch.from_numpy(images) - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) \
        / torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = original.features(x)
        logits = original(x)
    np.testing.assert_allclose(got["features"], features.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-6)


# --- how layers are kept; parts sized in bytes -------------------------------------------------------------------

KEPT = ["store.dtype=bfloat16", "store.layers.relu2.reduce=avgpool", "store.layers.relu2.pool_size=3",
        "store.layers.relu2.channels=[9,0,4]", "store.layers.relu3.dtype=float16"]


def test_storage_options_from_set_reach_the_store_and_resume(digits_checkpoint, tmp_path):
    """--set store.dtype / store.layers.<layer>.… : the store holds torch's own reduction and cast of the direct
    activations, under a key of its own, and a failed run resumes as a plain one does."""
    from interp_ray.store import bfloat16_to_float32

    root = tmp_path / "acts"
    with pytest.raises(Exception, match="injected failure after writing 2 shard"):
        job(digits_checkpoint, root, "store.shard_rows=40", "fail_after_shards=2", *KEPT)
    store_dir = only_store(root)
    before = parts_snapshot(store_dir)
    assert job(digits_checkpoint, root, "store.shard_rows=40", "compute.batch_size=33", *KEPT) == 0
    after = parts_snapshot(store_dir)
    assert len(after) == 5 and {k: after[k] for k in before} == before
    store = ActivationStore.open(str(store_dir))
    assert store.layers == {"relu2": (3, 3, 3), "relu3": (128,)}
    spec = store.manifest.layers["relu2"]
    assert spec["dtype"] == "bfloat16" and spec["source_shape"] == [64, 8, 8] and spec["channels"] == [9, 0, 4]
    assert store.manifest.layers["relu3"]["dtype"] == "float16"
    ds = load_dataset("digits", "val")
    batch = ds.get_batch(np.arange(len(ds)))
    model = load_classifier(digits_checkpoint).model
    with torch.inference_mode():
        ref = model.activations(torch.from_numpy(batch["image"]), LAYERS)
    want2 = torch.nn.functional.adaptive_avg_pool2d(ref["relu2"][:, [9, 0, 4]], 3).to(torch.bfloat16)
    raw = store.read(dtype="stored")
    np.testing.assert_array_equal(raw["relu2"], want2.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(raw["relu3"], ref["relu3"].half().numpy())
    got = store.read()
    np.testing.assert_array_equal(got["relu2"], bfloat16_to_float32(raw["relu2"]))
    assert got["relu3"].dtype == np.float32
    # its own key: the plain store is another, and the reader finds this one from the same storage config
    assert job(digits_checkpoint, root) == 0
    assert len([p for p in root.glob("*/*") if p.is_dir()]) == 2
    found = find_store(str(root), str(digits_checkpoint), data={"name": "digits"}, split="val", layers=LAYERS,
                       storage={"dtype": "bfloat16", "layers": {"relu2": {"reduce": "avgpool", "pool_size": 3,
                                                                          "channels": [9, 0, 4]},
                                                                "relu3": {"dtype": "float16"}}})
    assert found.location == str(store_dir)


@pytest.mark.parametrize("setting,line", [
    ("store.layers.relu2.reduce=median",
     "error: config: store.layers.relu2.reduce: Input should be 'none', 'mean', 'max' or 'avgpool'"),
    ("store.layers.relu2.channels=[3,99]",
     "error: store.layers.relu2.channels: channel 99 is out of range; relu2 has 64 channels (0..63)"),
    ("store.layers.relu3.reduce=max",
     "error: store.layers.relu3.reduce: max reduces the H×W of a C×H×W map, but relu3 is 128"),
    ("store.layers.relu7.dtype=float16",
     "error: store.layers.relu7: not an extracted layer; extracted: relu2, relu3"),
    ("store.dtype=int8", "error: config: store.dtype: Input should be 'float32', 'float16' or 'bfloat16'"),
    ("store.part_bytes=12parsecs",
     "error: config: store.part_bytes: '12parsecs' is not a size; write bytes or e.g. 128MiB, 64MB, 1GiB"),
])
def test_bad_storage_config_exits_2_with_one_line(digits_checkpoint, tmp_path, capsys, setting, line):
    assert job(digits_checkpoint, tmp_path / "acts", setting) == EXIT_USAGE
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert errors == [line]
    assert not (tmp_path / "acts").exists()


# One extraction in a fresh process, its peak memory growth measured: every code path once on a few rows (imports,
# allocator arenas, the model's buffers), then the peak RSS (VmHWM) reset and the store written. A 64×64 scenes_cnn of
# width 64 taps relu1: 64×64×64 float32 = 1 MiB a row.
MEMORY_PROBE = r"""
import json, sys
import torch
from interp_ray.checkpoint import save_classifier
from interp_ray.models import build_model
from jobs.extract_activations import ExtractJobConfig, extract

out, rows, part_bytes, shard_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
opts = {"num_classes": 12, "in_channels": 3, "image_size": 64, "width": 64, "hidden": 8}
save_classifier(f"{out}/cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                class_names=[str(i) for i in range(12)])


def config(n, root):
    return ExtractJobConfig.model_validate({
        "checkpoint": f"{out}/cnn", "layers": ["relu1"], "splits": ["train"],
        "data": {"name": "scenes", "options": {"n": n, "size": 64}},
        "store": {"root": f"{out}/{root}", "part_bytes": part_bytes, "shard_rows": shard_rows},
        "compute": {"engine": "local", "batch_size": 4}})


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


extract(config(8, "warm"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS")
result = extract(config(rows, "store"))[0]
print(json.dumps({"growth": status("VmHWM") - base, "shards": result["shards"], "rows": result["rows"],
                  "location": result["location"]}))
"""


def peak_growth(tmp_path, rows: int, part_bytes: int, shard_rows: int) -> dict:
    import json

    tmp_path.mkdir()
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(rows), str(part_bytes),
                           str(shard_rows)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_rows_of_a_mebibyte_are_written_with_memory_bounded_by_the_part_size(tmp_path):
    """Rows of 1 MiB, parts of 16 MiB: the writer's peak memory growth stays under 3 parts' worth over 5 parts, and
    the store reads back whole; the same rows as one 64-row part (a part sized in rows) break that bound."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    mib, rows = 2**20, 64
    bounded = peak_growth(tmp_path / "bytes", rows, 16 * mib, 2048)
    assert bounded["shards"] == 5 and bounded["rows"] == rows  # 15 rows of 1 MiB + 1 KiB a part
    store = ActivationStore.open(bounded["location"])
    assert store.layers == {"relu1": (64, 64, 64)} and store.manifest.shard_rows == 15
    assert sum(len(b["index"]) for b in store.iter_batches(16, columns=["index"])) == rows
    assert bounded["growth"] < 3 * 16 * mib, bounded
    by_rows = peak_growth(tmp_path / "rows", rows, 2**30, rows)
    assert by_rows["shards"] == 1
    assert by_rows["growth"] > max(3 * 16 * mib, rows * mib), by_rows  # the 64 MiB part shows in the measure
