"""``get_pixel_batch``: what the loading stage ships to the model's process (uint8 for anything decoded from files), and
``image_tensor`` / ``fresh_float_images``, which scale it there to exactly ``get_batch``'s floats."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from interp_ray.data import load_dataset
from interp_ray.data.base import ArrayDataset, HeadDataset, fresh_float_images, image_tensor, read_rows
from interp_ray.data.select import RowsDataset

CLASSES = ["ant", "bee", "cow"]


def noise(seed: int, size=(12, 9)) -> Image.Image:
    """Random RGB pixels, every value 0..255 likely present; 12×9 so the 8×8 loaders resize (bilinear)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def image_folder(tmp_path):
    for i in range(6):
        path = tmp_path / "folder" / CLASSES[i % 3] / f"{i}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        noise(i).save(path)
    return load_dataset("image_folder", "train", root=str(tmp_path / "folder"), image_size=8)


def webdataset(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(6):
            for suffix, data in {"png": encoded(noise(i), "PNG"), "cls": str(i % 3).encode()}.items():
                info = tarfile.TarInfo(f"s{i:03d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shards-000000.tar").write_bytes(buf.getvalue())
    return load_dataset("webdataset", "train", path=str(tmp_path / "shards-000000.tar"), image_size=8)


def parquet(tmp_path):
    images = pa.array([{"bytes": encoded(noise(i), "PNG"), "path": None} for i in range(6)],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    meta = {"info": {"features": {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}}}
    table = pa.table({"image": images, "label": pa.array([i % 3 for i in range(6)], pa.int64())})
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                   tmp_path / "hf" / "data" / "train-00000-of-00001.parquet", row_group_size=4)
    return load_dataset("parquet", "train", path=str(tmp_path / "hf"), image_size=8)


def uint8_arrays(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    return ArrayDataset("a", "train", pixels, np.arange(6) % 3, CLASSES)


FILE_BACKED = [image_folder, webdataset, parquet, uint8_arrays]
WRAPPED = [lambda tmp: HeadDataset(image_folder(tmp), 5),
           lambda tmp: RowsDataset(image_folder(tmp), np.array([5, 1, 3]), labels=np.array([2, 1, 0]))]


def assert_pixels_scale_to_get_batch(ds, idx):
    pixels, floats = ds.get_pixel_batch(idx), ds.get_batch(idx)
    assert pixels["image"].dtype == np.dtype(ds.pixel_dtype)
    assert sorted(pixels) == sorted(floats)
    for key in floats:
        if key != "image":
            np.testing.assert_array_equal(pixels[key], floats[key])
    want = floats["image"]
    assert want.dtype == np.float32 and 0 <= want.min() and want.max() <= 1 and want.max() > 0.5
    read_only = pixels["image"].copy()
    read_only.setflags(write=False)  # as Ray Data hands a batch over
    on_device = image_tensor(read_only, "cpu")
    assert on_device.dtype == torch.float32 and on_device.numpy().flags.writeable
    # bit for bit, not approximately: the store's content must not depend on which stage scaled the pixels
    assert np.array_equal(on_device.numpy().view(np.uint32), want.view(np.uint32))
    fresh = fresh_float_images(read_only)
    assert fresh.flags.writeable and np.array_equal(fresh.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("make", FILE_BACKED, ids=lambda f: f.__name__)
def test_loaders_of_encoded_images_ship_uint8_that_scale_to_get_batch_exactly(tmp_path, make):
    ds = make(tmp_path)
    assert ds.pixel_dtype == "uint8"
    assert_pixels_scale_to_get_batch(ds, np.array([4, 0, 2, 5]))


@pytest.mark.parametrize("make", WRAPPED, ids=["head", "rows"])
def test_wrappers_pass_their_base_pixels_through(tmp_path, make):
    ds = make(tmp_path)
    assert ds.pixel_dtype == "uint8"
    assert_pixels_scale_to_get_batch(ds, np.array([2, 0]))


def test_generated_and_float_datasets_ship_floats_unchanged(tmp_path):
    for ds in (load_dataset("scenes", "val", size=32, n=4),
               ArrayDataset("f", "train", np.random.default_rng(1).random((4, 1, 5, 5)), np.zeros(4), ["x"])):
        assert ds.pixel_dtype == "float32"
        assert_pixels_scale_to_get_batch(ds, np.array([3, 1]))


def test_read_rows_of_pixels_keeps_going_past_an_unreadable_file(tmp_path):
    ds = image_folder(tmp_path)
    (tmp_path / "folder" / ds.paths[1]).write_bytes(b"not an image")
    good, rows, bad = read_rows(ds, np.arange(4), pixels=True)
    assert list(good) == [0, 2, 3] and list(bad) == [1] and "not a decodable image" in bad[1]
    assert rows["image"].dtype == np.uint8 and rows["image"].shape == (3, 3, 8, 8)


def test_a_device_whose_division_is_off_in_the_last_bit_scales_by_the_table(monkeypatch):
    """The scaler divides only where division gives the table's values; else it looks them up (here: a table with
    7/255 one bit off stands for a device whose division differs from numpy's)."""
    import interp_ray.data.base as base
    from interp_ray.data.images import unit_float_table

    table = unit_float_table()
    table[7] = np.nextafter(table[7], np.float32(1))
    monkeypatch.setattr(base, "unit_float_table", lambda: table.copy())
    base._pixel_scaler.cache_clear()
    try:
        got = base.image_tensor(np.array([[[[7, 8, 255]]]], np.uint8), "cpu").numpy().ravel()
    finally:
        base._pixel_scaler.cache_clear()
    assert got.tolist() == [table[7], table[8], 1.0]
