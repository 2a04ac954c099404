"""Saliency baselines (Grad-CAM, gradient, occlusion via Captum; centre) and the invisible-pixel axiom.

The axiom: a pixel the model cannot see (zeroed before the first layer) gets no saliency. Gradient methods satisfy
it exactly at every such pixel. Grad-CAM and GFI build their maps from a layer's feature grid, so they satisfy it
where that grid is blind too: on the pixels whose every feature cell sees only invisible input (bias-free layers
map zeros to zeros), i.e. away from the visible region by the receptive field plus one cell of interpolation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp_ray.errors import UserError
from interp_ray.explainers import explainer_names, get_explainer
from interp_ray.explainers.baselines import CenterBaseline, GradCAM, Gradient, Occlusion, center_map
from interp_ray.explainers.feature_inversion import FeatureInversion
from interp_ray.models import Classifier

from interp_ray.testing.toy_models import tiny_cnn

SIZE = 16
BLIND_COLUMNS = 8  # columns 0..7 are invisible
# relu2 sits on a 8×8 grid after one 2× pool; conv1 + conv2 see ±3 input pixels around a cell's 2-pixel footprint,
# so grid columns 0–1 see only input columns 0..6 (blind); bilinear upsampling mixes grid columns 0–1 into output
# columns 0..2 only. Hence columns 0..2 must be exactly 0 for the feature-grid methods.
GRID_BLIND_COLUMNS = 3


@pytest.fixture(scope="module")
def blind_model() -> Classifier:
    visible = torch.ones(SIZE, SIZE)
    visible[:, :BLIND_COLUMNS] = 0
    return tiny_cnn(visible=visible, bias=False, seed=3)


@pytest.fixture(scope="module")
def bright_images() -> np.ndarray:
    # content everywhere, so a method that ignored the blindness would put saliency in the blind half
    return np.random.default_rng(1).uniform(0.2, 1.0, (4, 3, SIZE, SIZE)).astype(np.float32)


# --- the invisible-pixel axiom -----------------------------------------------------------------------------------


def test_gradient_gives_no_saliency_to_invisible_pixels(blind_model, bright_images):
    for e in Gradient(blind_model).explain({"image": bright_images, "target": np.array([0, 1, 2, 0])}):
        assert (e.saliency[:, :BLIND_COLUMNS] == 0).all()
        assert e.saliency[:, BLIND_COLUMNS:].max() == 1.0


def test_gradcam_gives_no_saliency_where_its_layer_is_blind(blind_model, bright_images):
    for e in GradCAM(blind_model, layer="relu2").explain({"image": bright_images, "target": np.array([0, 1, 2, 0])}):
        assert (e.saliency[:, :GRID_BLIND_COLUMNS] == 0).all()
        assert e.saliency[:, BLIND_COLUMNS:].max() > 0  # not vacuous: the visible half has saliency


def test_gfi_gives_no_saliency_where_its_base_layer_is_blind(blind_model, bright_images):
    ex = FeatureInversion(blind_model, inversion_layer="relu2", base_layer="relu2", stage1_iterations=4,
                          stage2_iterations=12)
    for e in ex.explain({"image": bright_images[:2]}, {"return_stage1": True}):
        assert (e.saliency[:, :GRID_BLIND_COLUMNS] == 0).all()
        assert (e.extra["stage1_saliency"][:, :GRID_BLIND_COLUMNS] == 0).all()
        assert e.saliency[:, BLIND_COLUMNS:].max() > 0


def test_the_blind_model_really_ignores_the_blind_half(blind_model, bright_images):
    """Guards the axiom tests themselves: changing the blind half must not change the output at all."""
    x = torch.from_numpy(bright_images)
    y = x.clone()
    y[..., :BLIND_COLUMNS] = torch.rand_like(y[..., :BLIND_COLUMNS])
    with torch.no_grad():
        assert torch.equal(blind_model(x), blind_model(y))


# --- each method against a hand computation -----------------------------------------------------------------------


def test_gradcam_matches_the_definition(model, images):
    """Σ_k ReLU(mean_ij ∂y_c/∂A_kij · A_k), upsampled bilinearly and min-max normalised."""
    x = torch.from_numpy(images[:2])
    targets = np.array([1, 2])
    got = GradCAM(model, layer="relu2").explain({"image": images[:2], "target": targets})
    acts = model.activations(x, ["relu2"], with_logits=True)
    a, logits = acts["relu2"], acts["logits"]
    for i, t in enumerate(targets):
        (grad,) = torch.autograd.grad(logits[i, t], a, retain_graph=True)
        cam = F.relu((grad[i].mean((1, 2))[:, None, None] * a[i]).sum(0))
        cam = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        np.testing.assert_allclose(got[i].saliency, cam.detach().numpy(), atol=1e-5)
        assert got[i].label == t and got[i].extra["layer"] == "relu2"


def test_gradient_matches_the_definition(model, images):
    """max over channels of |∂y_c/∂x|, min-max normalised."""
    x = torch.from_numpy(images[:1]).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, 2], x)
    expected = grad[0].abs().max(0).values
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    got = Gradient(model).explain({"image": images[:1], "target": np.array([2])})[0]
    np.testing.assert_allclose(got.saliency, expected.numpy(), atol=1e-6)


class _Patch(torch.nn.Module):
    """Class 0 logit = 10 × mean of channel 0 over rows/columns 4..7; class 1 logit = 0. Nothing else matters."""

    def forward(self, x):
        score = 10 * x[:, 0, 4:8, 4:8].mean((1, 2))
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_occlusion_finds_the_only_region_the_model_reads():
    model = Classifier(_Patch(), num_classes=2, in_channels=3, image_size=SIZE).eval()
    img = np.ones((1, 3, SIZE, SIZE), dtype=np.float32)
    e = Occlusion(model, baseline="zero").explain({"image": img, "target": np.array([0])}, {"window": 4, "stride": 2})
    s = e[0].saliency
    r, c = np.unravel_index(np.argmax(s), s.shape)
    assert 4 <= r < 8 and 4 <= c < 8
    assert (s[12:, :] == 0).all() and (s[:, 12:] == 0).all()  # windows that never touch the patch: no drop


def test_center_baseline_peaks_in_the_middle_and_ignores_content(model, images):
    e = CenterBaseline(model).explain({"image": images[:2]})
    assert np.array_equal(e[0].saliency, e[1].saliency)
    r, c = np.unravel_index(np.argmax(e[0].saliency), (SIZE, SIZE))
    assert (r, c) in {(7, 7), (7, 8), (8, 7), (8, 8)}
    m = center_map(5, 5)
    assert m[2, 2] == 1.0 and m[0, 0] == 0.0 and m.min() >= 0


def test_center_baseline_works_without_a_model():
    e = CenterBaseline().explain({"image": np.zeros((3, 1, 6, 6), dtype=np.float32), "target": np.array([1, 2, 3])})
    assert [x.label for x in e] == [1, 2, 3]


# --- shared contract -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GradCAM, Gradient, Occlusion])
def test_predicted_class_is_the_default_target(model, images, cls):
    kwargs = {"layer": "relu2"} if cls is GradCAM else {}
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(1).tolist()
    e = cls(model, **kwargs).explain({"image": images})
    assert [x.label for x in e] == predicted
    for x in e:
        assert x.saliency.shape == (SIZE, SIZE) and x.saliency.dtype == np.float32
        assert 0.0 <= x.saliency.min() and x.saliency.max() <= 1.0
        json.dumps(x.to_json(), allow_nan=False)


def test_params_target_applies_to_rows_without_their_own(model, images):
    e = Gradient(model).explain({"image": images[:3], "target": np.array([-1, 0, -1])}, {"target": 2})
    assert [x.label for x in e] == [2, 0, 2]


@pytest.mark.parametrize("name", ["gradcam", "gradient", "occlusion", "center"])
def test_bad_input_raises_user_error(model, images, name):
    kwargs = {"layer": "relu2"} if name == "gradcam" else {}
    ex = get_explainer(name)(model, **kwargs)
    with pytest.raises(UserError, match="out of range"):
        ex.explain({"image": images[:1], "target": np.array([3])})
    with pytest.raises(UserError, match="this model takes"):
        ex.explain({"image": np.zeros((1, 3, SIZE + 1, SIZE), dtype=np.float32)})
    with pytest.raises(UserError, match="this model takes"):
        ex.explain({"image": np.zeros((1, 1, SIZE, SIZE), dtype=np.float32)})
    with pytest.raises(UserError, match="invalid parameters"):
        ex.explain({"image": images[:1]}, {"taget": 1})


def test_gradcam_unknown_layer_and_a_model_without_maps_raise_user_error(model):
    with pytest.raises(UserError, match="unknown layer"):
        GradCAM(model, layer="conv7")
    assert GradCAM(model).layer == model.roles()["saliency"][0]  # no layer named: the model's saliency role
    mlp = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 8), torch.nn.ReLU(),
                                         torch.nn.Linear(8, 3)), num_classes=3, in_channels=3, image_size=SIZE)
    for cls in (GradCAM, FeatureInversion):
        with pytest.raises(UserError, match=f"{cls.name} cannot explain this model: no layer .* spatial map") as e:
            cls(mlp)
        assert "\n" not in str(e.value)


def test_gradcam_layer_per_registered_model():
    """flint_mnist: the last convolution (conv2), where the Grad-CAM map is not all zero for a share of the images as
    at relu2 (after pool, dropout and ReLU, with an FC head); digits_cnn: relu2, directly after its last conv."""
    from interp_ray.models import build_model

    assert GradCAM(build_model("flint_mnist")).layer == "conv2"
    assert GradCAM(build_model("digits_cnn")).layer == "relu2"
    assert GradCAM.defaults_for(build_model("scenes_cnn")) == {"layer": "relu4"}


def test_occlusion_window_larger_than_image_raises_user_error(model, images):
    with pytest.raises(UserError, match="larger than the image"):
        Occlusion(model).explain({"image": images[:1]}, {"window": SIZE + 1})


def test_all_baselines_are_registered():
    names = explainer_names()
    for name in ("gradcam", "gradient", "occlusion", "center"):
        assert name in names
        meta = get_explainer(name).metadata()
        assert "saliency" in meta["produces"] and meta["slow"] == (name == "occlusion")
        json.dumps(meta)
