"""interp_ray/data/captions.py and the loaders that read captions: ``captions.jsonl`` beside an image folder (local
and on S3) and a Parquet caption column, joined to the rows by row id, and every malformed input as one line."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from captioned_data import CLASSES, write_captioned_folder, write_parquet_copy

from interp_ray.data import load_dataset
from interp_ray.data.captions import parse_captions
from interp_ray.errors import UserError


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    captions = write_captioned_folder(root / "folder")
    write_parquet_copy(root / "folder", root / "pq", captions)
    return root, captions


def rows_of(dataset):
    return dataset.get_batch(np.arange(len(dataset)))


def assert_own_captions(batch, captions):
    """Each row carries exactly its own image's captions ("" padding), which name its class's colour and shape."""
    for row_id, label, sentences in zip(batch["id"], batch["label"], batch["sentences"]):
        assert [s for s in sentences if s] == captions[str(row_id)]
        colour, shape, _ = CLASSES[str(row_id).split("/")[1]]
        assert all(colour in s and shape in s for s in sentences if s)


def test_folder_rows_carry_their_own_captions(captioned):
    root, captions = captioned
    for split in ("train", "val"):
        ds = load_dataset("image_folder", split, root=str(root / "folder"))
        assert ds.extra_columns() == ["sentences"]
        batch = rows_of(ds)
        assert batch["sentences"].shape == (len(ds), 3)          # up to 3 captions an image, "" pads the rest
        assert_own_captions(batch, captions)
    # The identity covers the captions: other captions are another store; a folder without them keeps its old one.
    assert ds.describe()["captions"]["file"].endswith("captions.jsonl")
    plain = load_dataset("image_folder", "val", root=str(root / "folder"), captions=False)
    assert "sentences" not in plain.get_batch([0]) and "captions" not in plain.describe()
    assert plain.extra_columns() == []


def test_a_subset_keeps_each_row_with_its_captions(captioned):
    root, captions = captioned
    ds = load_dataset("image_folder", "train", root=str(root / "folder"),
                      subset={"classes": ["red_circle", "blue_triangle"], "per_class": 3})
    batch = rows_of(ds)
    assert len(ds) == 6 and ds.extra_columns() == ["sentences"]
    assert_own_captions(batch, captions)


def test_parquet_caption_column_is_joined_by_row(captioned):
    root, captions = captioned
    ds = load_dataset("parquet", "train", path=str(root / "pq"), captions_column="text", id_column="id")
    batch = rows_of(ds)
    # the file's rows are shuffled: a row's captions are still its own
    assert list(batch["id"]) != sorted(batch["id"])
    assert_own_captions(batch, captions)
    assert ds.describe()["captions_column"] == "text" and ds.extra_columns() == ["sentences"]
    plain = load_dataset("parquet", "train", path=str(root / "pq"))
    assert plain.extra_columns() == [] and "captions_column" not in plain.describe()


def test_parquet_string_column_and_bad_columns(tmp_path, captioned):
    root, _ = captioned
    src = pq.read_table(root / "pq" / "val.parquet")
    one = src.append_column("caption", pa.array([t[0] for t in src.column("text").to_pylist()]))
    pq.write_table(one, tmp_path / "one.parquet")
    ds = load_dataset("parquet", path=str(tmp_path / "one.parquet"), captions_column="caption")
    assert ds.get_batch([0])["sentences"].shape == (1, 1)

    def refused(table, column, match):
        pq.write_table(table, tmp_path / "bad.parquet")
        with pytest.raises(UserError, match=match):
            load_dataset("parquet", path=str(tmp_path / "bad.parquet"), captions_column=column)

    refused(src, "caption", r"bad.parquet: captions_column 'caption' is not a column; columns present: image, label")
    refused(src.append_column("n", pa.array(range(src.num_rows))), "n", "captions_column 'n' has type int64")
    texts = src.column("text").to_pylist()
    refused(src.set_column(3, "text", pa.array([None] + texts[1:], pa.list_(pa.string()))), "text",
            "bad.parquet row 0: column 'text': the caption is null")
    refused(src.set_column(3, "text", pa.array(texts[:2] + [[]] + texts[3:], pa.list_(pa.string()))), "text",
            "bad.parquet row 2: column 'text': the caption list is empty")
    refused(src.set_column(3, "text", pa.array(texts[:1] + [["a red circle", "  "]] + texts[2:])), "text",
            r"bad.parquet row 1: column 'text'\[1\]: the caption is empty")


@pytest.mark.parametrize("line, match", [
    ('{"image": "train/red_circle/000.png", "caption": ""}', r"captions.jsonl:1: caption: the caption is empty"),
    ('{"image": "train/red_circle/000.png", "captions": ["ok", " "]}', r":1: captions\[1\]: the caption is empty"),
    ('{"image": "train/red_circle/000.png", "captions": []}', ":1: 'captions' must be a non-empty list"),
    ('{"image": "train/red_circle/000.png", "caption": "…!"}', ":1: caption: the caption '…!' has no word"),
    ('{"image": "train/red_circle/000.png"}', ":1: give exactly one of 'caption'"),
    ('{"image": "a.png", "caption": "x", "captions": ["y"]}', ":1: give exactly one of 'caption'"),
    ('{"caption": "a red circle"}', ":1: no 'image' field"),
    ('{"image": "../x.png", "caption": "a"}', ":1: image '../x.png' must be relative to the folder's root"),
    ('{"image": "a.png", "text": "a"}', ":1: unknown field\\(s\\) text"),
    ('["a.png", "a"]', ":1: expected a JSON object"),
    ('{"image": "a.png", caption: 1}', ":1: not JSON"),
    ('{"image": "a.png", "caption": 3}', ":1: caption: a caption must be a string, got int"),
])
def test_malformed_lines_are_one_line_naming_the_line(line, match):
    with pytest.raises(UserError, match=match):
        parse_captions(line.encode(), "captions.jsonl")


def test_parse_adds_up_lines_and_normalises_paths():
    text = ('{"image": "./train/a/1.png", "caption": " a red circle "}\n\n'
            '{"image": "train/a/1.png", "captions": ["the circle is red"]}\n')
    parsed = parse_captions(text.encode(), "c.jsonl")
    assert parsed.captions == {"train/a/1.png": ["a red circle", "the circle is red"]}
    assert parsed.lines == {"train/a/1.png": 1}
    with pytest.raises(UserError, match="c.jsonl: no captions"):
        parse_captions(b"\n\n", "c.jsonl")
    with pytest.raises(UserError, match="not a text file"):
        parse_captions(b"\x00\x01", "c.jsonl")


def test_folder_captions_that_do_not_match_the_images(tmp_path):
    captions = write_captioned_folder(tmp_path)
    path = tmp_path / "captions.jsonl"
    good = path.read_text()
    # a line naming an image that is not in the folder, on line 3
    lines = good.splitlines()
    lines.insert(2, json.dumps({"image": "train/red_circle/999.png", "caption": "a red circle"}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"captions.jsonl:3: image 'train/red_circle/999.png' is not in the image "
                                        r"folder"):
        load_dataset("image_folder", "val", root=str(tmp_path))
    # an image with no caption: every line about it dropped
    missing = "val/green_square/002.png"
    path.write_text("\n".join(x for x in good.splitlines() if missing not in x) + "\n")
    with pytest.raises(UserError, match=f"image {missing} has no caption; add a line"):
        load_dataset("image_folder", "val", root=str(tmp_path))
    load_dataset("image_folder", "train", root=str(tmp_path))     # the train split has all of its captions
    # a file named by the option: relative to the root, and one that is not there
    path.rename(tmp_path / "mine.jsonl")
    assert load_dataset("image_folder", "train", root=str(tmp_path)).extra_columns() == []
    named = load_dataset("image_folder", "train", root=str(tmp_path), captions="mine.jsonl")
    assert named.extra_columns() == ["sentences"] and len(captions) == 36
    with pytest.raises(UserError, match="captions file .*nope.jsonl does not exist"):
        load_dataset("image_folder", root=str(tmp_path), captions="nope.jsonl")


def test_folder_captions_on_s3_equal_the_local_ones(tmp_path, s3):
    from interp_ray.storage import filesystem

    _, bucket = s3
    write_captioned_folder(tmp_path)
    fs, inner = filesystem(f"s3://{bucket}/folder")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            with fs.open_output_stream(f"{inner}/{path.relative_to(tmp_path).as_posix()}") as out:
                out.write(path.read_bytes())
    local = load_dataset("image_folder", "val", root=str(tmp_path))
    remote = load_dataset("image_folder", "val", root=f"s3://{bucket}/folder")
    np.testing.assert_array_equal(rows_of(local)["sentences"], rows_of(remote)["sentences"])
    assert remote.describe()["captions"]["sha256"] == local.describe()["captions"]["sha256"]
