"""Guided feature inversion: batch independence, the mask's construction, the two stages, settings, bad input.

Models are hand-built (tests/explainers/conftest.py) so each property has a known answer and the file runs in
seconds; the trained-model claims (pointing game, two-object scenes) are in benchmarks/saliency_eval.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import interp_ray.explainers.feature_inversion.optimisation as fi
from interp_ray.errors import UserError
from interp_ray.explainers import explainer_names, get_explainer
from interp_ray.explainers.feature_inversion import FeatureInversion, GFISettings
from interp_ray.models import build_model

from interp_ray.testing.toy_models import colour_model, red_green_image, tiny_cnn

LAYERS = {"inversion_layer": "relu2", "base_layer": "relu1"}
SHORT = {"stage1_iterations": 4, "stage2_iterations": 12}  # where a property does not depend on the schedule


def gfi(model, **kw) -> FeatureInversion:
    return FeatureInversion(model, **{**LAYERS, **kw})


# --- batching ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_batch_gives_the_same_masks_as_one_image_at_a_time(model, images, variant):
    ex = gfi(model, variant=variant)  # the full schedule: divergence would build up over the 80 iterations
    targets = np.array([0, 1, 2, -1])
    batched = ex.explain({"image": images[:4], "target": targets}, {"return_weights": True})
    single = [ex.explain({"image": images[i:i + 1], "target": targets[i:i + 1]}, {"return_weights": True})[0]
              for i in range(len(targets))]
    for b, s in zip(batched, single):
        assert b.label == s.label
        np.testing.assert_allclose(b.saliency, s.saliency, atol=1e-4)
        np.testing.assert_allclose(b.extra["weights"], s.extra["weights"], atol=1e-6)
    # not a vacuous comparison: the rows differ from each other
    assert not np.allclose(batched[0].saliency, batched[1].saliency, atol=1e-2)


def test_max_batch_chunks_do_not_change_results(model, images):
    whole = gfi(model, **SHORT, max_batch=len(images)).explain({"image": images})
    chunked = gfi(model, **SHORT, max_batch=4).explain({"image": images})
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-6)


def test_train_mode_model_is_explained_in_eval_mode_and_restored(images):
    model = tiny_cnn()
    reference = gfi(model, **SHORT).explain({"image": images[:2]})
    model.train()
    again = gfi(model, **SHORT).explain({"image": images[:2]})
    assert model.training  # the caller's mode is restored
    for a, b in zip(reference, again):
        np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # gradients went to ω only


# --- the mask --------------------------------------------------------------------------------------------------


def test_weights_are_non_negative_after_clipping(model, images):
    # small weights and a strong regulariser: Adam's steps (~lr) take weights below 0 within stage 1, and
    # clipping must hold them at exactly 0
    e = gfi(model, gamma=1e4, init_weight=0.02, **SHORT).explain({"image": images[:3]}, {"return_weights": True})
    for x in e:
        for key in ("weights", "stage1_weights"):
            assert (x.extra[key] >= 0).all()
        assert (x.extra["stage1_weights"] == 0).any()


def test_mask_is_the_normalised_upsampled_weighted_channel_sum(model, images):
    # few stage-2 steps, so the weights are still far from 0 and the mask is not degenerate
    e = gfi(model, stage1_iterations=4, stage2_iterations=3, fallback_to_stage1=False).explain(
        {"image": images[:3]}, {"return_weights": True})
    with torch.no_grad():  # in float64, as GFI computes by default
        feats = copy.deepcopy(model).double().activations(torch.from_numpy(images[:3]).double(), ["relu1"])["relu1"]
    for i, x in enumerate(e):
        w = torch.from_numpy(x.extra["weights"]).double()
        m = (w[:, None, None] * feats[i]).sum(0)
        m = (m - m.min()) / (m.max() - m.min())
        m = F.interpolate(m[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        expected = (m - m.min()) / (m.max() - m.min())
        np.testing.assert_allclose(x.saliency, expected.numpy(), atol=1e-5)
        assert x.saliency.shape == (16, 16) and x.saliency.dtype == np.float32
        assert x.saliency.min() == 0.0 and x.saliency.max() == pytest.approx(1.0)


def test_stage2_separates_two_classes_and_stage1_covers_both():
    """ColourPeaks: class 0 is the reddest spot, class 1 the greenest. Stage 2 for red must keep the red square
    (and blur away the green one), for green the other way round; stage 1 must reproduce both colour maps."""
    size = 32
    model = colour_model(size)
    image, red, green = red_green_image(size)
    ex = FeatureInversion(model, inversion_layer="relu", base_layer="relu", blur_sigma=4.0)
    e_red, e_green = (ex.explain({"image": image[None], "target": np.array([c])}, {"return_stage1": True})[0]
                      for c in (0, 1))

    def peak_in(m, box):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        return box[0] <= c < box[2] and box[1] <= r < box[3]

    assert peak_in(e_red.saliency, red) and peak_in(e_green.saliency, green)
    for e, other in ((e_red, green), (e_green, red)):
        assert e.saliency[other[1]:other[3], other[0]:other[2]].max() < 0.2  # the other object is dropped
        assert e.extra["p_masked"] > e.extra["p_complement"] and not e.extra["fallback"]
    s1 = e_red.extra["stage1_saliency"]
    for box in (red, green):
        assert s1[box[1]:box[3], box[0]:box[2]].max() > 0.5


def test_fallback_returns_stage1_mask_when_stage2_finds_nothing(model, images):
    # with a huge δ every weight is driven to 0 in stage 2: no mask is left, so the stage-1 mask is returned
    e = gfi(model, delta=1e4, **SHORT).explain({"image": images[:2]}, {"return_stage1": True, "return_weights": True})
    for x in e:
        assert (x.extra["weights"] == 0).all() and x.extra["fallback"]
        np.testing.assert_array_equal(x.saliency, x.extra["stage1_saliency"])
    off = gfi(model, delta=1e4, fallback_to_stage1=False, **SHORT).explain({"image": images[:2]})
    assert all(x.saliency.max() == 0 and not x.extra["fallback"] for x in off)


# --- settings ----------------------------------------------------------------------------------------------------


def test_variant_settings_follow_the_paper_and_the_code():
    paper, code = GFISettings.for_variant("paper"), GFISettings.for_variant("code")
    assert (paper.stage1_iterations, paper.stage2_iterations, paper.lr, paper.init_weight) == (10, 70, 1e-2, 0.1)
    assert (paper.gamma, paper.lam, paper.delta, paper.regulariser) == (10.0, 1.0, 1.0, "l1")
    assert (paper.inversion_loss, paper.normalisation, paper.class_score) == ("squared", "minmax", "prob")
    assert (code.stage1_iterations, code.stage2_iterations) == (11, 69)
    assert (code.gamma, code.delta, code.regulariser, code.inversion_loss) == (5.0, 2.0, "l2sq", "relative")
    assert code.shared_optimizer and code.upsample_first and code.normalisation == "min_over_max"


@pytest.mark.parametrize("variant, decays", [("paper", 7), ("code", 8)])
def test_learning_rate_halves_every_ten_iterations(model, images, variant, decays, monkeypatch):
    lrs: list[float] = []
    real = fi._decay
    monkeypatch.setattr(fi, "_decay", lambda opt, f: (real(opt, f), lrs.append(opt.param_groups[0]["lr"])))
    gfi(model, variant=variant).explain({"image": images[:1]})
    assert lrs == pytest.approx([1e-2 * 0.5 ** k for k in range(1, decays + 1)])


def test_code_variant_uses_the_inversion_layer_as_base_unless_told(model):
    scenes = build_model("scenes_cnn")
    assert FeatureInversion(scenes).base_layer("code") == "relu4"  # the code: l1 = l0
    assert FeatureInversion(scenes).base_layer("paper") == "relu3"
    assert gfi(model).base_layer("code") == "relu1"  # given explicitly: kept


def test_request_params_override_the_explainer_settings(model, images):
    ex = gfi(model)
    e = ex.explain({"image": images[:1]}, {"stage1_iterations": 2, "stage2_iterations": 3, "variant": "code"})[0]
    assert e.extra["iterations"] == [2, 3] and e.extra["variant"] == "code"
    assert ex.settings.stage1_iterations == 10  # the explainer itself is unchanged


@pytest.mark.parametrize("name, expected", [
    ("scenes_cnn", {"inversion": "relu4", "base": "relu3", "gradcam": "relu4"}),
    ("digits_cnn", {"inversion": "pool", "base": "relu2", "gradcam": "relu2"}),
    ("vgg16", {"inversion": "features.30", "base": "features.29", "gradcam": "features.29"}),
    ("vgg19", {"inversion": "features.36", "base": "features.35", "gradcam": "features.35"}),
    ("resnet18", {"inversion": "layer4", "base": "layer4.0", "gradcam": "layer4"}),
    ("resnet50", {"inversion": "layer4", "base": "layer4.1", "gradcam": "layer4"}),
])
def test_default_layers_per_architecture(name, expected):
    from interp_ray.explainers.baselines import GradCAM

    model = build_model(name, num_classes=4) if "cnn" not in name else build_model(name)
    fi = FeatureInversion.defaults_for(model)
    layers = {"inversion": fi["inversion_layer"], "base": fi["base_layer"],
              "gradcam": GradCAM.defaults_for(model)["layer"]}
    assert {k: layers[k] for k in expected} == expected


@pytest.mark.parametrize("name, size", [("scenes_cnn", 64), ("digits_cnn", 8), ("resnet18", 64),
                                        ("resnet50", 64), ("vgg16", 64), ("vgg19", 64)])
def test_runs_on_every_registry_classifier(name, size):
    torch.manual_seed(0)
    opts = {"image_size": size} if "cnn" in name else {"num_classes": 4, "image_size": size}
    model = build_model(name, **opts).eval()
    x = np.random.default_rng(0).random((2, model.in_channels, size, size), dtype=np.float32)
    e = FeatureInversion(model, stage1_iterations=1, stage2_iterations=1, precision="float32").explain({"image": x})
    assert len(e) == 2
    for item in e:
        assert item.saliency.shape == (size, size) and 0 <= item.saliency.min() and item.saliency.max() <= 1
        json.dumps(item.to_json(), allow_nan=False)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch, params, match", [
    ({"target": np.array([3])}, None, "out of range"),
    ({"target": np.array([-2])}, None, "out of range"),
    ({}, {"target": 7}, "out of range"),
    ({}, {"unknown": 1}, "invalid parameters"),
    ({}, {"variant": "preprint"}, "invalid parameters"),
    ({"target": np.array([0, 1])}, None, "one per image"),
])
def test_bad_requests_raise_user_error(model, images, batch, params, match):
    with pytest.raises(UserError, match=match):
        gfi(model).explain({"image": images[:1], **batch}, params)


@pytest.mark.parametrize("shape, match", [((1, 3, 8, 8), "this model takes"), ((1, 1, 16, 16), "this model takes"),
                                          ((3, 16, 16), "this model takes")])
def test_wrong_image_shape_raises_user_error(model, shape, match):
    with pytest.raises(UserError, match=match):
        gfi(model).explain({"image": np.zeros(shape, dtype=np.float32)})


def test_non_finite_or_missing_images_raise_user_error(model, images):
    bad = images[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        gfi(model).explain({"image": bad})
    with pytest.raises(UserError, match="no 'image'"):
        gfi(model).explain({"pixels": images})


@pytest.mark.parametrize("kw, match", [({"inversion_layer": "conv9"}, "unknown layer"),
                                       ({"base_layer": "nope"}, "unknown layer"),
                                       ({"variant": "draft"}, "unknown variant"),
                                       ({"gama": 1.0}, "unknown setting"),
                                       ({"stage2_iterations": -1}, "iterations")])
def test_bad_construction_raises_user_error(model, kw, match):
    with pytest.raises(UserError, match=match):
        FeatureInversion(model, **{**LAYERS, **kw})


def test_an_unregistered_architecture_reads_its_last_maps_role(model):
    """No settings kept for this model: l1 is the earlier of its last two spatial levels, l0 the later."""
    earlier, later = model.roles()["last_maps"]
    fi = FeatureInversion(model)
    assert (fi.inversion_layer, fi.base_layer("paper")) == (later, earlier)
    assert fi.base_layer("code") == later  # the code variant inverts l0 when l1 was not named, as before


def test_registered_with_its_contract():
    assert "feature_inversion" in explainer_names()
    cls = get_explainer("feature_inversion")
    assert cls.needs == frozenset({"image", "model"}) and cls.produces == frozenset({"saliency"})
    json.dumps(cls.metadata())
