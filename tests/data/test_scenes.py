"""Scenes generator: determinism, ground truth that matches the pixels, class design and sentences.

Each test asserts a property that a wrong generator would break; batches are small and made once per module.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch

from interp_ray.data import load_dataset
from interp_ray.data import scenes as sc
from interp_ray.data.scenes.drawing import _COLOURS_RGB
from interp_ray.data.scenes import (ATTRIBUTE_KINDS, ATTRIBUTE_VALUES, ATTRIBUTE_VOCAB, CLASS_NAMES, CLASSES,
                                    ScenesDataset, attribute_mentions, class_attributes, discriminative_attributes,
                                    load_scenes)
from interp_ray.errors import UserError

ROWS = 96  # 8 of each class


@pytest.fixture(scope="module")
def one() -> dict[str, np.ndarray]:
    return load_scenes("train", n=ROWS).get_batch(np.arange(ROWS))


@pytest.fixture(scope="module")
def two() -> dict[str, np.ndarray]:
    return load_scenes("train", n=ROWS, two_objects=True).get_batch(np.arange(ROWS))


def _objects(batch: dict[str, np.ndarray]):
    """(row, object slot, class index) of every object present."""
    for j, o in zip(*np.nonzero(batch["box_labels"] >= 0)):
        yield int(j), int(o), int(batch["box_labels"][j, o])


def _image_hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- class design ---------------------------------------------------------------------------------------------


def test_classes_are_many_distinct_and_use_the_vocabulary():
    assert len(CLASSES) >= 10
    combos = [tuple(attrs[k] for k in ATTRIBUTE_KINDS) for attrs in CLASSES.values()]
    assert len(set(combos)) == len(combos)
    for attrs in CLASSES.values():
        assert set(attrs) == set(ATTRIBUTE_KINDS)
        assert all(attrs[k] in ATTRIBUTE_VALUES[k] for k in ATTRIBUTE_KINDS)
    assert ATTRIBUTE_VOCAB == {v: k for k in ATTRIBUTE_KINDS for v in ATTRIBUTE_VALUES[k]}
    # Naming the class must never count as naming an attribute.
    assert all(attribute_mentions(name) == set() for name in CLASS_NAMES)


def test_some_pairs_differ_in_exactly_one_attribute_of_several_kinds():
    kinds = set()
    for a, b in itertools.combinations(CLASSES.values(), 2):
        differing = [k for k in ATTRIBUTE_KINDS if a[k] != b[k]]
        if len(differing) == 1:
            kinds.add(differing[0])
    assert {"colour", "pattern", "size"} <= kinds


@pytest.mark.parametrize("c", range(len(CLASS_NAMES)))
def test_discriminative_attributes_are_necessary_and_sufficient(c):
    mine = class_attributes(c)
    disc = discriminative_attributes(c)
    assert disc[0] == mine["shape"] and set(disc) <= set(mine.values())
    others = [class_attributes(o) for o in range(len(CLASS_NAMES)) if o != c]
    # Sufficient: no other class has every discriminative value.
    assert not any(set(disc) <= set(o.values()) for o in others)
    # Necessary: each non-shape value has a class that differs from this one in that kind only.
    for value in disc[1:]:
        kind = ATTRIBUTE_VOCAB[value]
        assert any(o[kind] != value and all(o[k] == mine[k] for k in ATTRIBUTE_KINDS if k != kind) for o in others)
    # And nothing else has such a neighbour.
    for kind in set(ATTRIBUTE_KINDS) - {"shape"} - {ATTRIBUTE_VOCAB[v] for v in disc}:
        assert not any(o[kind] != mine[kind] and all(o[k] == mine[k] for k in ATTRIBUTE_KINDS if k != kind)
                       for o in others)


def test_attribute_mentions_whole_words_only():
    assert attribute_mentions("A Red, STRIPED circles.") == {"red", "striped", "circle"}
    assert attribute_mentions("crossbill credited greenery bluer") == set()
    assert attribute_mentions("this is a cross") == {"cross"}


# --- rows: shape, determinism, splits ---------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_range(one):
    n = ROWS
    assert one["image"].shape == (n, 3, 64, 64) and one["image"].dtype == np.float32
    assert 0.0 <= one["image"].min() and one["image"].max() <= 1.0
    assert one["label"].dtype == np.int64 and one["label"].shape == (n,)
    assert one["boxes"].shape == (n, 2, 4) and one["boxes"].dtype == np.int32
    assert one["box_labels"].shape == (n, 2) and one["box_labels"].dtype == np.int64
    assert one["masks"].shape == (n, 2, 64, 64) and one["masks"].dtype == bool
    assert one["attributes"].shape == (n, 4) and one["attributes"].dtype == np.int64
    assert one["sentences"].shape == (n, 5) and one["sentences"].dtype.kind == "U"
    assert len(set(one["id"])) == n


def test_labels_are_balanced_in_blocks(one):
    counts = np.bincount(one["label"], minlength=len(CLASS_NAMES))
    assert (counts == ROWS // len(CLASS_NAMES)).all()


def test_row_is_the_same_alone_in_a_batch_and_in_any_order():
    ds = load_scenes("val", n=50, two_objects=True)
    alone = ds.get_batch([17])
    in_batch = ds.get_batch([3, 17, 40])
    reversed_ = ds.get_batch([40, 17, 3])
    again = load_scenes("val", n=50, two_objects=True).get_batch([17])
    _assert_batches_equal(alone, {k: v[1:2] for k, v in in_batch.items()})
    _assert_batches_equal(alone, {k: v[1:2] for k, v in reversed_.items()})
    _assert_batches_equal(alone, again)
    _assert_batches_equal(ds[17], {k: v[0] for k, v in alone.items()})


def test_row_does_not_depend_on_n():
    _assert_batches_equal(load_scenes("train", n=20).get_batch([5, 9]), load_scenes("train", n=5000).get_batch([5, 9]))


def test_different_seeds_differ():
    a = load_scenes("train", n=10, seed=0).get_batch(np.arange(10))
    b = load_scenes("train", n=10, seed=1).get_batch(np.arange(10))
    assert not np.array_equal(a["image"], b["image"])
    assert not set(a["id"]) & set(b["id"])
    assert all(not np.allclose(x, y) for x, y in zip(a["image"], b["image"]))


def test_splits_are_disjoint():
    batches = {s: load_scenes(s, n=60).get_batch(np.arange(60)) for s in sc.SPLITS}
    hashes = {s: {_image_hash(im) for im in b["image"]} for s, b in batches.items()}
    ids = {s: set(b["id"]) for s, b in batches.items()}
    for s, t in itertools.combinations(sc.SPLITS, 2):
        assert not hashes[s] & hashes[t]
        assert not ids[s] & ids[t]
        assert not np.array_equal(batches[s]["label"], batches[t]["label"])


def test_out_of_range_indices_fail():
    ds = load_scenes("test", n=10)
    with pytest.raises(IndexError):
        ds.get_batch([10])
    with pytest.raises(IndexError):
        ds.get_batch([-1])
    assert ds[-1]["id"] == ds[9]["id"]


def test_empty_batch_keeps_shapes():
    batch = load_scenes("train", n=10).get_batch([])
    assert batch["image"].shape == (0, 3, 64, 64) and batch["sentences"].shape == (0, 5)


# --- ground truth matches the pixels -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["one", "two"])
def test_boxes_are_tight_around_masks_and_inside_the_image(fixture, request):
    batch = request.getfixturevalue(fixture)
    size = batch["image"].shape[-1]
    for j, o, _ in _objects(batch):
        mask, (x0, y0, x1, y1) = batch["masks"][j, o], batch["boxes"][j, o]
        assert 1 <= x0 < x1 <= size - 1 and 1 <= y0 < y1 <= size - 1  # whole object, one-pixel margin
        assert mask[y0:y1, x0:x1].sum() == mask.sum() > 0  # every mask pixel is in the box
        inner = mask[y0:y1, x0:x1]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()  # tight
    absent = batch["box_labels"] < 0
    assert (batch["boxes"][absent] == -1).all() and not batch["masks"][absent].any()


def test_one_object_rows_have_exactly_one_object(one):
    assert (one["box_labels"][:, 0] == one["label"]).all() and (one["box_labels"][:, 1] == -1).all()


def test_two_object_rows_have_different_classes_and_disjoint_boxes(two):
    assert (two["box_labels"][:, 0] == two["label"]).all()
    assert (two["box_labels"][:, 1] >= 0).all() and (two["box_labels"][:, 0] != two["box_labels"][:, 1]).all()
    assert len(set(two["box_labels"][:, 1])) == len(CLASS_NAMES)  # every class appears as the second object
    for (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) in two["boxes"]:
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


def test_masks_show_the_class_colour_size_and_pattern(one, two):
    chroma = {c: np.asarray(rgb) / np.sum(rgb) for c, rgb in _COLOURS_RGB.items()}
    for batch in (one, two):
        for j, o, c in _objects(batch):
            attrs = class_attributes(c)
            mask = batch["masks"][j, o]
            pixels = batch["image"][j][:, mask]  # 3 × area
            mean = pixels.mean(axis=1)
            nearest = min(chroma, key=lambda name: np.sum((chroma[name] - mean / mean.sum()) ** 2))
            assert nearest == attrs["colour"]
            # Every small object is smaller than every large one (measured margin: ≤134 vs ≥192 pixels at 64×64).
            assert (mask.sum() < 160) == (attrs["size"] == "small")
            # Stripes and dots make the body's brightness vary (measured: ≤0.052 solid vs ≥0.083 patterned).
            assert (pixels.mean(axis=0).std() < 0.068) == (attrs["pattern"] == "solid")


def test_attribute_extras_match_the_class_table(one):
    for label, attrs, disc in zip(one["label"], one["attributes"], one["discriminative"]):
        table = class_attributes(int(label))
        assert [ATTRIBUTE_VALUES[k][i] for k, i in zip(ATTRIBUTE_KINDS, attrs)] == [table[k] for k in ATTRIBUTE_KINDS]
        assert [table[k] for k, d in zip(ATTRIBUTE_KINDS, disc) if d] == discriminative_attributes(int(label))


# --- sentences ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["one", "two"])
def test_sentences_name_every_discriminative_attribute_and_no_wrong_one(fixture, request):
    batch = request.getfixturevalue(fixture)
    for label, sentences in zip(batch["label"], batch["sentences"]):
        attrs = class_attributes(int(label))
        required = set(discriminative_attributes(int(label)))
        assert len(set(sentences)) == len(sentences)
        for sentence in sentences:
            named = attribute_mentions(sentence)
            assert required <= named, sentence
            assert named <= set(attrs.values()), sentence  # never a different value of any kind


def test_sentences_vary_in_order_and_wording():
    batch = load_scenes("train", n=24, sentences_per_image=10).get_batch(np.arange(24))
    assert batch["sentences"].shape == (24, 10)
    firsts = {s.split()[0] for s in batch["sentences"].ravel()}
    assert len(firsts) >= 5
    # Some class with two or more adjectives appears with them in both orders.
    orders = set()
    for label, sentences in zip(batch["label"], batch["sentences"]):
        if CLASS_NAMES[label] == "alder warbler":
            for s in sentences:
                words = s.split()
                orders.add(words.index("red") < words.index("striped") if "red" in words and "striped" in words
                           else None)
    assert {True, False} <= orders


# --- loading ----------------------------------------------------------------------------------------------------


def test_load_dataset_by_name():
    ds = load_dataset("scenes", "train", n=100)
    assert isinstance(ds, ScenesDataset) and len(ds) == 100
    assert ds.class_names == CLASS_NAMES and ds.image_shape == (3, 64, 64) and ds.num_classes == 12
    assert len(load_dataset("scenes", "val")) == sc.DEFAULT_ROWS["val"]
    assert ds.describe()["generator_version"] == sc.GENERATOR_VERSION
    with pytest.raises(UserError):
        load_dataset("scenes", "train", colours=3)


@pytest.mark.parametrize("options", [dict(split="dev"), dict(seed=-1), dict(size=16), dict(sentences_per_image=11),
                                     dict(n=-2)])
def test_bad_options_fail_with_a_user_error(options):
    with pytest.raises(UserError):
        load_scenes(**options)


def test_small_images_still_fit_two_objects():
    batch = load_scenes("train", n=24, size=32, two_objects=True).get_batch(np.arange(24))
    assert batch["image"].shape == (24, 3, 32, 32)
    assert (batch["masks"].reshape(24, 2, -1).sum(-1) > 0).all()


def test_torch_dataloader_batch():
    loader = load_scenes("train", n=20).loader(batch_size=8, shuffle=True, seed=1)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64


# --- clips ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    return sc.load_scene_clips("train", n=24, frames=6, two_objects=True).get_batch(np.arange(24))


def test_clip_shapes_and_first_frame(clips):
    assert clips["clip"].shape == (24, 6, 3, 64, 64) and clips["clip"].dtype == np.float32
    assert 0.0 <= clips["clip"].min() and clips["clip"].max() <= 1.0
    assert clips["boxes"].shape == (24, 6, 2, 4) and clips["masks"].shape == (24, 6, 2, 64, 64)
    np.testing.assert_array_equal(clips["image"], clips["clip"][:, 0])


def test_clip_objects_move_stay_whole_and_apart(clips):
    for j in range(24):
        for t in range(6):
            (a, b), masks = clips["boxes"][j, t], clips["masks"][j, t]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            for (x0, y0, x1, y1), mask in zip((a, b), masks):
                assert 1 <= x0 < x1 <= 63 and 1 <= y0 < y1 <= 63
                assert mask[y0:y1, x0:x1].sum() == mask.sum() > 0
    centres = clips["boxes"][..., :2] + clips["boxes"][..., 2:]
    moved = np.abs(centres[:, -1] - centres[:, 0]).sum(-1) > 0
    assert moved.mean() > 0.8


def test_clip_rows_are_deterministic_and_apart_from_still_images(clips):
    ds = sc.load_scene_clips("train", n=24, frames=6, two_objects=True)
    _assert_batches_equal(ds.get_batch([7]), {k: v[7:8] for k, v in clips.items()})
    still = load_scenes("train", n=24, two_objects=True).get_batch(np.arange(24))
    assert not {_image_hash(im) for im in still["image"]} & {_image_hash(im) for im in clips["image"]}
    for label, sentences in zip(clips["label"], clips["sentences"]):
        assert all(set(discriminative_attributes(int(label))) <= attribute_mentions(s) for s in sentences)
    with pytest.raises(UserError):
        sc.load_scene_clips("train", frames=0)
