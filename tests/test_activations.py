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


# --- how a store keeps a layer: channels, spatial reduction, dtype -----------------------------------------------

def bits(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("spec,reference", [
    ({"reduce": "mean"}, lambda t: t.mean(dim=(2, 3))),
    ({"reduce": "max"}, lambda t: t.amax(dim=(2, 3))),
    ({"reduce": "avgpool", "pool_size": 3}, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 3)),  # 8 → 3
    ({"reduce": "avgpool", "pool_size": 1}, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1)),
    ({"channels": [5, 0, 63]}, lambda t: t[:, [5, 0, 63]]),
    ({"channels": [7, 2], "reduce": "max"}, lambda t: t[:, [7, 2]].amax(dim=(2, 3))),
    ({"dtype": "float16"}, lambda t: t.half()),
    ({"dtype": "float16", "reduce": "avgpool", "pool_size": 2},
     lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 2).half()),
])
def test_kept_layer_equals_torch_on_the_direct_activations(digits_checkpoint, digits_rows, spec, reference):
    ex = ActivationExtractor(digits_checkpoint, LAYERS, storage={"relu2": spec})
    out = ex(digits_rows)
    want = reference(torch.from_numpy(direct(digits_checkpoint, digits_rows["image"], LAYERS)["relu2"])).numpy()
    assert out["relu2"].dtype == want.dtype and out["relu2"].shape == want.shape
    np.testing.assert_array_equal(out["relu2"], want)
    assert ex.layer_shapes() == {"relu2": want.shape[1:], "relu3": (128,)}
    np.testing.assert_array_equal(out["relu3"], ActivationExtractor(digits_checkpoint, LAYERS)(digits_rows)["relu3"])


def test_bfloat16_layers_come_out_as_the_bits_of_torchs_cast(digits_checkpoint, digits_rows):
    ex = ActivationExtractor(digits_checkpoint, LAYERS, storage={"relu2": {"dtype": "bfloat16", "reduce": "mean"},
                                                                 "relu3": {"dtype": "bfloat16", "channels": [3, 1]}})
    out = ex(digits_rows)
    ref = {k: torch.from_numpy(v) for k, v in direct(digits_checkpoint, digits_rows["image"], LAYERS).items()}
    assert out["relu2"].dtype == np.uint16 and out["relu2"].shape == (100, 64)
    np.testing.assert_array_equal(out["relu2"], bits(ref["relu2"].mean(dim=(2, 3))))
    np.testing.assert_array_equal(out["relu3"], bits(ref["relu3"][:, [3, 1]]))
    assert ex.layer_dtypes() == {"relu2": "bfloat16", "relu3": "bfloat16"}


def test_bad_storage_fails_at_init_with_one_line_naming_the_field(digits_checkpoint):
    with pytest.raises(UserError, match=r"^store\.layers\.relu2\.channels: channel 64 is out of range; relu2 has 64 "
                                        r"channels \(0\.\.63\)$"):
        ActivationExtractor(digits_checkpoint, LAYERS, storage={"relu2": {"channels": [0, 64]}})
    with pytest.raises(UserError, match=r"^store\.layers\.relu3\.reduce: mean reduces the H×W of a C×H×W map, but "
                                        r"relu3 is 128$"):
        ActivationExtractor(digits_checkpoint, LAYERS, storage={"relu3": {"reduce": "mean"}})
    with pytest.raises(UserError, match=r"^store\.layers\.relu9: not an extracted layer; extracted: relu2, relu3$"):
        ActivationExtractor(digits_checkpoint, LAYERS, storage={"relu9": {}})


def test_autocast_runs_the_model_in_the_lower_precision(digits_checkpoint, digits_rows):
    """compute.autocast: the forward under torch.autocast — close to float32, not equal to it (so it really ran in
    bfloat16), columns still float32, and the same predictions as the direct call on nearly every row."""
    plain = ActivationExtractor(digits_checkpoint, LAYERS)(digits_rows)
    mixed = ActivationExtractor(digits_checkpoint, LAYERS, autocast="bfloat16")(digits_rows)
    for layer in LAYERS:
        assert mixed[layer].dtype == np.float32 and mixed[layer].shape == plain[layer].shape
        assert not np.array_equal(mixed[layer], plain[layer])
        np.testing.assert_allclose(mixed[layer], plain[layer], rtol=0.1, atol=0.1 * np.abs(plain[layer]).max())
    assert (mixed["prediction"] == plain["prediction"]).mean() >= 0.95
