"""Real Parquet files of PNG/JPEG bytes: raw-bytes and Hugging Face struct columns, splits, lazy row-group reads."""

import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

import interp_ray.data.parquet as parquet_mod
from interp_ray.data import load_dataset
from interp_ray.errors import UserError

JPEG_TOL = 4 / 255


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def jpeg_solid(colour, size=(10, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def random_pixels(n, seed, h=4, w=6):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_hf_split(directory, name, pixels, labels, names):
    """One file in the Hugging Face layout: image struct {bytes, path}, ClassLabel names in the metadata."""
    images = pa.array([{"bytes": png(p), "path": None} for p in pixels],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    meta = {"info": {"features": {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / name, row_group_size=2)


@pytest.fixture()
def hf_dir(tmp_path):
    """data/train-0000{0,1}-of-00002.parquet (5 + 3 rows) and data/test-00000-of-00001.parquet (2 rows)."""
    root = tmp_path / "hf"
    pixels = random_pixels(10, 0)
    labels = [0, 1, 2, 1, 0, 2, 2, 1, 0, 1]
    names = ["ant", "bee", "cow"]
    write_hf_split(root / "data", "train-00000-of-00002.parquet", pixels[:5], labels[:5], names)
    write_hf_split(root / "data", "train-00001-of-00002.parquet", pixels[5:8], labels[5:8], names)
    write_hf_split(root / "data", "test-00000-of-00001.parquet", pixels[8:], labels[8:], names)
    (root / "data" / "_SUCCESS").write_text("")
    return root, pixels, np.array(labels), names


def expected_images(pixels):
    return pixels.transpose(0, 3, 1, 2) / np.float32(255)


def test_hf_directory_splits_pixels_labels(hf_dir):
    root, pixels, labels, names = hf_dir
    train = load_dataset("parquet", "train", path=str(root))
    assert len(train) == 8 and train.class_names == names and train.image_shape == (3, 4, 6)
    batch = train.get_batch(np.arange(8))
    np.testing.assert_array_equal(batch["image"], expected_images(pixels[:8]))
    np.testing.assert_array_equal(batch["label"], labels[:8])
    assert batch["id"][0] == "data/train-00000-of-00002.parquet#0"
    assert batch["id"][6] == "data/train-00001-of-00002.parquet#1"

    test = load_dataset("parquet", "test", path=root)
    np.testing.assert_array_equal(test.get_batch([1, 0])["image"], expected_images(pixels[[9, 8]]))
    with pytest.raises(UserError, match="unknown split 'val'.*valid: train, test"):
        load_dataset("parquet", "val", path=root)


def test_reads_only_the_row_groups_a_batch_needs(hf_dir, monkeypatch):
    root, pixels, _, _ = hf_dir
    reads = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        reads.append((i, kwargs.get("columns")))
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    load_dataset("parquet", "train", path=root, image_size=4)
    assert reads == []  # loading reads labels only, never an image column
    ds = load_dataset("parquet", "train", path=root)
    assert reads == [(0, ["image"])]  # except, at native size, the first row group to learn the image size
    reads.clear()
    batch = ds.get_batch([3, 2])  # both in row group 1 of the first file
    np.testing.assert_array_equal(batch["image"], expected_images(pixels[[3, 2]]))
    assert reads == [(1, ["image"])]
    ds.get_batch([2])  # same group: served from the kept column
    assert len(reads) == 1


def test_big_row_groups_are_streamed(hf_dir, monkeypatch):
    root, pixels, _, _ = hf_dir
    monkeypatch.setattr(parquet_mod, "MAX_WHOLE_GROUP_BYTES", 0)
    monkeypatch.setattr(parquet_mod, "STREAM_ROWS", 1)
    ds = load_dataset("parquet", "train", path=root)
    order = [7, 1, 0, 5, 3, 1]
    np.testing.assert_array_equal(ds.get_batch(order)["image"], expected_images(pixels[order]))


def test_single_file_text_labels_id_column_and_resize(tmp_path):
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    table = pa.table({"jpg": [jpeg_solid(c) for c in colours], "species": ["dog", "cat", "dog"],
                      "key": ["r1", "r2", "r3"]})
    pq.write_table(table, tmp_path / "pets.parquet")
    ds = load_dataset("parquet", "test", path=str(tmp_path / "pets.parquet"), image_column="jpg",
                      label_column="species", id_column="key", image_size=5)
    assert ds.class_names == ["cat", "dog"] and ds.image_shape == (3, 5, 5)
    batch = ds.get_batch([0, 1, 2])
    assert list(batch["id"]) == ["r1", "r2", "r3"]
    np.testing.assert_array_equal(batch["label"], [1, 0, 1])
    for img, colour in zip(batch["image"], colours):
        np.testing.assert_allclose(img, np.broadcast_to(np.array(colour)[:, None, None] / 255, img.shape),
                                   atol=JPEG_TOL)
    fixed = load_dataset("parquet", path=tmp_path / "pets.parquet", image_column="jpg", label_column="species",
                         class_names="dog,cat,eel", mode="L")
    assert fixed.class_names == ["dog", "cat", "eel"] and fixed.image_shape == (1, 6, 10)
    np.testing.assert_array_equal(fixed.get_batch([0, 1])["label"], [0, 1])


def test_file_uri_goes_through_pyarrow_fs(hf_dir, monkeypatch):
    root, pixels, _, _ = hf_dir
    calls = []
    real = pafs.FileSystem

    class SpyFileSystem:
        @staticmethod
        def from_uri(uri):
            calls.append(uri)
            return real.from_uri(uri)

    monkeypatch.setattr(pafs, "FileSystem", SpyFileSystem)
    uri = root.as_uri()  # file:///…/hf, resolved the way s3:// and gs:// are
    ds = load_dataset("parquet", "train", path=uri)
    assert calls == [uri] and len(ds) == 8
    np.testing.assert_array_equal(ds.get_batch([6])["image"], expected_images(pixels[[6]]))


def test_pickles_for_workers_after_reading(hf_dir):
    root, pixels, _, _ = hf_dir
    ds = load_dataset("parquet", "train", path=root)
    ds.get_batch([0])  # leaves an open file and a kept column behind
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.get_batch([4, 0])["image"], expected_images(pixels[[4, 0]]))


def test_bad_inputs_are_user_errors(tmp_path, hf_dir):
    root, _, _, _ = hf_dir
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("parquet", path=tmp_path / "missing.parquet")
    with pytest.raises(UserError, match="no column 'img'; columns present: image, label"):
        load_dataset("parquet", path=root, image_column="img")
    with pytest.raises(UserError, match="no column 'y'; columns present: image, label"):
        load_dataset("parquet", path=root, label_column="y")
    with pytest.raises(UserError, match="label 2 but only 2 class names"):
        load_dataset("parquet", path=root, class_names=["a", "b"])

    pq.write_table(pa.table({"image": [1, 2], "label": [0, 1]}), tmp_path / "ints.parquet")
    with pytest.raises(UserError, match="image column 'image' has type int64; expected binary"):
        load_dataset("parquet", path=tmp_path / "ints.parquet")
    pq.write_table(pa.table({"image": [b"junk", None], "label": [0, -1]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="label -1 is negative"):
        load_dataset("parquet", path=tmp_path / "bad.parquet")
    pq.write_table(pa.table({"image": [b"junk", None], "label": [0, 1]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"row bad.parquet#0: not a decodable image"):
        load_dataset("parquet", path=tmp_path / "bad.parquet")  # native size: the first image is decoded at load
    ds = load_dataset("parquet", path=tmp_path / "bad.parquet", image_size=4)
    with pytest.raises(UserError, match=r"row bad.parquet#1: image column 'image' is null"):
        ds.get_batch([1])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [{"bytes": png(random_pixels(1, 1)[0]), "path": None}, None, {"bytes": None, "path": "elsewhere.png"}]
    pq.write_table(pa.table({"image": pa.array(rows, type=struct), "label": [0, 0, 0]}), tmp_path / "hf.parquet")
    ds = load_dataset("parquet", path=tmp_path / "hf.parquet")
    assert ds.get_batch([0])["image"].shape == (1, 3, 4, 6)
    for row in (1, 2):
        with pytest.raises(UserError, match=rf"row hf.parquet#{row}: image column 'image' is null or holds no bytes"):
            ds.get_batch([row])
    (tmp_path / "flat").mkdir()
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "flat" / "part-0.parquet")
    with pytest.raises(UserError, match="only split is 'train'; got 'test'"):
        load_dataset("parquet", "test", path=tmp_path / "flat")
    (tmp_path / "not.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(UserError, match="not.parquet: not a readable Parquet file"):
        load_dataset("parquet", path=tmp_path / "not.parquet")


def test_hf_directory_on_s3_equals_it_on_disk(hf_dir, s3):
    """The same files under s3:// (INTERP_RAY_S3_ENDPOINT → moto): same rows, labels and pixels, also in a pickled
    copy (what a Ray loader task gets); a missing prefix is one line naming it."""
    from interp_ray.storage import filesystem

    root, _, _, _ = hf_dir
    _, bucket = s3
    fs, inner = filesystem(f"s3://{bucket}/hf")
    for path in root.rglob("*.parquet"):
        with fs.open_output_stream(f"{inner}/{path.relative_to(root).as_posix()}") as out:
            out.write(path.read_bytes())
    for split in ("train", "test"):
        local = load_dataset("parquet", split, path=root)
        remote = pickle.loads(pickle.dumps(load_dataset("parquet", split, path=f"s3://{bucket}/hf")))
        assert remote.class_names == local.class_names and len(remote) == len(local)
        a, b = local.get_batch(np.arange(len(local))), remote.get_batch(np.arange(len(remote)))
        for key in ("label", "image"):
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(UserError, match=f"parquet path s3://{bucket}/nothing does not exist"):
        load_dataset("parquet", path=f"s3://{bucket}/nothing")
