"""Fashion-MNIST: a tiny fixture in the exact IDX .gz layout of Debian's package, and (when installed) the real
files."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interp_ray.data import load_dataset
from interp_ray.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, ROOT_ENV
from interp_ray.errors import UserError
from tests.data.test_mnist_idx import idx_bytes

STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_gz(root: Path, file_split: str, images: np.ndarray, labels: np.ndarray) -> None:
    for stem, arr in zip(STEMS[file_split], (images, labels)):
        (root / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arr)))


@pytest.fixture
def fixture_root(tmp_path):
    """40 training rows whose pixel [0, 0] holds the row number (so a split's rows can be traced), 7 test rows."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = np.arange(40)
    write_gz(tmp_path, "train", train, (np.arange(40) % 10).astype(np.uint8))
    test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_gz(tmp_path, "test", test, np.array([9, 2, 1, 1, 6, 1, 4], dtype=np.uint8))
    return tmp_path, train, test


def file_rows(ds) -> np.ndarray:
    """Which training-file row each dataset row is, read back from the traced pixel."""
    return np.rint(ds.get_batch(np.arange(len(ds)))["image"][:, 0, 0, 0] * 255).astype(int)


def test_splits_partition_the_training_file(fixture_root):
    root, train, _ = fixture_root
    tr = load_dataset("fashion_mnist", "train", root=str(root), val_rows=8)
    va = load_dataset("fashion_mnist", "val", root=str(root), val_rows=8)
    assert (len(tr), len(va)) == (32, 8)
    rows_tr, rows_va = file_rows(tr), file_rows(va)
    assert set(rows_tr).isdisjoint(rows_va) and sorted([*rows_tr, *rows_va]) == list(range(40))
    # labels travel with their images, and ids name the file row
    np.testing.assert_array_equal(va.get_batch(np.arange(8))["label"], rows_va % 10)
    assert list(va.ids) == [f"fashion_mnist/train/{i:05d}" for i in rows_va]
    np.testing.assert_array_equal(tr.get_batch([0])["image"][0, 0], train[rows_tr[0]] / np.float32(255))
    assert tr.class_names == CLASS_NAMES and tr.image_shape == (1, 28, 28) and tr.num_classes == 10


def test_val_is_fixed_by_its_seed(fixture_root):
    root, _, _ = fixture_root
    a = file_rows(load_dataset("fashion_mnist", "val", root=str(root), val_rows=8, seed=0))
    b = file_rows(load_dataset("fashion_mnist", "val", root=str(root), val_rows=8, seed=0))
    c = file_rows(load_dataset("fashion_mnist", "val", root=str(root), val_rows=8, seed=1))
    np.testing.assert_array_equal(a, b)
    assert set(a) != set(c)


def test_test_split_is_the_test_file_in_order(fixture_root):
    root, _, test = fixture_root
    ds = load_dataset("fashion_mnist", "test", root=str(root))
    batch = ds.get_batch(np.arange(len(ds)))
    assert len(ds) == 7 and list(batch["label"][:2]) == [9, 2]
    np.testing.assert_array_equal(batch["image"][:, 0], test / np.float32(255))
    assert batch["id"][0] == "fashion_mnist/test/00000"


def test_limit_keeps_each_splits_first_rows_and_the_splits_disjoint(fixture_root):
    root, _, _ = fixture_root
    whole = {s: file_rows(load_dataset("fashion_mnist", s, root=str(root), val_rows=8)) for s in ("train", "val")}
    cut = {s: file_rows(load_dataset("fashion_mnist", s, root=str(root), val_rows=8, limit=5))
           for s in ("train", "val")}
    for s in ("train", "val"):
        np.testing.assert_array_equal(cut[s], whole[s][:5])
    assert set(cut["train"]).isdisjoint(cut["val"])
    assert len(load_dataset("fashion_mnist", "test", root=str(root), limit=100)) == 7   # a limit above the split: all
    with pytest.raises(UserError, match="limit=0"):
        load_dataset("fashion_mnist", "test", root=str(root), limit=0)


def test_root_from_environment(fixture_root, monkeypatch):
    root, _, _ = fixture_root
    monkeypatch.setenv(ROOT_ENV, str(root))
    assert len(load_dataset("fashion_mnist", "test")) == 7


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", "train", root=str(tmp_path))
    with pytest.raises(UserError, match="unknown split 'dev'"):
        load_dataset("fashion_mnist", "dev", root=str(tmp_path))


def test_missing_dataset_is_cli_exit_2_with_one_line(tmp_path):
    """The classifier job on a machine without the package: exit code 2 and one line naming the fix, before Ray."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: fashion_mnist, options: {{root: {tmp_path / 'nowhere'}}}}}\n"
                   "model: {name: digits_cnn}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.train_classifier", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not Path(DEFAULT_ROOT, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({DEFAULT_ROOT} missing)")
def test_real_debian_files():
    splits = {s: load_dataset("fashion_mnist", s, root=DEFAULT_ROOT) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 55000, "val": 5000, "test": 10000}
    assert set(splits["train"].ids).isdisjoint(splits["val"].ids)
    assert len(set(splits["train"].ids) | set(splits["val"].ids)) == 60000
    test = splits["test"].get_batch(np.arange(10000))
    assert list(test["label"][:2]) == [9, 2]
    assert np.bincount(test["label"], minlength=10).tolist() == [1000] * 10  # the test set is balanced
    assert test["image"].dtype == np.float32 and 0.0 <= test["image"].min() and test["image"].max() <= 1.0
    # the training file is balanced too (6,000 per class), so train + val together count 6,000 each
    counts = sum(np.bincount(d.labels, minlength=10) for d in (splits["train"], splits["val"]))
    assert counts.tolist() == [6000] * 10
