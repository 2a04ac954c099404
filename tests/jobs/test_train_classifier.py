import subprocess
import sys

import pytest
import torch

from interp_ray.checkpoint import load_classifier
from interp_ray.config import ClassifierJobConfig, load_config
from interp_ray.data import load_dataset
from interp_ray.training import evaluate
from jobs.common import run_main
from jobs.train_classifier import main, train


def _cfg(tmp_path, *overrides):
    return load_config(ClassifierJobConfig, "configs/digits.yaml", [
        f"run.storage_path={tmp_path / 'runs'}", f"output={tmp_path / 'out'}", "train.epochs=2", *overrides])


@pytest.mark.ray
def test_two_workers_both_train_and_checkpoint_loads(ray_local, tmp_path):
    cfg = _cfg(tmp_path, "scaling.num_workers=2")
    out = train(cfg)
    last = out["history"][-1]
    assert last["world_size"] == 2
    per_rank = last["samples_per_rank"]
    assert len(per_rank) == 2 and all(n > 0 for n in per_rank)
    assert sum(per_rank) >= 1257 and abs(per_rank[0] - per_rank[1]) <= 1  # DistributedSampler halves
    loaded = load_classifier(tmp_path / "out")
    assert loaded.config["model"]["name"] == "digits_cnn"
    # DDP all-reduces the gradients: both replicas hold bit-identical weights after every epoch (unsynchronised
    # ranks, each stepping on its own half, drift apart at the first step).
    assert all(len(set(h["params_digest_per_rank"])) == 1 for h in out["history"])
    # Two epochs on digits reach far above chance (0.1): 0.79 here; an optimiser that does not step stays near 0.1.
    assert out["test_accuracy"] > 0.5, out["test_accuracy"]
    # The metrics exported with the checkpoint are the exported model's: recomputed from it on the same split.
    val = evaluate(loaded.model, load_dataset("digits", "val").loader(512), torch.device("cpu"))
    assert loaded.config["metrics"]["val_accuracy"] == pytest.approx(val["accuracy"], abs=1e-12)
    assert loaded.config["metrics"]["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-12)


@pytest.mark.ray
def test_checkpoint_every_k_epochs_and_resume_repeats_only_the_unsaved_epoch(ray_local, tmp_path, capsys,
                                                                              monkeypatch):
    """An injected failure resumes from the last checkpoint (every-epoch checkpoints, the default, are the k = 1
    case of this; the FLINT and explainer drills run it). The driver's terminal shows the failure, though Ray Train
    recovers from it, and the epochs as the workers report them, the redone one included."""
    monkeypatch.delenv("INTERP_RAY_PROGRESS", raising=False)
    from pathlib import Path

    cfg = _cfg(tmp_path, "train.epochs=4", "run.checkpoint_every=2", "run.checkpoints_to_keep=10",
               "train.fail_at_epoch=3", "run.max_failures=1")
    out = train(cfg)
    hist = out["history"]
    # Checkpoints after epochs 1 and 3 only; the failure at epoch 3 resumes from epoch 1's, so epoch 2 runs again.
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert [h["attempt"] for h in hist] == [0, 0, 1, 1]
    assert len([p for p in Path(out["run_path"]).glob("checkpoint_*") if p.is_dir()]) == 2
    assert load_classifier(tmp_path / "out").config["metrics"]["epoch"] == 3
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if "worker rank 0 failed" in ln]
    assert len(failed) == 1 and "injected failure at epoch 3" in failed[0] and "failure 1 of run.max_failures=1" \
        in failed[0], err
    shown = [ln.split(": ")[1].split(" ")[0] for ln in err.splitlines() if ln.startswith("[progress] digits_cnn-")]
    assert shown == ["1/4", "2/4", "3/4", "3/4", "4/4"], err   # epoch 3 again after the restore from epoch 2's


def test_a_torchvision_spec_is_built_from_the_data_it_is_given():
    """The job's model options (the data's classes, channels and size) build a torchvision: spec too, with the
    normalisation its options name."""
    from jobs.train_classifier import build_from_config

    cfg = load_config(ClassifierJobConfig, "configs/scenes.yaml",
                      ["model.name=torchvision:mobilenet_v3_small", "model.options.mean=imagenet",
                       "model.options.std=imagenet", "data.options.n=8"])
    _, _, model, options = build_from_config(cfg)
    assert model.input_shape == (3, 64, 64) and model.num_classes == 12 and model.normalisation is not None
    assert options["num_classes"] == 12 and options["mean"] == "imagenet"


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\n")
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    cases = {
        "not valid YAML": ["--config", str(bad)],
        "unknown dataset 'mnist2'; valid:": ["--config", "configs/digits.yaml", "--set", "data.name=mnist2"],
        "unknown model 'vit'; valid:": ["--config", "configs/digits.yaml", "--set", "model.name=vit"],
        "does not exist": ["--config", str(tmp_path / "missing.yaml")],
        "unknown option(s) colour for dataset 'digits'": [
            "--config", "configs/digits.yaml", "--set", "data.options.colour=1", "--set", f"output={existing}"],
    }
    for expected, argv in cases.items():
        assert run_main(main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)
    assert (existing / "keep.txt").read_text() == "precious"


def test_cli_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "train-classifier", "--config", "configs/digits.yaml",
                           "--set", "model.name=nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: ") and "valid: digits_cnn" in lines[-1]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "valid: " in proc.stderr
