import numpy as np
import pytest

from interp_ray.data import ArrayDataset, load_dataset
from interp_ray.errors import UserError


def test_digits_split_is_fixed_disjoint_and_complete():
    parts = {s: load_dataset("digits", s) for s in ("train", "val", "test")}
    ids = {s: set(d.get_batch(np.arange(len(d)))["id"]) for s, d in parts.items()}
    assert sum(len(v) for v in ids.values()) == 1797
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"]) and not (ids["val"] & ids["test"])
    again = load_dataset("digits", "test")
    assert np.array_equal(again.get_batch(range(len(again)))["id"], parts["test"].get_batch(range(len(again)))["id"])
    labels = parts["test"].get_batch(range(len(parts["test"])))["label"]
    assert set(labels) == set(range(10))  # stratified: every class in the test split


def test_digits_pixels_are_the_sklearn_images_scaled():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", "train")
    row = ds[0]
    raw = load_digits().images[int(row["id"].split("/")[1])]
    assert row["image"].shape == (1, 8, 8) and row["image"].dtype == np.float32
    assert np.allclose(row["image"][0], raw / 16.0)


def test_unknown_split_and_option():
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_dataset("digits", "dev")
    with pytest.raises(UserError, match="unknown option"):
        load_dataset("digits", "train", size=3)


def test_loader_yields_every_row_once_in_order():
    ds = load_dataset("digits", "val")
    seen = np.concatenate([y.numpy() for _, y in ds.loader(50)])
    assert np.array_equal(seen, ds.get_batch(range(len(ds)))["label"])


def test_array_dataset_converts_uint8_and_checks_lengths():
    imgs = np.full((3, 1, 2, 2), 255, np.uint8)
    ds = ArrayDataset("t", "train", imgs, [0, 1, 0], ["a", "b"])
    assert ds.get_batch([1])["image"].max() == 1.0 and ds.num_classes == 2
    with pytest.raises(ValueError, match="labels has 2 rows"):
        ArrayDataset("t", "train", imgs, [0, 1], ["a", "b"])


@pytest.mark.ray
def test_to_ray_gives_the_same_rows(ray_local):
    ds = load_dataset("digits", "val")
    rows = ds.to_ray(rows_per_block=64).take_all()
    assert len(rows) == len(ds)
    by_id = {r["id"]: r for r in rows}
    ref = ds.get_batch(range(len(ds)))
    for i in (0, 17, len(ds) - 1):
        assert np.array_equal(by_id[ref["id"][i]]["image"], ref["image"][i])
        assert by_id[ref["id"][i]]["label"] == ref["label"][i]


@pytest.mark.ray
def test_scenes_to_ray_streams_extras(ray_local):
    ds = load_dataset("scenes", "val", n=40)
    rows = ds.to_ray(rows_per_block=16).take_all()
    ref = ds.get_batch(range(40))
    assert sorted(r["id"] for r in rows) == sorted(ref["id"])
    r0 = next(r for r in rows if r["id"] == ref["id"][0])
    assert np.array_equal(r0["boxes"], ref["boxes"][0]) and list(r0["sentences"]) == list(ref["sentences"][0])


def test_head_dataset_is_the_first_rows_and_says_so():
    from interp_ray.data.base import HeadDataset

    base = load_dataset("digits", "test")
    head = HeadDataset(base, 5)
    assert len(head) == 5 and head.class_names == base.class_names and head.image_shape == base.image_shape
    np.testing.assert_array_equal(head.get_batch(np.arange(5))["image"], base.get_batch(np.arange(5))["image"])
    assert head.describe()["rows"] == 5 and head.describe() != base.describe()  # a store key tells them apart
    with pytest.raises(IndexError):
        head.get_batch([5])
    assert len(HeadDataset(base, 10**6)) == len(base)
    with pytest.raises(ValueError):
        HeadDataset(base, 0)
