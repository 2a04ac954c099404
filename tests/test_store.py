"""The store without Ray or models: keys, atomic shard assembly, refusing foreign stores, reading tensors back."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from interp_ray.errors import UserError
from interp_ray.store import (MANIFEST_FILE, SCHEMA_META_KEY, ActivationStore, InjectedFailure, Manifest,
                              ShardAssembler, StoreKeyMismatch, finalize_store, make_identity, part_name,
                              prepare_store, store_key, write_part)

SHAPES = {"conv": (2, 3, 3), "fc": (4,)}
ROWS, SHARD = 23, 5  # five shards, the last one short


def identity(**changes):
    base = dict(checkpoint_digest="d" * 64, layers=list(SHAPES), split="train", data={"name": "toy", "options": {}},
                dataset={"name": "toy", "rows": ROWS, "split": "train"})
    return make_identity(**{**base, **changes})


def manifest(**changes) -> Manifest:
    ident = identity(**changes)
    return Manifest(key=store_key(ident), identity=ident, model={"name": "toy", "checkpoint": "/x"},
                    layers={k: {"shape": list(v), "dtype": "float32"} for k, v in SHAPES.items()},
                    class_names=["a", "b", "c"], rows=ROWS, shard_rows=SHARD)


def rows(index: np.ndarray) -> dict[str, np.ndarray]:
    """Extractor-shaped output whose values encode the row index, so misplaced rows are visible."""
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    probs = np.full((n, 3), 1 / 3, np.float32)
    return {"index": index, "shard": index // SHARD, "id": np.array([f"row{i}" for i in index]),
            "label": index % 3, "prediction": (index + 1) % 3, "probabilities": probs,
            "conv": (index[:, None, None, None] + np.arange(18).reshape(1, 2, 3, 3) / 100).astype(np.float32),
            "fc": (index[:, None] * np.ones((1, 4))).astype(np.float32)}


def fill(location, m, order, chunk=4, **kwargs):
    asm = ShardAssembler(location, m, **kwargs)
    written = []
    for i in range(0, len(order), chunk):
        written += asm.add(rows(order[i:i + chunk]))
    return written


def snapshot(directory):
    return {p: (os.stat(directory / p).st_mtime_ns, (directory / p).read_bytes()) for p in os.listdir(directory)}


def test_key_is_stable_and_changes_with_every_input():
    assert store_key(identity()) == store_key(identity()) and len(store_key(identity())) == 16
    variants = [identity(checkpoint_digest="e" * 64), identity(layers=["fc", "conv"]), identity(split="val"),
                identity(dataset={"name": "toy", "rows": ROWS + 1, "split": "train"}),
                identity(data={"name": "toy", "options": {"seed": 1}})]
    keys = {store_key(v) for v in variants}
    assert len(keys) == len(variants) and store_key(identity()) not in keys


def test_rows_in_any_order_with_repeats_make_each_shard_once(tmp_path):
    loc = tmp_path / "store"
    m, missing = prepare_store(str(loc), manifest())
    assert missing == [0, 1, 2, 3, 4] and (loc / MANIFEST_FILE).is_file()
    order = np.random.default_rng(0).permutation(ROWS)
    order = np.concatenate([order[:10], order[3:8], order[10:]])  # a retried task sends rows again
    written = fill(str(loc), m, order, chunk=3)
    assert sorted(r["shard"] for r in written) == [0, 1, 2, 3, 4]
    assert sorted(os.listdir(loc)) == [MANIFEST_FILE] + [part_name(i) for i in range(5)]  # no temp files left
    table = pq.read_table(loc / part_name(4))
    assert table.column("index").to_pylist() == [20, 21, 22]
    assert isinstance(table.schema.field("conv").type, pa.FixedShapeTensorType)
    assert table.schema.field("conv").type.shape == [2, 3, 3]
    meta = json.loads(table.schema.metadata[SCHEMA_META_KEY])
    assert meta["key"] == m.key and meta["rows"] == [20, 23] and meta["layers"]["fc"]["shape"] == [4]
    finalize_store(str(loc), m)
    got = ActivationStore.open(str(loc), key=m.key).read()
    want = rows(np.arange(ROWS))
    for k in ("index", "label", "prediction", "conv", "fc", "probabilities"):
        np.testing.assert_array_equal(got[k], want[k])
    np.testing.assert_array_equal(got["id"], want["id"])


def test_batches_cross_parts_with_exact_sizes_and_torch_format(tmp_path):
    import torch

    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, manifest())
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    store = ActivationStore.open(loc)
    sizes = [len(b["index"]) for b in store.iter_batches(7, columns=["index", "conv"])]
    assert sizes == [7, 7, 7, 2]
    assert [len(b["index"]) for b in store.iter_batches(7, columns=["index"], drop_last=True)] == [7, 7, 7]
    batch = next(iter(store.iter_batches(8, columns=["conv", "id"], format="torch")))
    assert isinstance(batch["conv"], torch.Tensor) and batch["conv"].shape == (8, 2, 3, 3)
    assert batch["id"][0] == "row0"
    assert store.layers == SHAPES and len(store) == ROWS
    with pytest.raises(UserError, match="unknown column"):
        list(store.iter_batches(4, columns=["nope"]))


def test_existing_store_of_another_key_is_refused_and_untouched(tmp_path):
    loc = tmp_path / "s"
    m, _ = prepare_store(str(loc), manifest())
    fill(str(loc), m, np.arange(12))
    before = snapshot(loc)
    other = manifest(layers=["fc"])
    with pytest.raises(StoreKeyMismatch, match="choose another output path — nothing was touched"):
        prepare_store(str(loc), other)
    with pytest.raises(StoreKeyMismatch):
        ActivationStore.open(str(loc), key=other.key, require_complete=False)
    assert snapshot(loc) == before


def test_a_directory_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an activation store"):
        prepare_store(str(tmp_path), manifest())
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_rerun_keeps_finished_parts_and_cleans_temps(tmp_path):
    loc = tmp_path / "s"
    m, _ = prepare_store(str(loc), manifest())
    with pytest.raises(InjectedFailure):
        fill(str(loc), m, np.arange(ROWS), fail_after_shards=2)
    (loc / f".{part_name(3)}.tmp-deadbeef").write_bytes(b"half a part")  # left by a kill -9
    before = snapshot(loc)
    m2, missing = prepare_store(str(loc), manifest())
    assert missing == [2, 3, 4] and m2.key == m.key
    assert not any(".tmp-" in p for p in os.listdir(loc))
    fill(str(loc), m2, np.arange(ROWS))  # a rerun sends every row again: finished shards are not rewritten
    finalize_store(str(loc), m2)
    after = snapshot(loc)
    for p in (part_name(0), part_name(1)):
        assert after[p] == before[p]
    got = ActivationStore.open(str(loc)).read(columns=["index", "id"])
    np.testing.assert_array_equal(got["index"], np.arange(ROWS))
    assert len(set(got["id"])) == ROWS


def test_incomplete_store_and_missing_parts_are_not_read(tmp_path):
    loc = tmp_path / "s"
    m, _ = prepare_store(str(loc), manifest())
    fill(str(loc), m, np.arange(10))
    with pytest.raises(UserError, match="incomplete"):
        ActivationStore.open(str(loc))
    with pytest.raises(RuntimeError, match="missing 3 of 5 shards"):
        finalize_store(str(loc), m)


def test_edited_manifest_and_foreign_parts_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ma, _ = prepare_store(str(a), manifest())
    mb, _ = prepare_store(str(b), manifest(split="val"))
    fill(str(a), ma, np.arange(ROWS))
    fill(str(b), mb, np.arange(ROWS))
    finalize_store(str(a), ma)
    # a part of store b copied into store a
    (a / part_name(1)).write_bytes((b / part_name(1)).read_bytes())
    with pytest.raises(StoreKeyMismatch, match="belongs to store"):
        list(ActivationStore.open(str(a)).iter_batches(100))
    with pytest.raises(UserError, match="belongs to store"):
        prepare_store(str(a), manifest())
    # a manifest whose identity was edited no longer hashes to its key
    raw = json.loads((b / MANIFEST_FILE).read_text())
    raw["identity"]["layers"] = ["fc"]
    (b / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(UserError, match="does not match its recorded identity"):
        ActivationStore.open(str(b), require_complete=False)


def test_write_part_never_replaces_a_finished_part(tmp_path):
    m = manifest()
    first = pa.table({"x": [1]})
    assert write_part(_local_fs(), str(tmp_path), 0, first) > 0
    stamp = os.stat(tmp_path / part_name(0)).st_mtime_ns
    assert write_part(_local_fs(), str(tmp_path), 0, pa.table({"x": [2]})) is None
    assert os.stat(tmp_path / part_name(0)).st_mtime_ns == stamp
    assert pq.read_table(tmp_path / part_name(0)).column("x").to_pylist() == [1]
    assert m.shard_range(4) == (20, 23)


def _local_fs():
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


@pytest.mark.ray
def test_to_ray_gives_tensors_for_ray_train(ray_local, tmp_path):
    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, manifest())
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    ds = ActivationStore.open(loc, key=m.key).to_ray(columns=["index", "conv"])
    assert ds.columns() == ["index", "conv"]
    batches = list(ds.iter_torch_batches(batch_size=8))  # what get_dataset_shard(...).iter_torch_batches yields
    index = np.concatenate([b["index"].numpy() for b in batches])
    conv = np.concatenate([b["conv"].numpy() for b in batches])
    assert conv.shape == (ROWS, 2, 3, 3)
    np.testing.assert_array_equal(conv[np.argsort(index)], rows(np.arange(ROWS))["conv"])


@pytest.mark.ray
def test_to_ray_reads_in_bounded_blocks_and_leaves_the_callers_context(ray_local, tmp_path):
    """A store's dataset comes in blocks of about max_block_mib (one big block grew a consumer's private memory by
    its size: BENCHMARKS.md), whatever the caller's DataContext says, which is left as it was."""
    from ray.data import DataContext

    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, manifest())
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    store = ActivationStore.open(loc, key=m.key)
    before = DataContext.get_current().target_max_block_size

    def blocks(**kwargs) -> list[tuple[int, int]]:
        ds = store.to_ray(columns=["index", "conv"], **kwargs)
        return [(meta.num_rows, meta.size_bytes) for b in ds.iter_internal_ref_bundles() for meta in b.metadata]

    small = blocks(max_block_mib=1 / 1024)   # 1 KiB: the 23 rows' 2 KiB of conv and index in several blocks
    assert len(small) > 1 and sum(n for n, _ in small) == ROWS
    assert max(size for _, size in small) <= 2 * 1024, small
    assert sum(n for n, _ in blocks(max_block_mib=64)) == ROWS
    assert store.to_ray(max_block_mib=1 / 1024).context.target_max_block_size == 1024  # what its executions obey
    assert DataContext.get_current().target_max_block_size == before
    # read by the V1 Parquet datasource, whose passes start at once (V2's start-up grew with the parts), whatever
    # the caller's default
    v2_before = DataContext.get_current().use_datasource_v2
    ds = store.to_ray(columns=["index"])
    assert sorted(ds.to_pandas()["index"]) == list(range(ROWS))
    assert "ReadParquet" in ds.stats() and "ReadFiles" not in ds.stats(), ds.stats()
    assert DataContext.get_current().use_datasource_v2 == v2_before


