"""Saliency metrics on hand-made maps and boxes with known answers, and the PNG overlays."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from interp_ray.errors import UserError
from interp_ray.metrics.saliency import (_auc, box_iou, causal_curves, class_discrimination, localisation_error,
                                         localisation_hit, pixel_order, point_in_box, pointing_game, pointing_hit,
                                         saliency_box, tune_alpha)
from interp_ray.models import Classifier

BOX = np.array([[10, 20, 30, 40], [-1, -1, -1, -1]])  # x0, y0, x1, y1 (exclusive); the second slot is absent
LABELS = np.array([3, -1])


def peak_at(r: int, c: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.float32)
    m[r, c] = 1.0
    return m


# --- pointing game ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r, c, hit", [
    (20, 10, True),    # the box's first pixel
    (39, 29, True),    # its last pixel (x1, y1 exclusive)
    (40, 29, False),   # one row below
    (39, 30, False),   # one column right
    (5, 5, False),
])
def test_pointing_hit_respects_exclusive_box_ends(r, c, hit):
    assert pointing_hit(peak_at(r, c), BOX, LABELS, 3) is hit


def test_class_discrimination_asks_each_class_map_to_peak_in_its_own_objects_box():
    # two scenes, object 0 (class 3) at the top left, object 1 (class 5) at the bottom right
    boxes = np.array([[[0, 0, 10, 10], [40, 40, 50, 50]]] * 2)
    labels = np.array([[3, 5]] * 2)
    a, b = [peak_at(5, 5), peak_at(5, 5)], [peak_at(45, 45), peak_at(5, 5)]   # scene 2: B's map points at A
    cover = np.zeros((64, 64), dtype=np.float32)
    cover[5, 5], cover[45, 45] = 0.6, 0.5
    half = cover.copy()
    half[45, 45] = 0.4                                                          # reaches only object 0
    r = class_discrimination(a, b, [cover, half], boxes, labels)
    assert r == {"scenes": 2, "both_peaks_in_own_box": 0.5, "stage1_covers_both": 0.5}
    assert class_discrimination(b, a, None, boxes, labels) == {"scenes": 2, "both_peaks_in_own_box": 0.0}


def test_pointing_needs_a_box_of_the_target_class():
    assert not pointing_hit(peak_at(25, 15), BOX, LABELS, 4)
    assert not pointing_hit(peak_at(0, 0), BOX, LABELS, -1)  # the absent slot never counts


@pytest.mark.parametrize("tolerance, hit", [(0, False), (4.9, False), (5, True), (15, True)])
def test_pointing_tolerance_is_euclidean_distance_to_the_box(tolerance, hit):
    # the peak is 3 columns and 4 rows beyond the box's corner pixel (29, 39): distance 5
    assert pointing_hit(peak_at(43, 32), BOX, LABELS, 3, tolerance=tolerance) is hit


def test_point_in_box_and_negative_tolerance():
    assert point_in_box((0, 0), (0, 0, 1, 1))
    with pytest.raises(UserError):
        pointing_hit(peak_at(0, 0), BOX, LABELS, 3, tolerance=-1)


def test_pointing_game_accuracy_and_class_mean():
    boxes = np.array([[[0, 0, 8, 8]], [[0, 0, 8, 8]], [[0, 0, 8, 8]], [[0, 0, 8, 8]]])
    labels = np.array([[0], [0], [0], [1]])
    maps = [peak_at(1, 1, 16), peak_at(12, 12, 16), peak_at(2, 2, 16), peak_at(12, 12, 16)]
    res = pointing_game(maps, boxes, labels, [0, 0, 0, 1])
    assert res["accuracy"] == pytest.approx(0.5)      # 2 of 4 images
    assert res["class_mean"] == pytest.approx(1 / 3)  # class 0: 2/3, class 1: 0/1
    assert res["n"] == 4


def test_ties_take_the_first_maximum_and_bad_maps_fail():
    flat = np.ones((8, 8))
    assert pointing_hit(flat, np.array([[0, 0, 1, 1]]), np.array([0]), 0)
    with pytest.raises(UserError):
        pointing_hit(np.ones(8), BOX, LABELS, 3)
    with pytest.raises(UserError):
        pointing_hit(np.full((4, 4), np.nan), BOX, LABELS, 3)


# --- localisation -------------------------------------------------------------------------------------------------


def test_box_iou_known_values():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_saliency_box_is_tight_around_pixels_above_alpha_mean():
    m = np.zeros((64, 64))
    m[20:40, 10:30] = 1.0
    assert saliency_box(m, alpha=1.0).tolist() == [10, 20, 30, 40]
    assert saliency_box(m, alpha=0.0).tolist() == [0, 0, 64, 64]  # α = 0 keeps everything
    assert localisation_hit(m, BOX, LABELS, 3, alpha=1.0)


def test_alpha_decides_between_halo_and_object():
    """An object at 1.0 in a faint halo at 0.2 filling the image: a low α boxes the whole halo (IoU 0.1 → miss),
    a high α boxes the object (IoU 1 → hit); tune_alpha must pick a high one."""
    m = np.full((64, 64), 0.2)
    m[20:40, 10:30] = 1.0
    mean = m.mean()
    assert not localisation_hit(m, BOX, LABELS, 3, alpha=0.5)
    assert localisation_hit(m, BOX, LABELS, 3, alpha=0.5 / mean)  # threshold 0.5: between halo and object
    alpha, err = tune_alpha([m], BOX[None], LABELS[None], [3], alphas=(0.0, 0.5, 1.0, 2.0, 3.0))
    assert err == 0.0 and 0.2 < alpha * mean <= 1.0
    assert localisation_error([m, m], np.stack([BOX, BOX]), np.stack([LABELS, LABELS]), [3, 4],
                              alpha=alpha) == pytest.approx(0.5)  # the second image asks for a class not there


def test_iou_must_exceed_half():
    m = np.zeros((64, 64))
    m[0:10, 0:10] = 1.0  # predicted box (0, 0, 10, 10)
    half = np.array([[0, 0, 20, 10]])  # IoU exactly 0.5
    assert not localisation_hit(m, half, np.array([0]), 0, alpha=1.0)
    assert localisation_hit(m, half, np.array([0]), 0, alpha=1.0, iou_threshold=0.49)


# --- deletion / insertion -----------------------------------------------------------------------------------------


class _Region(torch.nn.Module):
    """2 classes; logit_0 = 20 × (mean of channel 0 over the top-left 4×4 block − 0.5): only that block matters."""

    def forward(self, x):
        s = 20 * (x[:, 0, :4, :4].mean((1, 2)) - 0.5)
        return torch.stack([s, -s], 1)


@pytest.fixture
def region_model() -> Classifier:
    return Classifier(_Region(), num_classes=2, in_channels=1, image_size=8).eval()


def test_deletion_and_insertion_reward_the_map_that_finds_the_evidence(region_model):
    img = np.ones((1, 1, 8, 8), dtype=np.float32)
    good = np.zeros((1, 8, 8), dtype=np.float32)
    good[0, :4, :4] = 1.0  # the block the model reads comes first
    bad = 1.0 - good       # … comes last
    g = causal_curves(region_model, img, good, [0], steps=8, insertion_baseline="zero")
    b = causal_curves(region_model, img, bad, [0], steps=8, insertion_baseline="zero")
    assert g.deletion_auc[0] < b.deletion_auc[0]
    assert g.insertion_auc[0] > b.insertion_auc[0]
    # the good map deletes the whole block in the first quarter of the pixels: the curve is at the floor after it
    assert g.deletion[0, 2:].max() < 1e-3 and g.deletion[0, 0] > 0.999
    assert g.fractions[0] == 0 and g.fractions[-1] == 1


def test_auc_is_trapezoidal_over_fractions():
    f = np.linspace(0, 1, 5)
    assert _auc(f, f[None])[0] == pytest.approx(0.5)
    assert _auc(f, np.ones((1, 5)))[0] == pytest.approx(1.0)


def test_pixel_order_is_descending_and_stable():
    s = torch.tensor([[[0.1, 0.9], [0.9, 0.0]]])
    assert pixel_order(s)[0].tolist() == [1, 2, 0, 3]


def test_causal_curves_check_shapes(region_model):
    with pytest.raises(UserError):
        causal_curves(region_model, np.ones((1, 1, 8, 8)), np.ones((1, 4, 4)), [0])
    with pytest.raises(UserError):
        causal_curves(region_model, np.ones((1, 1, 8, 8)), np.ones((1, 8, 8)), [0], insertion_baseline="noise")


# --- overlays ------------------------------------------------------------------------------------------------------


def test_overlay_is_a_png_and_leaves_the_backend_alone(tmp_path):
    from interp_ray.plots import save_overlay, save_overlays

    backend = matplotlib.get_backend()
    img = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    m = np.random.default_rng(1).random((32, 32), dtype=np.float32)
    p1 = save_overlay(tmp_path / "one.png", img, m, title="gfi", boxes=np.array([[2, 2, 10, 10]]))
    p2 = save_overlays(tmp_path / "sub" / "two.png", img, [m, m], titles=["a", "b"])
    for p in (p1, p2):
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend
    with pytest.raises(UserError):
        save_overlay(tmp_path / "bad.png", img, np.zeros((8, 8)))


def test_empty_maps_are_the_constant_ones_whatever_their_level():
    from interp_ray.metrics.saliency import empty_maps, empty_share

    rng = np.random.default_rng(0)
    maps = rng.random((6, 5, 7)).astype(np.float32)
    maps[1] = 0.0                      # Grad-CAM's ReLU of a negative sum
    maps[3] = 0.37                     # constant but not zero: still ranks nothing
    maps[4] = 0.0
    maps[4, 2, 3] = 1e-3               # one faint pixel is a ranking: not empty
    assert empty_maps(maps).tolist() == [False, True, False, True, False, False]
    assert empty_share(maps) == pytest.approx(2 / 6)
    assert empty_share(np.zeros((0, 4, 4))) == 0.0
    with pytest.raises(UserError, match="N×H×W"):
        empty_maps(maps[0])
