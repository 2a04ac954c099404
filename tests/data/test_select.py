"""The subset option and class alignment with a model, on a real image folder and a Parquet copy of it."""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from interp_ray.data import load_dataset
from interp_ray.data.select import align_classes
from interp_ray.errors import UserError

CLASSES = ["ant", "bee", "cow"]


@pytest.fixture
def folder(tmp_path):
    """ant: 4 images, bee: 3, cow: 2; pixel value = 10 × class + image number, so a row names itself."""
    for c, (name, n) in enumerate(zip(CLASSES, (4, 3, 2))):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), 10 * c + i).save(tmp_path / "f" / name / f"{i}.png")
    return tmp_path / "f"


def parquet_copy(folder, path, order):
    """The folder's images as a Parquet file whose integer labels follow ``order`` (a ClassLabel order)."""
    images, labels = [], []
    for png in sorted(folder.glob("*/*.png")):
        images.append(png.read_bytes())
        labels.append(order.index(png.parent.name))
    meta = {"info": {"features": {"label": {"names": order, "_type": "ClassLabel"}}}}
    import json

    table = pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), path)


def pixel(batch):
    return np.round(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def test_subset_classes_per_class_and_limit(folder):
    ds = load_dataset("image_folder", root=str(folder), image_size=4, mode="L")
    assert pixel(ds.get_batch(np.arange(len(ds)))) == [0, 1, 2, 3, 10, 11, 12, 20, 21]
    some = load_dataset("image_folder", root=str(folder), image_size=4, mode="L",
                        subset={"classes": ["cow", "ant"], "per_class": 2})
    batch = some.get_batch(np.arange(len(some)))
    assert pixel(batch) == [0, 1, 20, 21] and list(batch["label"]) == [0, 0, 2, 2]
    assert some.class_names == CLASSES  # label indices stay the whole dataset's
    spread = load_dataset("image_folder", root=str(folder), image_size=4, mode="L", subset={"limit": 3})
    assert pixel(spread.get_batch(np.arange(3))) == [0, 10, 21]  # rows 0, 4, 8 of 9
    assert spread.describe()["subset"] == {"limit": 3} and spread.describe()["rows"] == 3
    with pytest.raises(UserError, match="subset.classes: eel not in"):
        load_dataset("image_folder", root=str(folder), subset={"classes": ["eel"]})
    with pytest.raises(UserError, match="subset must be a mapping"):
        load_dataset("image_folder", root=str(folder), subset={"fraction": 0.5})
    with pytest.raises(UserError, match="takes no subset option"):
        load_dataset("scenes", "test", n=4, size=32, subset={"limit": 2})


def test_the_same_names_in_another_order_are_translated_to_the_models(folder, tmp_path, caplog):
    """The folder numbers classes alphabetically, the Parquet copy in its ClassLabel order; aligned to a model
    trained on the folder, both give every image the same label (issue 36: 74% against 24.7% before)."""
    parquet_copy(folder, tmp_path / "copy.parquet", ["cow", "ant", "bee"])
    raw = load_dataset("parquet", path=str(tmp_path / "copy.parquet"), image_size=4, mode="L")
    assert raw.class_names == ["cow", "ant", "bee"]
    folder_ds = load_dataset("image_folder", root=str(folder), image_size=4, mode="L")
    assert align_classes(folder_ds, CLASSES, what="folder") is folder_ds
    with caplog.at_level(logging.WARNING, "interp_ray.data"):
        aligned = align_classes(raw, CLASSES, what="copy")
    assert "labels are translated to the model's indices" in caplog.text and "cow 0→2" in caplog.text
    assert aligned.class_names == CLASSES and aligned.describe()["labels_remapped_from"] == ["cow", "ant", "bee"]
    a, b = folder_ds.get_batch(np.arange(9)), aligned.get_batch(np.arange(9))
    assert pixel(a) == pixel(b)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(aligned.labels, a["label"])
    # a subset of the model's classes keeps the model's indices too
    some = load_dataset("parquet", path=str(tmp_path / "copy.parquet"), image_size=4, mode="L",
                        subset={"classes": ["bee"]})
    assert list(align_classes(some, CLASSES, what="copy").get_batch(np.arange(3))["label"]) == [1, 1, 1]


def test_names_the_model_lacks_are_refused(folder):
    ds = load_dataset("image_folder", root=str(folder), image_size=4)
    with pytest.raises(UserError, match="classes cow are not among the model's"):
        align_classes(ds, ["ant", "bee", "cat"], what="folder")
    unnamed = load_dataset("image_folder", root=str(folder), image_size=4)
    unnamed.class_names = ["0", "1", "2"]
    assert align_classes(unnamed, CLASSES, what="x") is unnamed  # indices only: nothing to check against
    assert align_classes(ds, ["0", "1", "2"], what="x") is ds  # a model imported without names, likewise
    with pytest.raises(UserError, match="not among the model's"):
        align_classes(ds, ["0", "1"], what="x")  # more classes than the model has outputs
