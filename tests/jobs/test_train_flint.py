import numpy as np
import pytest

from interp_ray.config import load_config
from interp_ray.explainers.flint.config import FlintJobConfig
from interp_ray.explainers.flint.explainer import FlintExplainer
from jobs.common import run_main
from jobs.train_flint import main, train


@pytest.mark.ray
def test_ddp_two_workers_injected_failure_resumes_and_checkpoint_explains(ray_local, tmp_path):
    """One short Ray Train run: 2 DDP workers, a failure at epoch 1, resume from the epoch-0 checkpoint."""
    cfg = load_config(FlintJobConfig, "configs/flint_digits.yaml", [
        f"run.storage_path={tmp_path / 'runs'}", f"output={tmp_path / 'out'}", "train.epochs=3",
        "train.batch_size=64", "scaling.num_workers=2", "train.fail_at_epoch=1", "run.max_failures=1",
        "flint.relevance_samples=100", "pictures.enabled=false", "pictures.am.rounds=1", "pictures.am.n_iter=3"])
    out = train(cfg)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]            # every epoch once, none repeated
    assert [h["attempt"] for h in hist] == [0, 1, 1]          # epoch 0 kept from before the failure
    assert [h["weights"]["fid"] for h in hist] == [0.0, 0.0, 0.5]  # schedule follows the epoch, across the restart
    per_rank = hist[-1]["samples_per_rank"]
    assert hist[-1]["world_size"] == 2 and len(per_rank) == 2 and abs(per_rank[0] - per_rank[1]) <= 1
    assert sum(per_rank) >= 1257
    # DDP all-reduces the gradients: both replicas hold bit-identical Ψ, h, d and f after every epoch, across the
    # restart too (unsynchronised ranks drift apart at the first step).
    assert all(len(set(h["params_digest_per_rank"])) == 1 for h in hist)
    test = out["test"]
    assert "cns_2" in test and test["samples"] == 360
    # Three epochs train f far above chance (0.1): 0.79 here; an optimiser that does not step stays near 0.1. (g has
    # had one epoch of L_fid by the schedule, too few to ask for fidelity.)
    assert test["accuracy_f"] > 0.5, test
    explainer = FlintExplainer.load(str(tmp_path / "out"))
    assert explainer.flint.global_relevance.abs().sum() > 0 and explainer.mas_images.shape[:2] == (25, 3)
    assert explainer.config["metrics"]["test"]["fidelity"] == pytest.approx(test["fidelity"])
    # the pictures it serves were grown once, with the job's AM+PI settings, and are in the checkpoint
    pics = explainer.pictures
    assert pics is not None and pics.am == cfg.pictures.am.model_dump(mode="json")
    assert pics.attribute_am.shape == (25, 3, 1, 8, 8) and np.isfinite(pics.attribute_am).all()
    assert pics.pair_am is None or pics.pair_am.shape[1:] == (3, 1, 8, 8)
    from interp_ray.data import load_dataset

    exps = explainer.explain(load_dataset("digits", "test").get_batch(np.arange(4)))
    assert len(exps) == 4
    for e in exps:   # after 3 short epochs an input may have no relevant attribute, but r is normalised
        assert e.label == e.extra["interpreter_class"] and len(e.extra["relevance"]) == 25
        assert max(abs(r) for r in e.extra["relevance"]) == pytest.approx(1.0)