# --- kept dtypes, parts sized in bytes ---------------------------------------------------------------------------

def kept_manifest(dtypes: dict[str, str], **changes) -> Manifest:
    storage = {k: {"dtype": v} for k, v in dtypes.items()}
    ident = identity(storage=storage, **changes)
    return Manifest(key=store_key(ident), identity=ident, model={"name": "toy", "checkpoint": "/x"},
                    layers={k: {"shape": list(v), "dtype": dtypes.get(k, "float32")} for k, v in SHAPES.items()},
                    class_names=["a", "b", "c"], rows=ROWS, shard_rows=SHARD)


def test_bfloat16_bits_round_as_torch_does_and_widen_exactly():
    import torch

    from interp_ray.store import bfloat16_bits, bfloat16_to_float32

    rng = np.random.default_rng(0)
    anything = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # every exponent
    x = np.concatenate([anything[~np.isnan(anything)],
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1e-40],
                                 dtype=np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16)
    bits = bfloat16_bits(x)
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(bits, want.view(torch.int16).numpy().view(np.uint16))  # ties to even included
    np.testing.assert_array_equal(bfloat16_to_float32(bits), want.float().numpy())
    assert np.isnan(bfloat16_to_float32(bfloat16_bits(np.array([np.nan], np.float32)))).all()


