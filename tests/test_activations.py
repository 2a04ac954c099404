"""The extraction callable without Ray: same numbers as a direct model call, whatever the batching."""

import numpy as np
import pytest
import torch

from interp_ray.activations import ActivationExtractor
from interp_ray.checkpoint import load_classifier
from interp_ray.data import load_dataset
from interp_ray.errors import UserError
from interp_ray.models import UnknownLayerError

LAYERS = ["relu2", "relu3"]


@pytest.fixture(scope="module")
def digits_rows():
    ds = load_dataset("digits", "test")
    return ds.get_batch(np.arange(100))


def direct(checkpoint, images, layers):
    model = load_classifier(checkpoint).model
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.activations(torch.from_numpy(images), layers, with_logits=True).items()}


def test_columns_shapes_and_values_match_a_direct_call(digits_checkpoint, digits_rows):
    ex = ActivationExtractor(digits_checkpoint, LAYERS)
    out = ex(digits_rows)
    assert set(out) == {"id", "label", "prediction", "probabilities", *LAYERS}
    assert out["relu2"].shape == (100, 64, 8, 8) and out["relu3"].shape == (100, 128)
    assert out["probabilities"].shape == (100, 10) and out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    ref = direct(digits_checkpoint, digits_rows["image"], LAYERS)
    for layer in LAYERS:
        np.testing.assert_allclose(out[layer], ref[layer], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["prediction"], ref["logits"].argmax(1))
    np.testing.assert_array_equal(out["id"], digits_rows["id"])
    np.testing.assert_array_equal(out["label"], digits_rows["label"])
    assert ex.layer_shapes() == {"relu2": (64, 8, 8), "relu3": (128,)}


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_results_do_not_depend_on_batch_size(digits_checkpoint, digits_rows, batch_size):
    ex = ActivationExtractor(digits_checkpoint, LAYERS)
    whole = ex(digits_rows)
    parts = [ex({k: v[i:i + batch_size] for k, v in digits_rows.items()}) for i in range(0, 100, batch_size)]
    for key in ("relu2", "relu3", "probabilities"):
        np.testing.assert_allclose(np.concatenate([p[key] for p in parts]), whole[key], rtol=1e-5, atol=1e-6)


def test_read_only_inputs_passthrough_and_missing_labels(digits_checkpoint, digits_rows):
    image = digits_rows["image"][:5].copy()
    image.setflags(write=False)  # what Ray Data hands out
    index = np.arange(10, 15)
    out = ActivationExtractor(digits_checkpoint, ["relu3"])({"image": image, "index": index, "shard": index // 3})
    np.testing.assert_array_equal(out["index"], index)
    np.testing.assert_array_equal(out["label"], [-1] * 5)
    assert len(out["id"]) == 5


def test_the_input_column_is_the_image_the_model_read(digits_checkpoint, digits_rows):
    out = ActivationExtractor(digits_checkpoint, ["input", "relu3"])(digits_rows)
    assert out["input"].dtype == np.float32 and out["input"].shape == (100, 1, 8, 8)
    np.testing.assert_array_equal(out["input"], digits_rows["image"])
    assert ActivationExtractor(digits_checkpoint, ["input"]).layer_shapes() == {"input": (1, 8, 8)}


def test_default_layers_and_patterns(digits_checkpoint):
    assert ActivationExtractor(digits_checkpoint).layers == ["relu2", "relu3"]  # the model's defaults
    assert ActivationExtractor(digits_checkpoint, "conv*").layers == ["conv1", "conv2"]


def test_unknown_layer_fails_in_init_naming_valid_layers(digits_checkpoint):
    with pytest.raises(UnknownLayerError, match="unknown layer 'conv9'; valid: conv1, relu1"):
        ActivationExtractor(digits_checkpoint, ["relu2", "conv9"])


def test_changed_checkpoint_is_refused(digits_checkpoint):
    with pytest.raises(UserError, match="changed since this job started"):
        ActivationExtractor(digits_checkpoint, expect_digest="0" * 64)


def test_wrong_image_shape_is_a_user_error(digits_checkpoint):
    with pytest.raises(UserError, match="this model takes N×1×8×8"):
        ActivationExtractor(digits_checkpoint)({"image": np.zeros((2, 3, 8, 8), np.float32)})
