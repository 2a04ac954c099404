"""WebDataset tar shards, local and on a real S3 API (moto on 127.0.0.1): samples, labels, class names, bad paths."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from interp_ray.data import load_dataset
from interp_ray.data.webdataset import expand_braces
from interp_ray.errors import UserError
from interp_ray.storage import filesystem

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]


def encoded(colour, fmt="PNG", size=(10, 7)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def shard_bytes(samples):
    """A tar of (key, {suffix: bytes}) in the WebDataset layout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write(location, data):
    fs, inner = filesystem(location)
    with fs.open_output_stream(inner) as out:
        out.write(data)


def make_shards(base, n_shards=2, per_shard=3, label="cls", classes=("cat", "dog", "eel")):
    """Shards ``base/shards-00000{i}.tar``: sample j of shard i has class (i*per_shard + j) % 3, as .cls or .json."""
    truth = []
    for i in range(n_shards):
        samples = []
        for j in range(per_shard):
            c = (i * per_shard + j) % 3
            lab = str(c).encode() if label == "cls" else json.dumps({"label": classes[c]}).encode()
            fmt = "JPEG" if j % 2 else "PNG"
            samples.append((f"s{i}_{j:03d}", {"jpg" if fmt == "JPEG" else "png": encoded(COLOURS[c], fmt),
                                              label: lab}))
            truth.append((f"shards-{i:06d}.tar/s{i}_{j:03d}", c))
        write(f"{base}/shards-{i:06d}.tar", shard_bytes(samples))
    return truth


def check(ds, truth, classes):
    """Every row's id, label (in ``classes``' numbering) and pixels (the colour of its class in the shard)."""
    assert len(ds) == len(truth) and ds.class_names == list(classes) and ds.image_shape == (3, 8, 8)
    batch = ds.get_batch(np.arange(len(ds))[::-1])
    assert list(batch["id"]) == [t[0] for t in truth][::-1]
    order = ["cat", "dog", "eel"]
    np.testing.assert_array_equal(batch["label"], [list(classes).index(order[t[1]]) for t in truth][::-1])
    for img, (_, c) in zip(batch["image"], truth[::-1]):
        np.testing.assert_allclose(img, np.broadcast_to(np.array(COLOURS[c], np.float32)[:, None, None] / 255,
                                                        img.shape), atol=4 / 255)


def test_brace_expansion_keeps_padding():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("x{1..2}/y{8..9}") == ["x1/y8", "x1/y9", "x2/y8", "x2/y9"]
    with pytest.raises(UserError, match="backwards"):
        expand_braces("a{3..1}")


@pytest.mark.parametrize("form", ["directory", "braces", "list"])
def test_local_shards_with_classes_txt(tmp_path, form):
    truth = make_shards(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\neel\n")
    path = {"directory": str(tmp_path), "braces": f"{tmp_path}/shards-{{000000..000001}}.tar",
            "list": [str(tmp_path / "shards-000000.tar"), str(tmp_path / "shards-000001.tar")]}[form]
    check(load_dataset("webdataset", path=path, image_size=8), truth, ["cat", "dog", "eel"])


def test_json_labels_name_classes_and_classes_json_orders_them(tmp_path):
    truth = make_shards(tmp_path, label="json")
    # no class file: sorted names
    check(load_dataset("webdataset", path=str(tmp_path), image_size=8), truth, ["cat", "dog", "eel"])
    (tmp_path / "classes.json").write_text(json.dumps({"eel": 0, "dog": 1, "cat": 2}))
    check(load_dataset("webdataset", path=str(tmp_path), image_size=8), truth, ["eel", "dog", "cat"])
    given = load_dataset("webdataset", path=str(tmp_path), image_size=8, class_names="dog,cat,eel")
    np.testing.assert_array_equal(given.labels, [{0: 1, 1: 0, 2: 2}[c] for _, c in truth])


def test_shards_on_s3(s3):
    _, bucket = s3
    truth = make_shards(f"s3://{bucket}/wds/train")
    write(f"s3://{bucket}/wds/train/classes.txt", b"cat\ndog\neel\n")
    ds = load_dataset("webdataset", "train", path=f"s3://{bucket}/wds", image_size=8)
    check(ds, truth, ["cat", "dog", "eel"])
    braces = load_dataset("webdataset", path=f"s3://{bucket}/wds/train/shards-{{000000..000001}}.tar", image_size=8)
    check(braces, truth, ["cat", "dog", "eel"])
    import pickle

    check(pickle.loads(pickle.dumps(ds)), truth, ["cat", "dog", "eel"])  # what a Ray task receives


def test_missing_paths_name_themselves(tmp_path, s3):
    _, bucket = s3
    with pytest.raises(UserError, match=r"webdataset path .*nowhere does not exist"):
        load_dataset("webdataset", path=str(tmp_path / "nowhere"))
    make_shards(tmp_path, n_shards=1)
    with pytest.raises(UserError, match=r"shard .*shards-000001.tar does not exist"):
        load_dataset("webdataset", path=f"{tmp_path}/shards-{{000000..000001}}.tar")
    with pytest.raises(UserError, match=f"webdataset path s3://{bucket}/none does not exist"):
        load_dataset("webdataset", path=f"s3://{bucket}/none")
    with pytest.raises(UserError, match="only split is 'train'"):
        load_dataset("webdataset", "test", path=str(tmp_path))


def test_bad_labels_and_tars(tmp_path):
    write(str(tmp_path / "a.tar"), shard_bytes([("k", {"png": encoded(COLOURS[0])})]))
    with pytest.raises(UserError, match="sample 'k' has no .cls or .json label"):
        load_dataset("webdataset", path=str(tmp_path / "a.tar"))
    write(str(tmp_path / "b.tar"), shard_bytes([("k", {"png": encoded(COLOURS[0]), "cls": b"x"})]))
    with pytest.raises(UserError, match=r"k.cls: 'x' is not a class index"):
        load_dataset("webdataset", path=str(tmp_path / "b.tar"))
    (tmp_path / "c.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not a readable tar file"):
        load_dataset("webdataset", path=str(tmp_path / "c.tar"))
