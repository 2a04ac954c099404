"""Extraction and explain-dataset fed from object storage (moto's S3 on 127.0.0.1) and from WebDataset shards: the
store equals the one made from the same images in a folder on local disk."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ray.checkpoint import save_classifier
from interp_ray.models import build_model
from interp_ray.saliency_store import SaliencyStore
from interp_ray.storage import filesystem
from interp_ray.store import MANIFEST_FILE, ActivationStore
from jobs.common import EXIT_USAGE, run_main
from jobs.explain_dataset import main as explain_main
from jobs.extract_activations import main as extract_main

# The in-process side computes with the one thread Ray gives each 1-CPU worker: float32 sums depend on it.
pytestmark = pytest.mark.usefixtures("ray_worker_torch_threads")

CLASSES = ["ant", "bee", "cow"]
PER_CLASS = 5
LAYERS = ["relu2", "relu3"]


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    """(relative path, class index, PNG bytes) in the folder loader's order: classes sorted, files sorted."""
    rng = np.random.default_rng(3)
    return [(f"{name}/{i:02d}.png", c, png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
            for c, name in enumerate(CLASSES) for i in range(PER_CLASS)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    opts = {"num_classes": 3, "in_channels": 3, "image_size": 8}
    path = tmp_path_factory.mktemp("ckpt") / "rgb"
    save_classifier(path, build_model("digits_cnn", **opts), model_name="digits_cnn", model_options=opts,
                    class_names=CLASSES)
    return path


def put(location: str, data: bytes) -> None:
    fs, inner = filesystem(location)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)  # local parents (a no-op on S3)
    with fs.open_output_stream(inner) as out:
        out.write(data)


def write_folder(base: str, images) -> None:
    for rel, _, data in images:
        put(f"{base}/{rel}", data)


def write_shards(base: str, images, per_shard=6) -> None:
    """``shard-00000{i}.tar`` with ``<key>.png`` + ``<key>.cls``, and ``classes.txt`` beside them."""
    for s in range(0, len(images), per_shard):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, c, data in images[s:s + per_shard]:
                key = rel.replace("/", "_").removesuffix(".png")
                for suffix, blob in (("png", data), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        put(f"{base}/shard-{s // per_shard:06d}.tar", buf.getvalue())
    put(f"{base}/classes.txt", "\n".join(CLASSES).encode())


def run_extract(checkpoint, out, data_name, options, engine="local") -> int:
    args = [f"checkpoint={checkpoint}", f"store.root={out}", f"data.name={data_name}", f"data.options={options}",
            f"layers=[{','.join(LAYERS)}]", "store.shard_rows=4", "compute.batch_size=3", f"compute.engine={engine}"]
    return run_main(extract_main, [a for s in args for a in ("--set", s)])


def extract(checkpoint, out, data_name, options, engine="local"):
    assert run_extract(checkpoint, out, data_name, options, engine) == 0
    (store,) = [p for p in Path(out).glob("*/*") if (p / MANIFEST_FILE).is_file()] if "://" not in str(out) else [None]
    return store


def read_store(location) -> dict[str, np.ndarray]:
    return ActivationStore.open(str(location)).read()


def assert_same_rows(got, want, exact=True):
    """Every row once, in order, with the same label and values: bit for bit when both ran in this process with the
    same batching, to float32 rounding otherwise (Ray Data regroups rows into other batches)."""
    np.testing.assert_array_equal(got["index"], np.arange(len(want["index"])))
    np.testing.assert_array_equal(got["label"], want["label"])
    for key in ("probabilities", *LAYERS):
        if exact:
            np.testing.assert_array_equal(got[key], want[key])
        else:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def only_remote_store(root: str) -> str:
    import pyarrow.fs as pafs

    fs, inner = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    (manifest,) = [i.path for i in infos if i.path.endswith(MANIFEST_FILE)]
    return root.rstrip("/") + "/" + manifest[len(inner) + 1:].removesuffix("/" + MANIFEST_FILE)


def test_folder_and_shards_on_s3_and_local_shards_give_the_local_folders_store(s3, tmp_path, images, checkpoint):
    _, bucket = s3
    write_folder(str(tmp_path / "folder"), images)
    write_folder(f"s3://{bucket}/folder", images)
    write_shards(str(tmp_path / "wds"), images)
    write_shards(f"s3://{bucket}/wds", images)
    want = read_store(extract(checkpoint, tmp_path / "a", "image_folder", f"{{root: '{tmp_path}/folder', "
                                                                           "image_size: 8}"))
    assert list(want["id"])[:2] == ["ant/00.png", "ant/01.png"]
    extract(checkpoint, f"s3://{bucket}/acts1", "image_folder", f"{{root: 's3://{bucket}/folder', image_size: 8}}")
    got = read_store(only_remote_store(f"s3://{bucket}/acts1"))
    assert_same_rows(got, want)
    assert list(got["id"]) == list(want["id"])
    for n, path in enumerate([str(tmp_path / "wds"), f"s3://{bucket}/wds/shard-{{000000..000002}}.tar"]):
        got = read_store(extract(checkpoint, tmp_path / f"w{n}", "webdataset", f"{{path: '{path}', image_size: 8}}"))
        assert_same_rows(got, want)
        assert got["id"][0] == "shard-000000.tar/ant_00"


@pytest.mark.ray
def test_ray_loader_tasks_read_shards_and_equal_the_in_process_store(ray_local, tmp_path, images, checkpoint):
    write_shards(str(tmp_path / "wds"), images)
    options = f"{{path: '{tmp_path}/wds', image_size: 8}}"
    want = read_store(extract(checkpoint, tmp_path / "a", "webdataset", options))
    got = read_store(extract(checkpoint, tmp_path / "b", "webdataset", options, engine="ray"))
    assert_same_rows(got, want, exact=False)


def test_explain_dataset_reads_webdataset_shards_on_s3(s3, tmp_path, images, checkpoint):
    _, bucket = s3
    write_folder(str(tmp_path / "folder"), images)
    write_shards(f"s3://{bucket}/wds", images)
    stores = {}
    for name, data in (("folder", f"{{name: image_folder, options: {{root: '{tmp_path}/folder', image_size: 8}}}}"),
                       ("wds", f"{{name: webdataset, options: {{path: 's3://{bucket}/wds', image_size: 8}}}}")):
        args = [f"checkpoint={checkpoint}", f"data={data}", "split=train", "methods=[{name: gradcam}]",
                f"store.root={tmp_path / name}", "evaluation.enabled=false", "compute.engine=local"]
        assert run_main(explain_main, [a for s in args for a in ("--set", s)]) == 0
        (store,) = [p for p in (tmp_path / name).rglob(MANIFEST_FILE)]
        stores[name] = SaliencyStore.open(str(store.parent)).read()
    np.testing.assert_array_equal(stores["wds"]["index"], np.arange(len(images)))
    np.testing.assert_array_equal(stores["wds"]["saliency"], stores["folder"]["saliency"])


def test_a_corrupt_jpeg_in_a_shard_on_s3_is_one_line_and_every_other_row_lands(s3, tmp_path, images, checkpoint,
                                                                                caplog):
    _, bucket = s3
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG", quality=90)
    broken = list(images)
    broken[4] = ("ant/04.jpg", 0, buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated: the header survives
    write_shards(f"s3://{bucket}/wds", [(r.replace(".jpg", ".png"), c, d) for r, c, d in broken])
    # the member is named .png but holds half a JPEG: PIL reads the header and fails on the data
    write_folder(str(tmp_path / "folder"), images)
    want = read_store(extract(checkpoint, tmp_path / "a", "image_folder", f"{{root: '{tmp_path}/folder', "
                                                                           "image_size: 8}"))
    caplog.clear()
    store = extract(checkpoint, tmp_path / "b", "webdataset", f"{{path: 's3://{bucket}/wds', image_size: 8}}")
    lines = [ln for ln in caplog.text.splitlines() if "ant_04" in ln]
    assert len(lines) == 1 and "shard-000000.tar/ant_04: not a decodable image" in lines[0], caplog.text
    got = read_store(store)
    keep = np.arange(len(images)) != 4
    np.testing.assert_array_equal(got["index"], np.arange(len(images))[keep])
    np.testing.assert_array_equal(got["label"], want["label"][keep])
    for key in LAYERS:  # a batch holding the placeholder instead of the image sums in another order: last bits only
        np.testing.assert_allclose(got[key], want[key][keep], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, option", [("image_folder", "root"), ("webdataset", "path"), ("parquet", "path")])
def test_a_missing_path_exits_2_with_one_line_naming_it(s3, tmp_path, checkpoint, capsys, name, option):
    _, bucket = s3
    for where in (str(tmp_path / "nowhere"), f"s3://{bucket}/nowhere"):
        assert run_extract(checkpoint, tmp_path / "acts", name, f"{{{option}: '{where}'}}") == EXIT_USAGE
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and f"{where} does not exist" in lines[0], lines
        assert not (tmp_path / "acts").exists()


def write_parquet(path: Path, images, order, rename=None) -> None:
    """The images as one Parquet file whose integer labels follow ``order`` (its ClassLabel names); ``rename``:
    class → the name this file gives it."""
    rename = rename or {}
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"info": {"features": {"label": {"names": order, "_type": "ClassLabel"}}}}
    labels = [order.index(rename.get(CLASSES[c], CLASSES[c])) for _, c, _ in images]
    table = pa.table({"image": pa.array([d for _, _, d in images], pa.binary()), "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), path)


def test_a_parquet_copy_in_another_class_order_is_remapped_and_other_names_refused(tmp_path, images, checkpoint,
                                                                                   caplog, capsys):
    write_folder(str(tmp_path / "folder"), images)
    want = read_store(extract(checkpoint, tmp_path / "a", "image_folder", f"{{root: '{tmp_path}/folder', "
                                                                           "image_size: 8}"))
    write_parquet(tmp_path / "copy.parquet", images, ["cow", "ant", "bee"])
    caplog.clear()
    got = read_store(extract(checkpoint, tmp_path / "b", "parquet", f"{{path: '{tmp_path}/copy.parquet', "
                                                                     "image_size: 8}"))
    assert "labels are translated to the model's indices" in caplog.text
    assert_same_rows(got, want)  # labels in the model's numbering, as the folder's
    write_parquet(tmp_path / "other.parquet", images, ["cow", "ant", "elk"], {"bee": "elk"})
    capsys.readouterr()
    assert run_extract(checkpoint, tmp_path / "c", "parquet", f"{{path: '{tmp_path}/other.parquet'}}") == EXIT_USAGE
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "classes elk are not among the model's" in lines[0]
    assert not (tmp_path / "c").exists()


def test_subset_option_reaches_the_store(tmp_path, images, checkpoint):
    write_folder(str(tmp_path / "folder"), images)
    whole = read_store(extract(checkpoint, tmp_path / "a", "image_folder", f"{{root: '{tmp_path}/folder', "
                                                                            "image_size: 8}"))
    some = read_store(extract(checkpoint, tmp_path / "b", "image_folder", f"{{root: '{tmp_path}/folder', "
                                                                           "image_size: 8, subset: {classes: [bee], "
                                                                           "per_class: 2}}"))
    assert list(some["id"]) == ["bee/00.png", "bee/01.png"] and list(some["label"]) == [1, 1]
    np.testing.assert_allclose(some["relu3"], whole["relu3"][5:7], rtol=1e-5, atol=1e-6)


def test_explain_dataset_on_a_reordered_parquet_copy_scores_the_models_labels(tmp_path, images, checkpoint):
    """The saliency store holds labels in the model's numbering, and its evaluation finds the same dataset again."""
    from interp_ray.saliency_report import dataset_of

    write_parquet(tmp_path / "copy.parquet", images, ["cow", "ant", "bee"])
    data = f"{{name: parquet, options: {{path: '{tmp_path}/copy.parquet', image_size: 8}}}}"
    args = [f"checkpoint={checkpoint}", f"data={data}", "split=train", "methods=[{name: gradcam}]",
            f"store.root={tmp_path / 'expl'}", "evaluation.enabled=false", "compute.engine=local"]
    assert run_main(explain_main, [a for s in args for a in ("--set", s)]) == 0
    (manifest,) = (tmp_path / "expl").rglob(MANIFEST_FILE)
    store = SaliencyStore.open(str(manifest.parent))
    np.testing.assert_array_equal(store.read()["label"], [c for _, c, _ in images])
    ds = dataset_of(store)
    assert ds.class_names == CLASSES
    assert list(ds.get_batch(np.arange(len(images)))["label"]) == [c for _, c, _ in images]