@pytest.mark.ray
def test_posthoc_workers_stream_their_shard_of_the_store_and_f_stays_as_it_was(ray_local, tmp_path,
                                                                               digits_checkpoint):
    """Post hoc on Ray Train: the taps, probabilities and input are extracted into the store first; 2 workers each
    stream their half of its train rows (a failure at epoch 1 resumes); f is the classifier, unchanged."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.data import load_dataset
    from interp_ray.store import ActivationStore

    cfg = load_config(FlintJobConfig, "configs/flint_digits.yaml", [
        f"run.storage_path={tmp_path / 'runs'}", f"output={tmp_path / 'out'}", "train.epochs=2",
        "train.batch_size=64", "scaling.num_workers=2", "train.fail_at_epoch=1", "run.max_failures=1",
        'flint.schedule={"rec": [[1, 0.8]], "fid": [[2, 0.5]]}',   # two epochs: fidelity on in the second
        "flint.mode=posthoc", f"flint.predictor_checkpoint={digits_checkpoint}", f"store.root={tmp_path / 'acts'}",
        "flint.relevance_samples=100", "pictures.enabled=false", "pictures.am.rounds=1", "pictures.am.n_iter=3"])
    out = train(cfg)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [0, 1] and [h["attempt"] for h in hist] == [0, 1]
    per_rank = hist[-1]["samples_per_rank"]
    assert len(per_rank) == 2 and abs(per_rank[0] - per_rank[1]) <= 1 and 1256 <= sum(per_rank) <= 1257
    manifests = sorted((tmp_path / "acts").rglob("_manifest.json"))
    assert len(manifests) == 2   # train and val
    train_store = next(s for s in (ActivationStore.open(str(m.parent)) for m in manifests) if len(s) == 1257)
    assert {"input", "pool", "probabilities"} <= set(train_store.columns)
    test = load_dataset("digits", "test")
    f = load_classifier(digits_checkpoint).model.eval()
    rows = test.get_batch(np.arange(len(test)))
    with torch.inference_mode():
        accuracy = (f(torch.from_numpy(rows["image"])).argmax(1).numpy() == rows["label"]).mean()
    assert out["test"]["accuracy_f"] == pytest.approx(accuracy, abs=1e-12)
    explainer = FlintExplainer.load(str(tmp_path / "out"))
    assert explainer.config["mode"] == "posthoc" and explainer.mas_images.shape[:2] == (25, 3)
    assert explainer.flint.global_relevance.abs().sum() > 0
    # its pictures were grown from the store's input rows and kept; served with the classifier it was trained for,
    # it explains that classifier's predictions (f is the classifier's weights)
    assert explainer.pictures is not None
    np.testing.assert_array_equal(explainer.pictures.attribute_mas, explainer.mas_images)
    from interp_ray.session import ExplainSession

    whose = ExplainSession.around(explainer, load_classifier(digits_checkpoint)).whose_predictions(rows["image"][:4])
    assert [w["model"] for w in whose] == ["classifier"] * 4 and all(w["agrees"] for w in whose)


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    cases = {
        "needs predictor_checkpoint": ["--config", "configs/flint_digits.yaml", "--set", "flint.mode=posthoc"],
        "no checkpoint at": ["--config", "configs/flint_digits.yaml", "--set", "flint.mode=posthoc",
                             "--set", f"flint.predictor_checkpoint={tmp_path / 'missing'}"],
        "unknown layer 'conv9'": ["--config", "configs/flint_digits.yaml", "--set", "flint.layers=[conv9]"],
        "unknown FLINT schedule": ["--config", "configs/flint_digits.yaml", "--set", "flint.schedule=svhn"],
        "does not exist": ["--config", str(tmp_path / "missing.yaml")],
        # every preset turns fidelity on at epoch 3: a shorter run is refused before anything is loaded (the missing
        # predictor checkpoint is not reached)
        "fidelity term (fid) turns on at epoch 3, but train.epochs is 2": [
            "--config", "configs/flint_digits.yaml", "--set", "flint.mode=posthoc", "--set", "train.epochs=2",
            "--set", f"flint.predictor_checkpoint={tmp_path / 'missing'}"],
    }
    for expected, argv in cases.items():
        assert run_main(main, argv) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)


def test_scenes_config_validates_and_builds():
    from interp_ray.explainers.flint.model import build_flint, resolved_flint_spec
    from interp_ray.models import build_model

    cfg = load_config(FlintJobConfig, "configs/flint_scenes.yaml")
    size = cfg.data.options["size"]
    spec = resolved_flint_spec(build_model("scenes_cnn", num_classes=12, image_size=size), cfg.flint)
    assert spec["layers"] == ["relu3", "relu4"] and spec["recon_loss"] == cfg.flint.recon_loss
    model = build_flint(build_model("scenes_cnn", num_classes=12, image_size=size), spec)
    assert model.n_attributes == cfg.flint.n_attributes
