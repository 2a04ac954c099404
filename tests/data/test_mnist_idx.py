"""MNIST IDX files written byte for byte with struct, plain and gzipped, read back through load_dataset."""

import gzip
import struct

import numpy as np
import pytest

from interp_ray.data import load_dataset
from interp_ray.errors import UserError

STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_split(root, split, images, labels, gz=False):
    for stem, arr in zip(STEMS[split], (images, labels)):
        data = idx_bytes(arr)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)


def sample(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_pixels_labels_and_split(tmp_path, gz):
    train, test = sample(5, 0), sample(3, 1)
    write_split(tmp_path, "train", *train, gz=gz)
    write_split(tmp_path, "test", *test, gz=gz)
    for split, (images, labels) in (("train", train), ("test", test)):
        ds = load_dataset("mnist_idx", split, root=str(tmp_path))
        batch = ds.get_batch(np.arange(len(ds)))
        assert len(ds) == len(labels) and ds.image_shape == (1, 28, 28) and ds.class_names == list("0123456789")
        assert batch["image"].dtype == np.float32
        np.testing.assert_array_equal(batch["image"][:, 0], images / np.float32(255))
        np.testing.assert_array_equal(batch["label"], labels.astype(np.int64))
        assert batch["id"][0] == f"mnist/{split}/00000"


def test_torchvision_raw_dir_and_class_names(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_split(raw, "test", *sample(2, 2))
    ds = load_dataset("mnist_idx", "test", root=tmp_path, class_names=[f"c{i}" for i in range(10)])
    assert len(ds) == 2 and ds.class_names[3] == "c3"


def test_bad_files_are_user_errors(tmp_path):
    images, labels = sample(4, 3)
    with pytest.raises(UserError, match="not a directory"):
        load_dataset("mnist_idx", "train", root=tmp_path / "nope")
    with pytest.raises(UserError, match="missing MNIST file train-images-idx3-ubyte"):
        load_dataset("mnist_idx", "train", root=tmp_path)
    with pytest.raises(UserError, match="unknown split 'val'.*valid: train, test"):
        load_dataset("mnist_idx", "val", root=tmp_path)

    write_split(tmp_path, "train", images, labels)
    img_file = tmp_path / STEMS["train"][0]
    good = img_file.read_bytes()
    cases = [(b"\x01\x02" + good[2:], "magic number 0102"),
             (good[:2] + b"\x0d" + good[3:], "data type 0x0d"),
             (good[:3] + b"\x02" + good[4:], "2 dimensions, expected 3"),
             (good[:-5], "4×28×28 = 3136 bytes of data, file has 3131")]
    for data, message in cases:
        img_file.write_bytes(data)
        with pytest.raises(UserError, match=f"train-images-idx3-ubyte.*{message}"):
            load_dataset("mnist_idx", "train", root=tmp_path)
    img_file.write_bytes(good)

    (tmp_path / STEMS["train"][1]).write_bytes(idx_bytes(labels[:3]))
    with pytest.raises(UserError, match="4 images but .* 3 labels"):
        load_dataset("mnist_idx", "train", root=tmp_path)
    (tmp_path / STEMS["train"][1]).write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(UserError, match="train-labels-idx1-ubyte: corrupt gzip"):
        load_dataset("mnist_idx", "train", root=tmp_path)
