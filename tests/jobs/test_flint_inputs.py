"""FLINT post hoc: the data's labels are numbered as the frozen predictor's outputs before anything trains on them."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interp_ray.checkpoint import save_classifier
from interp_ray.data.base import ArrayDataset
from interp_ray.errors import UserError
from interp_ray.models import build_model
from jobs.flint_inputs import align_to_predictor


def cfg_for(checkpoint, mode="posthoc"):
    return SimpleNamespace(flint=SimpleNamespace(mode=mode, predictor_checkpoint=str(checkpoint)),
                           data=SimpleNamespace(name="toy"))


def test_posthoc_labels_follow_the_predictors_classes(tmp_path):
    torch.manual_seed(0)
    opts = {"num_classes": 3, "in_channels": 1, "image_size": 8}
    save_classifier(tmp_path / "f", build_model("digits_cnn", **opts), model_name="digits_cnn", model_options=opts,
                    class_names=["ant", "bee", "cow"])
    images = np.zeros((3, 1, 8, 8), np.float32)
    ds = ArrayDataset("toy", "train", images, np.array([0, 1, 2]), class_names=["cow", "ant", "bee"])
    (aligned,) = align_to_predictor(cfg_for(tmp_path / "f"), [ds], ["train"])
    assert aligned.class_names == ["ant", "bee", "cow"]
    np.testing.assert_array_equal(aligned.get_batch(np.arange(3))["label"], [2, 0, 1])
    assert align_to_predictor(cfg_for(tmp_path / "f", mode="joint"), [ds], ["train"]) == [ds]  # f is built from it
    other = ArrayDataset("toy", "train", images, np.array([0, 1, 2]), class_names=["cow", "ant", "elk"])
    with pytest.raises(UserError, match="elk are not among the model's"):
        align_to_predictor(cfg_for(tmp_path / "f"), [other], ["train"])
