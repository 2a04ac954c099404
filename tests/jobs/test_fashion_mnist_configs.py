"""The Fashion-MNIST configs: each validates against its job, FLINT's carries the paper's MNIST/FashionMNIST
settings, and CNN-INTE reads the very store configs/extract_fashion_mnist.yaml writes (no second extraction)."""

from pathlib import Path

import numpy as np
import pytest

from interp_ray.config import ClassifierJobConfig, load_config
from interp_ray.explainers.flint.config import FlintJobConfig
from interp_ray.explainers.flint.model import resolved_flint_spec
from interp_ray.models import build_model
from jobs.extract_activations import ExtractJobConfig, make_plan
from jobs.fit_cnn_inte import CnnInteJobConfig, extract_config
from tests.data.test_fashion_mnist import write_gz

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_classifier_config_trains_the_papers_net_on_the_full_split():
    cfg = load_config(ClassifierJobConfig, CONFIGS / "fashion_mnist.yaml")
    assert (cfg.data.name, cfg.model.name) == ("fashion_mnist", "flint_mnist")
    assert cfg.scaling.num_workers == 1 and cfg.data.options == {}  # all 55,000 training rows, no subset option


def test_flint_config_has_the_papers_settings():
    cfg = load_config(FlintJobConfig, CONFIGS / "flint_fashion_mnist.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.schedule, cfg.train.seed) == (
        12, 16, 1e-4, "constant", 121)
    assert cfg.flint.schedule == "mnist" and cfg.flint.n_attributes == 25 and 1 / cfg.flint.tau == pytest.approx(0.1)
    # every loss term of the warm-up is on by the last epoch
    assert all(w > 0 for w in cfg.flint.resolved_schedule().weights(cfg.train.epochs).values())
    spec = resolved_flint_spec(build_model(cfg.model.name), cfg.flint)
    assert spec["layers"] == ["relu2"] and spec["recon_loss"] == "mse"
    post = load_config(FlintJobConfig, CONFIGS / "flint_fashion_mnist.yaml",
                       ["flint.mode=posthoc", "flint.predictor_checkpoint=outputs/fashion_mnist"])
    assert post.flint.resolved_schedule().weights(1)["pred"] == 0  # post hoc: f is frozen, no prediction loss


def test_cnn_inte_reads_the_extract_configs_store(tmp_path):
    import torch

    from interp_ray.checkpoint import save_classifier

    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    write_gz(root, "train", rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), (np.arange(30) % 10).astype(np.uint8))
    write_gz(root, "test", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), (np.arange(6) % 10).astype(np.uint8))
    torch.manual_seed(0)
    opts = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    ckpt = tmp_path / "clf"
    save_classifier(ckpt, build_model("flint_mnist", **opts), model_name="flint_mnist", model_options=opts,
                    class_names=[str(i) for i in range(10)])
    sets = [f"checkpoint={ckpt}", f"data.options.root={root}", "data.options.val_rows=5",
            f"store.root={tmp_path / 'acts'}"]
    ext = load_config(ExtractJobConfig, CONFIGS / "extract_fashion_mnist.yaml", sets)
    cnn = load_config(CnnInteJobConfig, CONFIGS / "cnn_inte_fashion_mnist.yaml", sets)
    assert set(ext.splits) == {"train", "val", "test"}  # all 70,000 images
    from_cnn = extract_config(cnn)
    assert cnn.cnn_inte.layer in ext.layers
    for split in from_cnn.splits:
        a, b = make_plan(ext, split), make_plan(from_cnn, split)
        assert a.location == b.location and a.manifest.shard_rows == b.manifest.shard_rows
        assert a.manifest.layers["relu3"]["shape"] == [128]
