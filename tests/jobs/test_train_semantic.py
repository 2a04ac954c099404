"""The semantic-captioner jobs: a Ray Train run (DDP on 2 workers) that survives an injected failure and resumes from
its checkpoint, on a fixture in the video-feature layout; the in-process trainer and the revise-caption CLI; bad
input at the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from interp_ray.config import load_config
from interp_ray.data.video_features import VideoItems, write_video_features
from interp_ray.explainers.semantic import SemanticExplainer
from jobs.common import run_main
from jobs.train_semantic import INIT_DIR, SemanticJobConfig

D, K = 6, 4


# Small LSTMs on a shared 2-core box: one torch thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("pinned_torch_threads")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """MSR-VTT-style directory: 16 train and 6 validate videos of 3–4 frames with two kinds of caption."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for split, n, off in (("train", 16, 0), ("validate", 6, 100)):
        kinds = np.arange(n) % 2
        feats = rng.normal(size=(n, K, D)).astype(np.float32)
        feats[:, :, 0] += np.where(kinds == 0, 2, -2)[:, None]
        mask = np.ones((n, K), bool)
        mask[::2, 3] = False
        caps = {0: ["a red ball rolls", "the red ball"], 1: ["a blue cube sits", "the blue cube"]}
        write_video_features(root, VideoItems(np.array([f"video{off + i}" for i in range(n)]), feats, mask,
                                              kinds.astype(np.int64), [caps[k] for k in kinds]),
                             split, append=split != "train")
    return root


def _cfg(tmp_path, layout, *overrides):
    return load_config(SemanticJobConfig, "configs/semantic_scenes.yaml", [
        "data.source=video_features", f"data.root={layout}", f"data.frames={K}", "data.cache_dir=null",
        "data.rows={train: null, val: null}", f"run.storage_path={tmp_path / 'runs'}", f"output={tmp_path / 'out'}",
        "topics.num_topics=2", "topics.max_iter=5", "explainer.enc_hidden=4", "explainer.interp_dim=6",
        "explainer.word_dim=6", "explainer.dec_hidden=8", "explainer.att_dim=4", "train.batch_size=8",
        "labels.concepts=null", "labels.top_n=4", *overrides])


@pytest.mark.ray
def test_ddp_run_survives_a_failure_and_resumes_from_its_checkpoint(ray_local, tmp_path, layout):
    from jobs.train_semantic import train

    cfg = _cfg(tmp_path, layout, "train.epochs=3", "train.fail_at_epoch=1", "scaling.num_workers=2",
               "run.name=semantic-test", "run.max_failures=1")
    out = train(cfg)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]          # epoch 0 was not redone after the failure
    assert [h["attempt"] for h in hist] == [0, 1, 1]
    assert all(h["world_size"] == 2 for h in hist)
    # DDP shards the 32 pairs: each rank sees half
    assert all(h["pairs_seen"] == 16 for h in hist)
    ex = SemanticExplainer.load(out["checkpoint"])
    assert len(ex.neurons) == 6 and ex.info["data"]["source"] == "video_features"
    init = SemanticExplainer.load(out["init"])
    assert init.vocab.digest == ex.vocab.digest
    np.testing.assert_array_equal(init.topics.topic_word, ex.topics.topic_word)
    # a rerun with the same name resumes the finished run: nothing is trained again
    again = train(cfg)
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    assert (tmp_path / "runs" / "semantic-test" / INIT_DIR).is_dir()


def test_local_training_then_revise_caption_cli(tmp_path, layout, capsys):
    from jobs.train_semantic import main

    assert run_main(main, ["--config", "configs/semantic_scenes.yaml", "--local",
                           *sum((["--set", o] for o in _cfg_overrides(tmp_path, layout)), [])]) == 0
    assert "neurons confidently labelled" in capsys.readouterr().out
    ex = SemanticExplainer.load(str(tmp_path / "out"))
    alive = [str(n.neuron) for n in ex.neurons if n.top_items]
    from jobs.revise_caption import main as revise

    code = run_main(revise, ["--checkpoint", str(tmp_path / "out"), "--features",
                             str(layout / "features" / "video0.npy"), "--suppress", ",".join(alive), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["id"] == "video0" and out["suppressed"] == sorted(int(a) for a in alive)
    assert out["before"] == ex.caption(np.load(layout / "features" / "video0.npy")[None])[0]


def _cfg_overrides(tmp_path, layout):
    return ["data.source=video_features", f"data.root={layout}", f"data.frames={K}", "data.cache_dir=null",
            "data.rows={train: null, val: null}", f"output={tmp_path / 'out'}", "topics.num_topics=2",
            "topics.max_iter=5", "explainer.enc_hidden=4", "explainer.interp_dim=6", "explainer.word_dim=6",
            "explainer.dec_hidden=8", "explainer.att_dim=4", "train.batch_size=8", "train.epochs=2",
            "labels.concepts=null", "labels.top_n=4"]


@pytest.mark.parametrize("args, match", [
    (["--checkpoint", "/nonexistent/ckpt", "--clip", "test:1", "--suppress", "red"], "no checkpoint at"),
    (["--checkpoint", "{out}", "--clip", "test:1", "--suppress", "red"], "needs a captioner trained on scene clips"),
    (["--checkpoint", "{out}", "--features", "{feat}"], "nothing to revise"),
    (["--checkpoint", "{out}", "--features", "/nonexistent.npy", "--suppress", "0"], "missing frame-feature file"),
    (["--checkpoint", "{out}", "--features", "{feat}", "--suppress", "nosuchword"], "no neuron matches"),
])
def test_revise_caption_bad_input_exits_2_with_one_line(tmp_path, layout, args, match):
    out = tmp_path / "model"
    if any("{out}" in a for a in args):
        from jobs.train_semantic import train_local

        train_local(_cfg(tmp_path, layout, f"output={out}", "train.epochs=1"))
    args = [a.format(out=out, feat=layout / "features" / "video0.npy") for a in args]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "revise-caption", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr


def test_train_semantic_bad_config_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "train-semantic", "--config",
                           "configs/semantic_scenes.yaml", "--set", "explainer.decoder_reads=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "explainer.decoder_reads" in proc.stderr