def leaf_encodings(path, column: str) -> list[str]:
    """The Parquet encodings of a tensor column's values in a part's first row group."""
    meta = pq.ParquetFile(path).metadata
    leaf = [i for i in range(meta.num_columns) if meta.schema.column(i).path == f"{column}.list.element"]
    return list(meta.row_group(0).column(leaf[0]).encodings)


def test_bfloat16_relu_maps_are_dictionary_encoded_and_smaller(tmp_path):
    """A part of bfloat16 ReLU maps (many zeros, few distinct 16-bit patterns) written by write_part is smaller than
    the same table without a dictionary on its values; a float32 layer gets no dictionary."""
    from interp_ray.store import bfloat16_bits
    from interp_ray.store.arrow import layer_array, tag_layer_fields

    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(32, 64, 7, 7)), 0).astype(np.float32)
    table = tag_layer_fields(pa.table({"index": np.arange(32), "label": np.arange(32) % 3,
                                       "bf": layer_array("bf", bfloat16_bits(maps), "bfloat16"),
                                       "f32": layer_array("f32", maps, "float32")}),
                             {"bf": "bfloat16", "f32": "float32"})
    size = write_part(_local_fs(), str(tmp_path), 0, table)
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, compression="zstd", use_dictionary=["label"])
    assert "RLE_DICTIONARY" in leaf_encodings(tmp_path / part_name(0), "bf")
    assert "RLE_DICTIONARY" not in leaf_encodings(tmp_path / part_name(0), "f32")
    assert size < os.path.getsize(plain) - 0.05 * 32 * 64 * 49 * 2  # ≥ 5% of the bfloat16 values' raw bytes saved


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_layers_round_trip_and_widen_for_training(tmp_path, dtype):
    """A 16-bit layer is stored as 16 bits (Parquet: float16, or bfloat16's bits as uint16 with the logical dtype in
    the manifest and the field's metadata) and comes back as written; readers widen it to float32 unless asked."""
    import torch

    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, kept_manifest({"conv": dtype}))
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    conv32 = rows(np.arange(ROWS))["conv"]
    want = torch.from_numpy(conv32).to(getattr(torch, dtype))  # what the cast keeps
    table = pq.read_table(os.path.join(loc, part_name(0)))
    field_ = table.schema.field("conv")
    assert field_.type.value_type == (pa.float16() if dtype == "float16" else pa.uint16())
    assert field_.metadata[b"interp_ray.dtype"] == dtype.encode()
    # bfloat16 values are dictionary-encoded (few distinct 16-bit patterns), float16 values are not (nearly all
    # distinct: a dictionary would overflow and cost CPU): writer.dictionary_columns.
    assert leaf_encodings(os.path.join(loc, part_name(0)), "conv").count("RLE_DICTIONARY") == (dtype == "bfloat16")
    assert json.loads(table.schema.metadata[SCHEMA_META_KEY])["layers"]["conv"]["dtype"] == dtype
    store = ActivationStore.open(loc, key=m.key)
    got = store.read()  # float32 by default, exactly the 16-bit values
    assert got["conv"].dtype == np.float32 and got["fc"].dtype == np.float32
    np.testing.assert_array_equal(got["conv"], want.float().numpy())
    np.testing.assert_array_equal(got["fc"], rows(np.arange(ROWS))["fc"])
    stored = store.read(dtype="stored", format="torch")
    assert stored["conv"].dtype == getattr(torch, dtype) and stored["conv"].shape == (ROWS, 2, 3, 3)
    assert torch.equal(stored["conv"], want)
    raw = store.read(dtype="stored")["conv"]
    assert raw.dtype == (np.float16 if dtype == "float16" else np.uint16)  # numpy has no bfloat16: its bits
    batches = list(store.iter_batches(7, columns=["conv"], format="torch"))
    assert [b["conv"].dtype for b in batches] == [torch.float32] * 4
    with pytest.raises(UserError, match="dtype must be"):
        list(store.iter_batches(4, dtype="float64"))


