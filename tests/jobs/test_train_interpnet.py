"""The InterpNET jobs: one Ray Train run (DDP on 2 workers, an injected failure, resume), configs, activations
cache, the evaluation table in-process, and bad input at the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from interp_ray.checkpoint import read_checkpoint, save_classifier
from interp_ray.config import load_config
from interp_ray.data.scenes import make_sentences
from interp_ray.explainers.interpnet import ActivationTable, InterpNET, state_digest
from interp_ray.models import build_model
from jobs.common import run_main
from jobs.train_interpnet import INIT_DIR, InterpNETJobConfig, load_table

DIM = 16


# Small LSTMs on a shared 2-core box: one torch thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("pinned_torch_threads")


def synthetic(n: int, seed: int, k: int = 3) -> ActivationTable:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(12, DIM))
    labels = np.arange(n) % 12
    feats = (centres[labels] + 0.35 * rng.normal(size=(n, DIM))).astype(np.float32)
    return ActivationTable(np.array([f"r{seed}-{i}" for i in range(n)]), labels.astype(np.int64), {"feat": feats},
                           [make_sentences(int(c), rng, k) for c in labels], labels.astype(np.int64))


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    path = tmp_path_factory.mktemp("cnn") / "scenes_cnn"
    save_classifier(path, build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                    class_names=[f"class {i}" for i in range(12)], data={"name": "scenes"})
    return path


def _cfg(tmp_path, tiny_cnn, *overrides):
    return load_config(InterpNETJobConfig, "configs/interpnet_scenes.yaml", [
        f"run.storage_path={tmp_path / 'runs'}", f"output={tmp_path / 'out'}", f"features.checkpoint={tiny_cnn}",
        f"features.cache_dir={tmp_path / 'cache'}", f"evaluate.output_dir={tmp_path / 'table'}",
        "explainer.feature_layer=feat", "explainer.embed_dim=16", "explainer.hidden_dim=32", "explainer.hidden=[16, 8]",
        "classifier_train.epochs=5", "train.batch_size=16", "train.lr=0.005", *overrides])


@pytest.mark.ray
def test_ddp_run_survives_a_failure_and_leaves_the_classifier_bit_identical(ray_local, tmp_path, tiny_cnn):
    from jobs.train_interpnet import train

    cfg = _cfg(tmp_path, tiny_cnn, "train.epochs=2", "train.fail_at_epoch=1", "run.max_failures=1",
               "scaling.num_workers=2", "run.name=drill")
    tables = {"train": synthetic(96, 0), "val": synthetic(24, 1)}
    out = train(cfg, tables)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [0, 1]                 # each epoch once: epoch 0 kept across the restart
    assert [h["attempt"] for h in hist] == [0, 1]
    per_rank = hist[-1]["pairs_per_rank"]
    assert hist[-1]["world_size"] == 2 and len(per_rank) == 2 and per_rank[0] == per_rank[1] == 96 * 3 // 2
    # The exported explainer holds exactly the classifier the driver trained and froze before Ray started.
    init = read_checkpoint(tmp_path / "runs" / "drill" / INIT_DIR)
    final = read_checkpoint(tmp_path / "out")
    heads = [{k: v for k, v in c.state_dict.items() if k.startswith("head.")} for c in (init, final)]
    assert heads[0] and state_digest(heads[0]) == state_digest(heads[1])
    assert out["classifier_digest_before"] == out["classifier_digest_after"]
    decoders = [{k: v for k, v in c.state_dict.items() if k.startswith("decoder.")} for c in (init, final)]
    assert state_digest(decoders[0]) != state_digest(decoders[1])
    ex = InterpNET.load(str(tmp_path / "out"))
    assert len(ex.history["explainer"]) == 2
    assert all(isinstance(e.sentence, str) for e in ex.explain({"feat": tables["val"].columns["feat"][:3]}))


def test_evaluate_writes_the_table_for_every_variant(tmp_path, tiny_cnn, monkeypatch):
    import jobs.evaluate as evaluate
    import jobs.train_interpnet as job

    tables = {"train": synthetic(96, 0), "val": synthetic(24, 1), "test": synthetic(24, 2)}
    monkeypatch.setattr(job, "load_table", lambda cfg, role: tables[role])
    monkeypatch.setattr(evaluate, "load_table", lambda cfg, role: tables[role])
    cfg = _cfg(tmp_path, tiny_cnn, "train.epochs=1", "evaluate.trainer=local", "evaluate.meteor=false",
               "evaluate.variants=[captioning, interpnet_1]", "evaluate.samples=2")
    result = evaluate.evaluate(cfg)
    assert [r["variant"] for r in result["rows"]] == ["captioning", "interpnet_1"]
    for row in result["rows"]:
        assert {"bleu4", "cider", "rouge_l", "attribute_recall", "attribute_false", "accuracy"} <= set(row)
        assert 0 <= row["accuracy"] <= 1 and (tmp_path / "table" / row["variant"] / "config.json").is_file()
    table = (tmp_path / "table" / "table.md").read_text()
    assert "InterpNET_1 (1 hidden layer)" in table and "Captioning (input only)" in table
    assert json.loads((tmp_path / "table" / "results.json").read_text())["test_images"] == 24
    # A second run reuses the checkpoints: nothing is trained again.
    again = evaluate.evaluate(cfg)
    assert all(r["train_s"] is None for r in again["rows"])
    assert [r["bleu4"] for r in again["rows"]] == [r["bleu4"] for r in result["rows"]]


def test_in_process_activations_are_cached_by_content(tmp_path, tiny_cnn):
    cfg = _cfg(tmp_path, tiny_cnn, "explainer.feature_layer=relu2", "data.options.size=32", "rows.train=24",
               "features.batch_size=10")
    first = load_table(cfg, "train")
    assert first.columns["relu2"].shape == (24, 8) and len(first.sentences) == 24 and len(first.sentences[0]) == 5
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = load_table(cfg, "train")
    np.testing.assert_array_equal(again.columns["relu2"], first.columns["relu2"])
    assert again.sentences == first.sentences and (again.prediction == first.prediction).all()
    other = load_table(_cfg(tmp_path, tiny_cnn, "explainer.feature_layer=relu2", "data.options.size=32",
                            "rows.train=12"), "train")
    assert len(other) == 12 and len(list((tmp_path / "cache").iterdir())) == 2   # other rows: another key


def test_store_source_reads_the_extract_jobs_parquet_store(tmp_path, tiny_cnn):
    """The adapter point: the same table from the activation store as from in-process extraction."""
    from jobs.extract_activations import ExtractJobConfig, extract

    # The store key covers the data config as written, so it must match the InterpNET config's data section.
    data = {"name": "scenes", "options": {"size": 32, "seed": 0, "sentences_per_image": 5, "n": 30}}
    extract(ExtractJobConfig.model_validate({
        "checkpoint": str(tiny_cnn), "layers": ["relu2"], "data": data, "splits": ["train"],
        "store": {"root": str(tmp_path / "store"), "shard_rows": 16},
        "compute": {"engine": "local", "batch_size": 10}}))
    common = ["explainer.feature_layer=relu2", "data.options.size=32", "data.options.n=30", "rows.train=20",
              "features.cache_dir=null"]
    from_store = load_table(_cfg(tmp_path, tiny_cnn, *common, "features.source=store",
                                 f"features.store_root={tmp_path / 'store'}", "features.layers=[relu2]"), "train")
    in_process = load_table(_cfg(tmp_path, tiny_cnn, *common), "train")
    assert len(from_store) == 20 and list(from_store.ids) == list(in_process.ids)
    np.testing.assert_allclose(from_store.columns["relu2"], in_process.columns["relu2"], rtol=1e-5, atol=1e-6)
    assert from_store.sentences == in_process.sentences and (from_store.labels == in_process.labels).all()


def test_shipped_configs_validate():
    scenes = load_config(InterpNETJobConfig, "configs/interpnet_scenes.yaml")
    assert scenes.explainer.feature_layer == "relu2" and scenes.evaluate.variants[-1] == "interpnet_3"
    cub = load_config(InterpNETJobConfig, "configs/interpnet_cub.yaml")
    assert cub.data.name == "cub" and cub.explainer.embed_dim == 256 and cub.explainer.hidden_dim == 512
    assert set(cub.splits) == {"train", "val", "test"}


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from jobs.evaluate import main as evaluate_main
    from jobs.train_interpnet import main as train_main

    empty, binary, hyp = tmp_path / "empty.txt", tmp_path / "refs.bin", tmp_path / "hyp.txt"
    empty.write_text("\n\n")
    binary.write_bytes(b"\x00\x01\x02PK\x03\x04")
    hyp.write_text("a red circle.\n")
    cases = {
        "no sentences": (evaluate_main, ["--hypotheses", str(hyp), "--references", str(empty)]),
        "not a text file": (evaluate_main, ["--hypotheses", str(hyp), "--references", str(binary)]),
        "not a multiple of 2": (evaluate_main, ["--hypotheses", str(hyp), "--references", str(hyp),
                                                "--refs-per-sentence", "2"]),
        "explainer.variant": (train_main, ["--config", "configs/interpnet_scenes.yaml",
                                           "--set", "explainer.variant=interpnet_7"]),
        "unknown variant 'interpnet_9'": (evaluate_main, ["--config", "configs/interpnet_scenes.yaml",
                                                          "--set", "evaluate.variants=[interpnet_9]",
                                                          "--set", f"evaluate.output_dir={tmp_path / 't'}"]),
    }
    for expected, (main, argv) in cases.items():
        assert run_main(main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)


def test_cli_module_runs_as_a_process(tmp_path):
    binary = tmp_path / "refs.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--hypotheses", str(binary), "--references",
                           str(binary)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "UTF-8" in proc.stderr
