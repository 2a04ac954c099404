"""jobs/train_explainer.py on a user's captioned data: InterpNET and the Dong et al. captioner trained through the
job's own path (extraction, then Ray Train) on an image folder with ``captions.jsonl`` and on its Parquet copy with a
caption column; and every missing or malformed caption refused in one line, exit 2, before Ray or any extraction."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from captioned_data import CLASSES, caption_words, write_captioned_folder, write_parquet_copy

from interp_ray.checkpoint import save_classifier
from interp_ray.explainers.base import explainer_names
from interp_ray.explainers.interpnet.explainer import InterpNET
from interp_ray.explainers.semantic.explainer import SemanticExplainer
from interp_ray.models import build_model
from interp_ray.store import ActivationStore
from interp_ray.text import SPECIALS, tokenize
from jobs.common import run_main

pytestmark = pytest.mark.usefixtures("pinned_torch_threads")

CONCEPTS = ["red", "green", "blue", "circle", "square", "triangle"]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """The captioned folder, its Parquet copy (rows shuffled) and an untrained 3-class CNN named with its classes."""
    root = tmp_path_factory.mktemp("user")
    captions = write_captioned_folder(root / "folder")
    write_parquet_copy(root / "folder", root / "pq", captions)
    torch.manual_seed(0)
    opts = {"num_classes": 3, "in_channels": 3, "image_size": 64, "width": 4, "hidden": 8}
    save_classifier(root / "cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                    class_names=sorted(CLASSES), data={"name": "image_folder"})
    return root, captions


def data_section(root, kind):
    if kind == "folder":
        return {"name": "image_folder", "options": {"root": str(root / "folder")}}
    return {"name": "parquet", "options": {"path": str(root / "pq"), "captions_column": "text", "id_column": "id"}}


def write_config(tmp_path, root, method, kind, **changes):
    source = {"checkpoint": str(root / "cnn"), "data": data_section(root, kind), "splits": {"train": "train",
              "val": "val"}, "keep": ["sentences"], "store": {"root": str(tmp_path / "store")},
              "compute": {"engine": "local", "batch_size": 16}}
    if method == "interpnet":
        cfg = {"method": "interpnet", "source": source, "stream": {"batch_rows": 8, "shuffle_buffer": 16},
               "explainer": {"variant": "interpnet_1", "feature_layer": "gap", "embed_dim": 16, "hidden_dim": 32,
                             "hidden": [16], "max_len": 12},
               "classifier_train": {"epochs": 8, "batch_size": 8, "lr": 0.01},
               "train": {"epochs": 10, "batch_size": 8, "lr": 0.01}}
    else:
        cfg = {"method": "semantic", "source": {**source, "layers": ["gap"]},
               "stream": {"batch_rows": 8, "shuffle_buffer": 16},
               "topics": {"num_topics": 3, "max_iter": 10},
               "explainer": {"enc_hidden": 8, "interp_dim": 8, "word_dim": 8, "dec_hidden": 16, "att_dim": 8,
                             "max_len": 12},
               "train": {"epochs": 3, "batch_size": 8, "lr": 0.01},
               "labels": {"top_n": 4, "margin": 0.0, "concepts": CONCEPTS}}
    cfg.update(scaling={"num_workers": 1, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
               run={"storage_path": str(tmp_path / "runs"), "name": f"{method}-{kind}"},
               output=str(tmp_path / "out"))
    for key, value in changes.items():   # "source.keep": [...] style
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / f"{method}-{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_store(tmp_path):
    """The train store the job wrote (the only store under the root with 24 rows)."""
    found = [p.parent for p in (tmp_path / "store").rglob("_manifest.json")]
    stores = [ActivationStore.open(str(p)) for p in found]
    return next(s for s in stores if len(s) == 24)


def assert_store_rows_are_joined(store, captions):
    """Each store row's kept captions are its own image's (by the row's id), naming its class: what the trainer read."""
    batch = next(store.iter_batches(len(store), columns=["id", "label", "sentences"]))
    assert len(batch["id"]) == 24
    for row_id, sentences in zip(batch["id"], batch["sentences"]):
        assert [s for s in sentences if s] == captions[str(row_id)]


def decoded_colour_rate(sentences, ids):
    hits = [CLASSES[str(i).split("/")[1]][0] in tokenize(s) for s, i in zip(sentences, ids)]
    return float(np.mean(hits))


def test_the_registry_says_which_methods_train_on_captions():
    assert explainer_names(trains_on="captions") == ["interpnet", "semantic"]


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_interpnet_trains_on_a_users_captions(ray_local, tmp_path, user_data, kind, capsys):
    from jobs.train_explainer import main

    root, captions = user_data
    assert run_main(main, ["--config", str(write_config(tmp_path, root, "interpnet", kind))]) == 0
    assert "interpnet: best epoch" in capsys.readouterr().out
    ex = InterpNET.load(str(tmp_path / "out"))
    # The vocabulary is exactly the words of this dataset's training captions (not the scenes', not none).
    assert set(ex.vocab.tokens) - set(SPECIALS) == caption_words(captions, "train")
    store = train_store(tmp_path)
    assert_store_rows_are_joined(store, captions)
    # Decoded on the val images, the captions are in the dataset's words and name the image's colour far more often
    # than chance (1/3): with captions joined to the wrong rows the colour word would be unlearnable.
    val = next(s for s in (ActivationStore.open(str(p.parent)) for p in (tmp_path / "store").rglob("_manifest.json"))
               if len(s) == 12)
    batch = next(val.iter_batches(12, columns=["id", "gap"]))
    sentences = [e.sentence for e in ex.explain(batch)]
    assert all(set(tokenize(s)) <= caption_words(captions, "train") for s in sentences)
    assert decoded_colour_rate(sentences, batch["id"]) >= 0.75, sentences


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_semantic_trains_on_a_users_captions(ray_local, tmp_path, user_data, kind):
    from jobs.train_explainer import main

    root, captions = user_data
    assert run_main(main, ["--config", str(write_config(tmp_path, root, "semantic", kind))]) == 0
    ex = SemanticExplainer.load(str(tmp_path / "out"))
    words = caption_words(captions, "train")
    assert set(ex.vocab.tokens) - set(SPECIALS) == words
    # Topics are mined from these captions (stop words such as "a", "the", "is" removed), and the config's
    # concept words label the neurons.
    assert set(ex.topics.vocabulary) == words - {"a", "the", "is"}
    confident = {n.label for n in ex.neurons if n.confident}
    assert confident and confident <= set(CONCEPTS)
    assert {n.label for n in ex.neurons if n.label is not None} <= set(CONCEPTS)   # a dead neuron has none
    # Still images: one-frame clips of the classifier's gap layer, recorded for serving and explained as such.
    assert ex.stills and ex.frame_dim == 32 and ex.info["data"]["frames"] == 1 and ex.layers() == ["gap"]
    assert_store_rows_are_joined(train_store(tmp_path), captions)
    store = train_store(tmp_path)
    acts = next(store.iter_batches(4, columns=["gap", "prediction"]))
    out = ex.explain(ex.batch_from(np.zeros((4, 3, 64, 64), np.float32), np.full(4, -1), acts))
    assert all(set(tokenize(e.sentence)) <= words for e in out)


# --- refusals: one line, exit 2, before Ray or an extraction -----------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the job starts Ray or an extraction."""
    import jobs.extract_activations
    import jobs.train_explainer

    monkeypatch.setattr(jobs.train_explainer, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(jobs.extract_activations, "extract_many", lambda *a, **k: pytest.fail("extraction started"))


def refused(argv, capsys):
    from jobs.train_explainer import main

    t0 = time.perf_counter()
    code = run_main(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert time.perf_counter() - t0 < 20
    return err[0]


def test_a_method_that_needs_captions_says_so_before_ray(tmp_path, user_data, no_work, capsys):
    root, _ = user_data
    bare = tmp_path / "bare"
    for split in ("train", "val"):
        for cls in CLASSES:
            (bare / split / cls).mkdir(parents=True)
            for f in (root / "folder" / split / cls).iterdir():
                (bare / split / cls / f.name).write_bytes(f.read_bytes())
    cfg = write_config(tmp_path, root, "interpnet", "folder", **{"source.data.options.root": str(bare)})
    line = refused(["--config", str(cfg)], capsys)
    assert line == ("error: interpnet needs captions, and dataset 'image_folder' has none: put captions.jsonl beside "
                    "the images, at the folder's root (docs/your_model.md#captions), or name it with "
                    "source.data.options.captions")
    cfg = write_config(tmp_path, root, "semantic", "parquet", **{"source.data.options.captions_column": None})
    line = refused(["--config", str(cfg), "--local"], capsys)
    assert "semantic needs captions" in line and "set source.data.options.captions_column" in line
    # Dong et al.'s default keep names the scenes' attributes, which a user's data does not have
    cfg = write_config(tmp_path, root, "semantic", "folder", **{"source.keep": ["sentences", "attributes"]})
    assert "source.keep: image_folder/train has no column attributes; remove it" in refused(["--config", str(cfg)],
                                                                                           capsys)
    cfg = write_config(tmp_path, root, "interpnet", "folder", **{"source.keep": []})
    assert "source.keep must name 'sentences'" in refused(["--config", str(cfg)], capsys)


def test_bad_captions_are_one_line_naming_file_line_or_field(tmp_path, user_data, no_work, capsys):
    root, _ = user_data
    folder = tmp_path / "folder"
    write_captioned_folder(folder)
    good = (folder / "captions.jsonl").read_text().splitlines()
    cfg = write_config(tmp_path, root, "interpnet", "folder", **{"source.data.options.root": str(folder)})

    def with_lines(lines):
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
        return refused(["--config", str(cfg)], capsys)

    line = with_lines(good[:4] + ['{"image": "train/red_circle/077.png", "caption": "a red circle"}'] + good[4:])
    assert "captions.jsonl:5: image 'train/red_circle/077.png' is not in the image folder" in line
    line = with_lines(good[:1] + ['{"image": "train/red_circle/000.png", "captions": ["a red circle", ""]}'] + good[1:])
    assert "captions.jsonl:2: captions[1]: the caption is empty" in line
    line = with_lines([x for x in good if "train/green_square/003.png" not in x])
    assert "image train/green_square/003.png has no caption" in line
    cfg = write_config(tmp_path, root, "semantic", "parquet", **{"source.data.options.captions_column": "words"})
    assert "train.parquet: captions_column 'words' is not a column" in refused(["--config", str(cfg)], capsys)


def test_the_command_exits_2_without_starting_ray(tmp_path, user_data):
    """As a user runs it: a process, one line on stderr, exit 2, and no Ray session written anywhere."""
    root, _ = user_data
    cfg = write_config(tmp_path, root, "semantic", "parquet", **{"source.data.options.captions_column": None})
    ray_tmp = tmp_path / "ray"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "jobs.train_explainer", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "semantic needs captions" in proc.stderr and not ray_tmp.exists()
    assert not (tmp_path / "store").exists()     # no extraction either