def test_key_changes_with_each_storage_option_and_not_for_whole_float32():
    """The key covers how each layer is kept; a layer kept whole in float32 (the default) leaves the key as it was
    before storage options existed, so existing stores keep theirs."""
    from interp_ray.store import storage_identity

    plain = store_key(identity())
    assert store_key(identity(storage={"conv": {}, "fc": {"dtype": "float32"}})) == plain
    variants = [{"conv": {"dtype": "float16"}}, {"conv": {"dtype": "bfloat16"}}, {"fc": {"dtype": "bfloat16"}},
                {"conv": {"reduce": "mean"}}, {"conv": {"reduce": "max"}},
                {"conv": {"reduce": "avgpool", "pool_size": 1}}, {"conv": {"reduce": "avgpool", "pool_size": 2}},
                {"conv": {"channels": [0]}}, {"conv": {"channels": [1]}}, {"conv": {"channels": [1, 0]}},
                {"conv": {"channels": [0], "reduce": "mean", "dtype": "float16"}}]
    keys = [store_key(identity(storage=v)) for v in variants]
    assert len(set(keys)) == len(variants) and plain not in keys
    assert storage_identity({"conv": {"reduce": "mean"}})["conv"] == {
        "dtype": "float32", "reduce": "mean", "pool_size": None, "channels": None}


