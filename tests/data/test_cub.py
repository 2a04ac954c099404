"""A four-image CUB-200-2011 tree in the distributed layout, with Reed sentences and GVE split files."""

import numpy as np
import pytest
from PIL import Image

from interp_ray.data import load_dataset
from interp_ray.errors import UserError

JPEG_TOL = 4 / 255
SIZE = 8
CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
# image id: (class id, file, (width, height), colour, is_train, box x y w h)
IMAGES = {
    1: (1, "Black_Footed_Albatross_0001_1.jpg", (40, 20), (220, 20, 20), 1, (10, 5, 20, 10)),
    2: (1, "Black_Footed_Albatross_0002_2.jpg", (30, 30), (20, 220, 20), 0, (0, 0, 30, 30)),
    3: (2, "Laysan_Albatross_0003_3.jpg", (20, 40), (20, 20, 220), 1, (4, 8, 12, 16)),
    4: (2, "Laysan_Albatross_0004_4.jpg", (16, 16), (128, 128, 128), 0, (1, 1, 4, 4)),
}
# Boxes after the squash to SIZE×SIZE: each axis scales by SIZE / its own length, and the corners round outwards.
# 1: ×0.2, ×0.4 exact; 3: x 4..16 ×0.4 = 1.6..6.4 -> 1..7, y 8..24 ×0.2 = 1.6..4.8 -> 1..5; 4: 1..5 ×0.5 -> 0..3.
EXPECTED_BOXES = {1: [2, 2, 6, 6], 2: [0, 0, 8, 8], 3: [1, 1, 7, 5], 4: [0, 0, 3, 3]}
SENTENCES = {1: [f"this bird {i} has a white belly" for i in range(10)],
             2: ["a large bird with long wings"] * 10,
             3: ["this bird is brown", "", "it has a hooked bill", "short sentence"],  # fewer than 10: padded
             4: ["grey all over"] * 12}  # more than 10: the first 10


def rel(image_id):
    cls, name, *_ = IMAGES[image_id]
    return f"{CLASSES[cls - 1]}/{name}"


def write_cub(tmp_path):
    root, text = tmp_path / "CUB_200_2011", tmp_path / "cvpr2016_cub" / "text_c10"
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for i, (cls, name, size, colour, train, box) in IMAGES.items():
        path = root / "images" / rel(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "L" if i == 4 else "RGB"  # CUB has a few greyscale JPEGs; they must come out RGB
        Image.new(mode, size, colour[0] if mode == "L" else colour).save(path, quality=95)
        lines["images.txt"].append(f"{i} {rel(i)}")
        lines["image_class_labels.txt"].append(f"{i} {cls}")
        lines["train_test_split.txt"].append(f"{i} {train}")
        lines["bounding_boxes.txt"].append(f"{i} " + " ".join(f"{v:.1f}" for v in box))
        sentence_file = text / rel(i).replace(".jpg", ".txt")
        sentence_file.parent.mkdir(parents=True, exist_ok=True)
        sentence_file.write_text("\n".join(SENTENCES[i]) + "\n")
    lines["classes.txt"] = [f"{n} {c}" for n, c in enumerate(CLASSES, 1)]
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_noCub.txt").write_text(f"{rel(3)}\nimages/{rel(1)}\n")  # file order kept; "images/" tolerated
    (splits / "val.txt").write_text(f"{rel(2)}\n\n")
    (splits / "test.txt").write_text(f"{rel(4)}\n")
    return root, text.parent, splits


@pytest.fixture()
def cub(tmp_path):
    return write_cub(tmp_path)


def check_rows(batch, image_ids):
    assert list(batch["id"]) == [rel(i) for i in image_ids]
    np.testing.assert_array_equal(batch["label"], [IMAGES[i][0] - 1 for i in image_ids])
    assert batch["boxes"].dtype == np.int32 and batch["boxes"].shape == (len(image_ids), 1, 4)
    np.testing.assert_array_equal(batch["boxes"][:, 0], [EXPECTED_BOXES[i] for i in image_ids])
    for img, i in zip(batch["image"], image_ids):
        colour = np.array(IMAGES[i][3], dtype=np.float32)[:, None, None] / 255
        np.testing.assert_allclose(img, np.broadcast_to(colour, img.shape), atol=JPEG_TOL)


def test_cub_own_split_with_sentences(cub):
    root, sentences_root, _ = cub
    ds = load_dataset("cub", "train", root=str(root), sentences_root=str(sentences_root), image_size=SIZE)
    assert len(ds) == 2 and ds.image_shape == (3, SIZE, SIZE)
    assert ds.class_names == ["Black_footed_Albatross", "Laysan_Albatross"]
    batch = ds.get_batch([0, 1])
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["image"].dtype == np.float32
    check_rows(batch, [1, 3])
    assert batch["sentences"].shape == (2, 10)
    assert list(batch["sentences"][0]) == SENTENCES[1]
    assert list(batch["sentences"][1]) == ["this bird is brown", "it has a hooked bill", "short sentence"] + [""] * 7

    test = load_dataset("cub", "test", root=root, sentences_root=sentences_root / "text_c10", image_size=SIZE)
    batch = test.get_batch([0, 1])
    check_rows(batch, [2, 4])
    assert list(batch["sentences"][1]) == ["grey all over"] * 10


def test_gve_split_files_directory_and_dict(cub):
    root, _, splits = cub
    order = {"train": [3, 1], "val": [2], "test": [4]}
    for split, ids in order.items():
        ds = load_dataset("cub", split, root=root, split_files=str(splits), image_size=SIZE)
        batch = ds.get_batch(np.arange(len(ds)))
        check_rows(batch, ids)
        assert "sentences" not in batch
    ds = load_dataset("cub", "holdout", root=root, split_files={"holdout": splits / "test.txt"}, image_size=SIZE)
    check_rows(ds.get_batch([0]), [4])


def test_bad_sentence_files_name_the_file(cub):
    root, sentences_root, _ = cub
    ds = load_dataset("cub", "train", root=root, sentences_root=sentences_root, image_size=SIZE)
    path = sentences_root / "text_c10" / rel(3).replace(".jpg", ".txt")
    path.write_text("\n  \n")
    with pytest.raises(UserError, match=f"{path.name}: no sentences"):
        ds.get_batch([1])
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match=f"{path.name}: not a (UTF-8 )?text file"):
        ds.get_batch([1])
    path.write_bytes(b"ok line\n\x00\x01binary")
    with pytest.raises(UserError, match=f"{path.name}: not a text file"):
        ds.get_batch([1])
    path.unlink()
    with pytest.raises(UserError, match=f"missing CUB sentence file .*{path.name}"):
        ds.get_batch([1])


