"""An ImageFolder tree of real PNG/JPEG files, with and without split directories."""

import numpy as np
import pytest
from PIL import Image

from interp_ray.data import load_dataset
from interp_ray.errors import UserError

JPEG_TOL = 4 / 255
COLOURS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "eel": (10, 10, 250)}


def solid(path, colour, size=(12, 9), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def colour_of(rgb):
    return np.array(rgb, dtype=np.float32)[:, None, None] / 255


def make_split_tree(root):
    # "eel" exists only in val: labels must still agree between splits.
    solid(root / "train" / "dog" / "b.png", COLOURS["dog"])
    solid(root / "train" / "cat" / "a.JPG", COLOURS["cat"], fmt="JPEG")
    solid(root / "train" / "cat" / "nested" / "c.png", COLOURS["cat"], size=(30, 5))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    solid(root / "val" / "eel" / "e.png", COLOURS["eel"])
    solid(root / "val" / "dog" / "d.jpeg", COLOURS["dog"], fmt="JPEG")


def test_split_layout_pixels_labels_ids(tmp_path):
    make_split_tree(tmp_path)
    train = load_dataset("image_folder", "train", root=str(tmp_path), image_size=8)
    assert train.class_names == ["cat", "dog", "eel"] and train.image_shape == (3, 8, 8)
    batch = train.get_batch([0, 1, 2])
    assert list(batch["id"]) == ["train/cat/a.JPG", "train/cat/nested/c.png", "train/dog/b.png"]
    np.testing.assert_array_equal(batch["label"], [0, 0, 1])
    assert batch["image"].shape == (3, 3, 8, 8) and batch["image"].dtype == np.float32
    for img, name in zip(batch["image"], ["cat", "cat", "dog"]):
        np.testing.assert_allclose(img, np.broadcast_to(colour_of(COLOURS[name]), img.shape), atol=JPEG_TOL)

    val = load_dataset("image_folder", "val", root=tmp_path, image_size=8)
    assert val.class_names == train.class_names
    assert list(val.get_batch([0, 1])["label"]) == [1, 2]


def test_flat_layout_grey_mode_and_extensions(tmp_path):
    solid(tmp_path / "a" / "1.png", (255, 255, 255))
    solid(tmp_path / "b" / "2.bmp", (0, 0, 0))
    ds = load_dataset("image_folder", root=tmp_path, image_size=4, mode="L")
    assert len(ds) == 2 and ds.image_shape == (1, 4, 4)
    batch = ds.get_batch([1, 0])
    assert list(batch["id"]) == ["b/2.bmp", "a/1.png"]
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], [0.0, 1.0])
    only_png = load_dataset("image_folder", root=tmp_path, image_size=4, extensions=".png")
    assert len(only_png) == 1 and only_png.class_names == ["a", "b"]
    with pytest.raises(UserError, match="only split is 'train'; got 'test'"):
        load_dataset("image_folder", "test", root=tmp_path)


def test_images_are_decoded_per_batch_not_at_load(tmp_path):
    solid(tmp_path / "a" / "good.png", (1, 2, 3))
    (tmp_path / "a" / "bad.png").write_bytes(b"this is no png")
    ds = load_dataset("image_folder", root=tmp_path, image_size=4)  # loading lists files, reads no pixels
    assert len(ds) == 2
    ds.get_batch([1])
    with pytest.raises(UserError, match=r"a/bad.png: not a decodable image"):
        ds.get_batch([0, 1])


def test_bad_roots_and_splits(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        load_dataset("image_folder", root=tmp_path / "missing")
    with pytest.raises(UserError, match="no images"):
        load_dataset("image_folder", root=tmp_path)
    make_split_tree(tmp_path)
    with pytest.raises(UserError, match="unknown split 'test'.*valid: train, val"):
        load_dataset("image_folder", "test", root=tmp_path)
    with pytest.raises(UserError, match="unknown option"):
        load_dataset("image_folder", root=tmp_path, size=3)


def test_folder_on_s3_equals_the_same_folder_on_disk(tmp_path, s3):
    """One listing on S3 gives the local folder's classes, rows and pixels; a missing prefix is one line."""
    from interp_ray.storage import filesystem

    _, bucket = s3
    make_split_tree(tmp_path)
    (tmp_path / "train" / ".hidden").mkdir()
    (tmp_path / "train" / ".hidden" / "x.png").write_bytes((tmp_path / "train" / "dog" / "b.png").read_bytes())
    fs, inner = filesystem(f"s3://{bucket}/folder")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{inner}/{path.relative_to(tmp_path).as_posix()}") as out:
                out.write(path.read_bytes())
    for split in ("train", "val"):
        local = load_dataset("image_folder", split, root=str(tmp_path), image_size=8)
        remote = load_dataset("image_folder", split, root=f"s3://{bucket}/folder", image_size=8)
        assert remote.class_names == local.class_names and remote.paths == local.paths
        a, b = local.get_batch(np.arange(len(local))), remote.get_batch(np.arange(len(remote)))
        for key in ("id", "label", "image"):
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(UserError, match=f"image folder root s3://{bucket}/nothing does not exist"):
        load_dataset("image_folder", root=f"s3://{bucket}/nothing")
    with pytest.raises(UserError, match="unknown split 'test'.*valid: train, val"):
        load_dataset("image_folder", "test", root=f"s3://{bucket}/folder")