def test_rows_per_part_follow_the_byte_target():
    from interp_ray.store import rows_per_part

    mib = 2**20
    assert rows_per_part(200_704 * 4, 128 * mib) == 167       # ResNet-50 layer3 at 224 px, float32: 784 KiB a row
    assert rows_per_part(200_704 * 2, 128 * mib) == 334       # … in bfloat16
    assert rows_per_part(600, 128 * mib) == 2048              # small rows: the row cap (shard_rows) still holds
    assert rows_per_part(600, 128 * mib, shard_rows=10**9) == 128 * mib // 600
    assert rows_per_part(5 * mib, mib) == 1                   # a row over the target: one row a part
    m = kept_manifest({"conv": "bfloat16"})
    assert m.row_bytes() == 32 + 64 + 3 * 4 + 18 * 2 + 4 * 4


def test_a_store_keeps_its_compression_when_resumed_with_another(tmp_path):
    loc = tmp_path / "s"
    m = kept_manifest({})
    m.compression = "zstd"
    m, _ = prepare_store(str(loc), m)
    with pytest.raises(InjectedFailure):
        fill(str(loc), m, np.arange(ROWS), compression="snappy", fail_after_shards=2)
    again = kept_manifest({})
    again.compression = "snappy"
    m2, missing = prepare_store(str(loc), again)
    assert m2.compression == "zstd" and missing == [2, 3, 4]
    fill(str(loc), m2, np.arange(ROWS), compression="snappy")
    codecs = {pq.ParquetFile(loc / part_name(s)).metadata.row_group(0).column(5).compression for s in range(5)}
    assert codecs == {"ZSTD"}


@pytest.mark.ray
def test_to_ray_widens_16_bit_layers_for_training_unless_asked(ray_local, tmp_path):
    """Ray Data reads float16 and bfloat16 (uint16 bits) tensor columns; to_ray gives float32 by default — what a Ray
    Train worker's iter_torch_batches then sees — and the kept dtype with dtype="stored"."""
    import torch

    from interp_ray.store import bfloat16_to_float32

    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, kept_manifest({"conv": "bfloat16", "fc": "float16"}))
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    store = ActivationStore.open(loc, key=m.key)
    want = store.read(dtype="stored")
    batches = list(store.to_ray(columns=["index", "conv", "fc"]).iter_torch_batches(batch_size=8))
    index = np.concatenate([b["index"].numpy() for b in batches])
    order = np.argsort(index)
    conv = np.concatenate([b["conv"].numpy() for b in batches])[order]
    fc = np.concatenate([b["fc"].numpy() for b in batches])[order]
    assert batches[0]["conv"].dtype == torch.float32 and batches[0]["fc"].dtype == torch.float32
    assert conv.shape == (ROWS, 2, 3, 3) and fc.shape == (ROWS, 4)
    np.testing.assert_array_equal(conv, bfloat16_to_float32(want["conv"]))
    np.testing.assert_array_equal(fc, want["fc"].astype(np.float32))
    stored = store.to_ray(columns=["index", "conv", "fc"], dtype="stored").to_pandas().sort_values("index")
    assert np.stack(stored["conv"].to_numpy()).dtype == np.uint16
    np.testing.assert_array_equal(np.stack(stored["fc"].to_numpy()), want["fc"])