def test_bad_inputs_are_user_errors(cub, tmp_path):
    root, sentences_root, splits = cub
    with pytest.raises(UserError, match="CUB root .* is not a directory"):
        load_dataset("cub", root=tmp_path / "nope")
    with pytest.raises(UserError, match="unknown split 'val' for cub; valid: train, test"):
        load_dataset("cub", "val", root=root)
    with pytest.raises(UserError, match="unknown split 'dev'.*valid: train, val, test"):
        load_dataset("cub", "dev", root=root, split_files=splits)
    with pytest.raises(UserError, match="missing CUB sentence file"):
        load_dataset("cub", root=root, sentences_root=tmp_path / "splits")
    (splits / "val.txt").write_text("999.Nope/x.jpg\n")
    with pytest.raises(UserError, match="val.txt:1: image '999.Nope/x.jpg' is not listed in images.txt"):
        load_dataset("cub", "val", root=root, split_files=splits)
    (splits / "test.txt").unlink()
    with pytest.raises(UserError, match="missing CUB split file test.txt"):
        load_dataset("cub", "test", root=root, split_files=splits)
    (root / "bounding_boxes.txt").write_text("1 1.0 2.0 oops 4.0\n")
    with pytest.raises(UserError, match=r"bounding_boxes.txt:1: expected"):
        load_dataset("cub", root=root)
    (root / "classes.txt").unlink()
    with pytest.raises(UserError, match="missing CUB file .*classes.txt"):
        load_dataset("cub", root=root)


def test_unreadable_image_names_the_file(cub):
    root, _, _ = cub
    (root / "images" / rel(1)).write_bytes(b"not a jpeg")
    ds = load_dataset("cub", root=root, image_size=SIZE)
    with pytest.raises(UserError, match="Black_Footed_Albatross_0001_1.jpg: not a decodable image"):
        ds.get_batch([0])


def test_pixels_for_the_loader_scale_to_get_batch_exactly(cub):
    """What extraction's loader ships (uint8) comes back as get_batch's floats bit for bit, boxes and sentences
    unchanged."""
    from interp_ray.data.base import image_tensor

    root, sentences_root, _ = cub
    ds = load_dataset("cub", "train", root=str(root), sentences_root=str(sentences_root), image_size=SIZE)
    pixels, floats = ds.get_pixel_batch([1, 0]), ds.get_batch([1, 0])
    assert ds.pixel_dtype == "uint8" and pixels["image"].dtype == np.uint8
    assert np.array_equal(image_tensor(pixels["image"], "cpu").numpy().view(np.uint32), floats["image"].view(np.uint32))
    for key in ("id", "label", "boxes", "sentences"):
        np.testing.assert_array_equal(pixels[key], floats[key])
