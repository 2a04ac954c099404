"""Extract a classifier's activations over a dataset into a resumable, content-keyed Parquet store (Ray Data).

    python -m jobs.extract_activations --config configs/extract_digits.yaml [--set compute.actors=2]

Pipeline (streaming; nothing is materialised whole):

    missing (split, shard) ─► map_batches(PlanLoader)           tasks: dataset.get_batch over each shard's rows
                           ─► map_batches(ActivationExtractor)  actor pool: ActorPoolStrategy(size=actors), num_gpus
                           ─► map_batches(RoutedWriter)         one actor: assembles each split's shards, writes
                                                                each part atomically
                           ─► driver: one small record per finished shard (progress log)

One pipeline fills every split's store: the same classifier and layers serve them all, and each pipeline costs
seconds of actor start-up (torch import, checkpoint load). Rows carry a ``store`` column that routes them to their
split's store.

The store lives at ``<store.root>/<model name>/<key>/`` (or ``store.path``); see ``interp_ray.store`` and
docs/activation_store.md. A rerun computes only the shards whose parts are missing; a finished store costs no Ray
start-up at all. ``compute.engine: local`` runs the same loader, extractor and writer in this process, without Ray.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from interp_ray.activations import DEFAULT_PASSTHROUGH, ActivationExtractor
from interp_ray.config import ComputeSection, DataConfig, Section, StoreSection, load_config
from interp_ray.data import load_dataset
from interp_ray.data.base import ImageDataset, read_rows
from interp_ray.data.select import align_classes
from interp_ray.errors import UserError
from interp_ray.progress import Progress as Bar
from interp_ray.store import (UNREADABLE, Manifest, ShardAssembler, check_store, drill, extra_spec, finalize_store,
                              make_identity, pack_strings, prepare_store, rows_per_part, storage_identity, store_key,
                              store_location)
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray

log = logging.getLogger("interp_ray.extract")


# --- config ------------------------------------------------------------------------------------------------------

class ExtractJobConfig(Section):
    checkpoint: str                        # a classifier checkpoint directory (local or URI)
    layers: list[str] | None = None        # module paths or patterns; None: the model's default layers
    # dataset columns copied into the store beside the activations (e.g. sentences, attributes: ground truth a
    # learned explainer trains on, read from the same rows instead of regenerating the dataset)
    keep: list[str] = Field(default_factory=list)
    data: DataConfig = Field(default_factory=DataConfig)
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    store: StoreSection = Field(default_factory=StoreSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    # off a terminal, a progress line every N written parts (besides one every 10 s): interp_ray.progress
    progress_every: int = Field(10, gt=0)
    # Drill: after writing this many parts the writer raises, or hangs until killed (tests of resumability).
    fail_after_shards: int | None = Field(None, gt=0)
    fail_mode: Literal["raise", "hang"] = "raise"

    @model_validator(mode="after")
    def _one_split_per_path(self) -> "ExtractJobConfig":
        if self.store.path and len(self.splits) != 1:
            raise ValueError("store.path names one store, so splits must hold exactly one split")
        return self


# --- planning ----------------------------------------------------------------------------------------------------

@dataclass
class ExtractPlan:
    split: str
    dataset: ImageDataset
    checkpoint: str        # absolute for local paths: Ray workers do not share the driver's working directory
    digest: str
    layers: list[str]
    location: str
    manifest: Manifest
    storage: dict[str, dict[str, Any]]  # layer → LayerStore dict: how the extractor keeps it (plain, for Ray)


def absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def make_plan(cfg: ExtractJobConfig, split: str) -> ExtractPlan:
    """Everything about one split's store, checked before any work: layers exist, images fit the model."""
    dataset = load_dataset(cfg.data.name, split, **cfg.data.options)
    checkpoint = absolute(cfg.checkpoint)
    extractor = ActivationExtractor(checkpoint, cfg.layers, device="cpu")
    dataset = align_classes(dataset, extractor.class_names, what=f"{cfg.data.name}/{split}")
    model_shape = tuple(extractor.model.input_shape)
    image_shape = tuple(dataset.image_shape)
    # A clip dataset's rows are T frames of the model's input: one store row per clip (interp_ray.activations).
    frames = image_shape[0] if len(image_shape) == len(model_shape) + 1 else None
    if image_shape[-len(model_shape):] != model_shape or len(image_shape) > len(model_shape) + 1:
        raise UserError(f"{cfg.data.name}/{split} images are {'×'.join(map(str, dataset.image_shape))} but "
                        f"checkpoint {cfg.checkpoint} takes {'×'.join(map(str, model_shape))}")
    kept = kept_columns(dataset, cfg.keep, what=f"{cfg.data.name}/{split}")
    storage = cfg.store.layer_specs(extractor.layers)
    source = extractor.layer_shapes(frames)  # the layers' own shapes, before keep_as
    extractor.keep_as(storage)  # a channel out of range or a reduction of a flat layer fails here, before any work
    identity = make_identity(checkpoint_digest=extractor.digest, layers=extractor.layers,
                             dataset=dataset.describe(), split=split, data=cfg.data.model_dump(), keep=cfg.keep,
                             storage=storage)
    key = store_key(identity)
    location = absolute(cfg.store.path) if cfg.store.path else store_location(absolute(cfg.store.root),
                                                                            extractor.model_name, key)
    kept_as = storage_identity(storage)
    layers = {}
    for name, shape in extractor.layer_shapes(frames).items():
        layers[name] = {"shape": list(shape), "dtype": storage[name].dtype}
        if name in kept_as:  # how it was kept, beside what it is now
            layers[name].update(source_shape=list(source[name]), reduce=storage[name].reduce,
                                pool_size=storage[name].pool_size, channels=storage[name].channels)
    manifest = Manifest(
        key=key, identity=identity, model={"name": extractor.model_name, "checkpoint": checkpoint}, layers=layers,
        class_names=extractor.class_names, rows=len(dataset), shard_rows=cfg.store.shard_rows, kept=kept,
        part_bytes=cfg.store.part_bytes, compression=cfg.store.compression)
    # parts sized in bytes: as many rows as fit in part_bytes, as the writer will buffer them (at most shard_rows)
    manifest.shard_rows = rows_per_part(manifest.row_bytes(), cfg.store.part_bytes, cfg.store.shard_rows)
    return ExtractPlan(split, dataset, checkpoint, extractor.digest, extractor.layers, location, manifest,
                       {name: spec.model_dump() for name, spec in storage.items()})


def kept_columns(dataset: ImageDataset, keep: Sequence[str], *, what: str) -> dict[str, dict[str, Any]]:
    """The manifest entries of the ``keep`` columns, from the dataset's first row (every row has the same shape)."""
    if not keep:
        return {}
    clash = sorted(set(keep) & {"index", "shard", "id", "label", "prediction", "probabilities", "image"})
    if clash:
        raise UserError(f"keep: {', '.join(clash)} is one of the store's own columns")
    if len(dataset) == 0:
        raise UserError(f"{what} is empty: nothing to keep")
    row = dataset.get_batch(np.arange(1))
    missing = [c for c in keep if c not in row]
    if missing:
        raise UserError(f"keep: {what} has no column {', '.join(missing)}; it has {', '.join(sorted(row))}")
    return {c: extra_spec(row[c]) for c in keep}


# --- the stages --------------------------------------------------------------------------------------------------

class ShardLoader:
    """Shard ids → the shard's rows (``index``, ``shard``, ``id``, ``image``, ``label``, ``unreadable``),
    ``chunk_rows`` at a time: the loading stage, where images are read, decoded and resized (in parallel tasks, never
    in the model's actors). Images travel as the dataset's pixels (``get_pixel_batch``): uint8 for anything decoded
    from files, a quarter of float32's bytes through the object store; the model's actor scales them
    (``image_tensor``) to the same floats ``get_batch`` gives.

    Handed to Ray Data as an instance (not a class), so it runs as tasks; Ray Data puts it (and the dataset it holds)
    in the object store once per operator, not once per task.
    Only the columns extraction needs are kept: extras such as masks or sentences would only cost transfer.
    A row whose input cannot be read (``read_rows``) travels on as a placeholder (zero image, label 0) with its reason
    in ``unreadable``, so the writer accounts for it (``interp_ray.store.UNREADABLE``); every other row is kept.
    """

    def __init__(self, dataset: ImageDataset, manifest: Manifest, chunk_rows: int):
        self.dataset, self.manifest, self.chunk_rows = dataset, manifest, chunk_rows
        self.keep = list(manifest.kept)

    def shard_batches(self, shard: int) -> Iterator[dict[str, np.ndarray]]:
        lo, hi = self.manifest.shard_range(shard)
        for a in range(lo, hi, self.chunk_rows):
            idx = np.arange(a, min(a + self.chunk_rows, hi), dtype=np.int64)
            good, rows, bad = read_rows(self.dataset, idx, pixels=True)
            if bad:
                rows = self.with_placeholders(len(idx), good, rows, bad)
            if rows["image"].dtype != self.dataset.pixel_dtype:  # Ray Data cannot join blocks of two dtypes
                raise TypeError(f"{type(self.dataset).__name__}.get_pixel_batch gave {rows['image'].dtype} images; "
                                f"its pixel_dtype says {self.dataset.pixel_dtype}")
            yield {"index": idx, "shard": np.full(len(idx), shard, dtype=np.int64), "id": np.asarray(rows["id"]),
                   "image": rows["image"], "label": np.asarray(rows["label"], dtype=np.int64),
                   **{c: pack_strings(rows[c]) for c in self.keep},
                   UNREADABLE: np.array([bad.get(i, "") for i in range(len(idx))], dtype=object)}

    def with_placeholders(self, n: int, good: np.ndarray, rows: dict[str, np.ndarray], bad: dict[int, str]
                          ) -> dict[str, np.ndarray]:
        """``n`` rows: those read at ``good``, the rest placeholders of the same shapes (never stored)."""
        out = {"id": np.full(n, "", dtype=object),
               "image": np.zeros((n, *self.dataset.image_shape), self.dataset.pixel_dtype),
               "label": np.zeros(n, dtype=np.int64)}
        for c in self.keep:
            spec = self.manifest.kept[c]
            out[c] = (np.full((n, *spec["shape"]), "", dtype=object) if spec["dtype"] == "string"
                      else np.zeros((n, *spec["shape"]), dtype=np.int64))
        for key, arr in out.items():
            if len(good):
                arr[good] = rows[key]
        out["id"] = out["id"].astype(str)
        for c in self.keep:
            out[c] = out[c].astype(str) if out[c].dtype == object else out[c]
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for shard in np.asarray(batch["shard"]).tolist():
            yield from self.shard_batches(int(shard))


STORE = "store"  # the column that routes a row to its store: the position of its plan in the job


class PlanLoader:
    """Items ``{"store", "shard"}`` → that store's shard rows (``ShardLoader``), tagged with ``store``."""

    def __init__(self, sources: list[tuple[ImageDataset, Manifest]], chunk_rows: int):
        self.loaders = [ShardLoader(ds, manifest, chunk_rows) for ds, manifest in sources]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for sid, shard in zip(np.asarray(batch[STORE]).tolist(), np.asarray(batch["shard"]).tolist()):
            for rows in self.loaders[sid].shard_batches(int(shard)):
                rows[STORE] = np.full(len(rows["index"]), sid, dtype=np.int64)
                yield rows


class RoutedWriter:
    """The writer stage: one actor, one ``ShardAssembler`` per store. Emits, per store in the batch, a record for
    the rows received (``shard`` = -1, so the driver sees progress while every shard is still open) and one per part
    written. ``fail_after_shards``: the drill, counted over all stores. ``manifest_type`` rebuilds the manifests
    (activations' ``Manifest`` or a subclass, e.g. the saliency stores')."""

    def __init__(self, stores: list[tuple[str, dict[str, Any]]], compression: str, fail_after_shards: int | None,
                 fail_mode: str = "raise", manifest_type: type[Manifest] = Manifest):
        self.assemblers = [ShardAssembler(loc, manifest_type(**m), compression=compression) for loc, m in stores]
        self.fail_after_shards, self.fail_mode, self.written = fail_after_shards, fail_mode, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sids = np.asarray(batch[STORE], dtype=np.int64)
        records = []
        for sid in np.unique(sids).tolist():
            assembler = self.assemblers[sid]
            keep = set(assembler.manifest.column_names()) | {"index", "shard", UNREADABLE}
            sel = sids == sid
            rows = {k: np.asarray(v)[sel] for k, v in batch.items() if k in keep}
            records.append({STORE: sid, "shard": RECEIVED, "rows": int(sel.sum()), "bytes": 0, "skipped": False})
            for record in assembler.add(rows):
                records.append({STORE: sid, **record})
                self.written += 1
                drill(self.written, self.fail_after_shards, self.fail_mode)
        return {k: np.array([r[k] for r in records]) for k in (STORE, "shard", "rows", "bytes", "skipped")}


RECEIVED = -1  # the shard id of a "rows received" record


# --- progress ----------------------------------------------------------------------------------------------------

class StoreProgress:
    """Counts one store's rows extracted and parts written, from the writer's records (``RoutedWriter``), and shows
    them as the store's progress bar (``interp_ray.progress``: a bar on a terminal, a line every 10 s and every
    ``every`` parts off one, nothing with ``--quiet``); logs one summary line when the last part is written.

    ``steady_rate`` is rows/s from the first extracted batch on: the pipeline's throughput without its start-up
    (actor creation, torch import, checkpoint load), which ``rate`` includes.
    """

    def __init__(self, split: str, total_shards: int, total_rows: int, every: int, start: float | None = None,
                 unit: str = "parts"):
        self.split, self.total_shards, self.total_rows, self.every = split, total_shards, total_rows, every
        self.unit = unit
        self.shards = self.rows = self.bytes = self.extracted = 0
        self.start = time.perf_counter() if start is None else start  # one pipeline's stores share its start
        self.first_at: float | None = None  # when the first extracted rows arrived
        self.last_at: float | None = None
        self.done_at: float | None = None   # when the last part was written
        self.first_rows = 0
        self.bar: Bar | None = None

    def open_bar(self) -> None:
        if self.bar is None and self.total_shards:
            self.bar = Bar(f"{self.split} rows", self.total_rows, "rows")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, record: dict[str, Any]) -> None:
        if int(record["shard"]) == RECEIVED:
            self.rows_extracted(int(record["rows"]))
            self.show()
            return
        self.shards += 1
        self.rows += int(record["rows"])
        self.done_at = time.perf_counter()
        self.bytes += int(record["bytes"])
        self.show(force=self.shards % self.every == 0)
        if self.shards == self.total_shards:
            self.close()
            log.info("%s", self.line())

    def show(self, force: bool = False) -> None:
        if self.bar is not None:
            self.bar.update_to(self.extracted, note=f"{self.shards}/{self.total_shards} {self.unit} written, "
                                                    f"{self.bytes / 2**20:.0f} MiB", force=force)

    def rows_extracted(self, n: int) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at, self.first_rows = now, n
        self.last_at = now
        self.extracted += n

    @property
    def startup_s(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.start

    @property
    def seconds(self) -> float:
        """From the start to this store's last part (to now while parts are still to come)."""
        end = self.done_at if self.done_at is not None and self.shards == self.total_shards else time.perf_counter()
        return end - self.start

    @property
    def rate(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    @property
    def steady_rate(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.extracted - self.first_rows) / (self.last_at - self.first_at)

    def line(self) -> str:
        steady = self.steady_rate or self.rate
        return (f"{self.split}: {self.shards}/{self.total_shards} {self.unit} written, {self.rows}/{self.total_rows} "
                f"rows ({self.extracted} extracted) in {self.seconds:.0f} s, {steady:.0f} rows/s, "
                f"{self.bytes / 2**20:.0f} MiB")


# --- running -----------------------------------------------------------------------------------------------------

Item = dict[str, int]  # {"store": plan position, "shard": shard id}: one unit of the pipeline's input


def loader_of(cfg: ExtractJobConfig, plans: list[ExtractPlan]) -> PlanLoader:
    return PlanLoader([(p.dataset, p.manifest) for p in plans], cfg.compute.batch_size)


def extractor_kwargs(cfg: ExtractJobConfig, plans: list[ExtractPlan]) -> dict[str, Any]:
    # every plan of a job has the job's checkpoint and layers; the kept columns are the job's ``keep``
    c, plan = cfg.compute, plans[0]
    return {"checkpoint": plan.checkpoint, "layers": plan.layers, "device": c.device, "torch_threads": c.torch_threads,
            "expect_digest": plan.digest,
            "passthrough": [*DEFAULT_PASSTHROUGH, STORE, UNREADABLE, *plan.manifest.kept], "storage": plan.storage,
            "autocast": c.autocast}


def writer_kwargs(cfg: ExtractJobConfig, plans: list[ExtractPlan]) -> dict[str, Any]:
    return {"stores": [(p.location, asdict(p.manifest)) for p in plans], "compression": cfg.store.compression,
            "fail_after_shards": cfg.fail_after_shards, "fail_mode": cfg.fail_mode}


def as_records(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    return ({k: v[i] for k, v in batch.items()} for i in range(len(batch[STORE])))


def run_local(cfg: ExtractJobConfig, plans: list[ExtractPlan], items: list[Item]) -> Iterator[dict[str, Any]]:
    """The same stages in this process, in order: no Ray (small jobs, tests, the benchmark's comparison)."""
    kwargs = extractor_kwargs(cfg, plans)
    extractor = ActivationExtractor(kwargs.pop("checkpoint"), kwargs.pop("layers"), **kwargs)
    loader, writer = loader_of(cfg, plans), RoutedWriter(**writer_kwargs(cfg, plans))
    for item in items:
        for rows in loader({STORE: np.array([item[STORE]]), "shard": np.array([item["shard"]])}):
            yield from as_records(writer(extractor(rows)))


def gpus_per_actor(cfg: ExtractJobConfig) -> float:
    if cfg.compute.num_gpus != "auto":
        return float(cfg.compute.num_gpus)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_resources(cfg: ExtractJobConfig, num_gpus: float) -> None:
    """A pipeline that asks for more than the cluster has waits forever (Ray Data keeps the actors pending): fail at
    once instead, unless the cluster may grow (``compute.wait_for_resources``)."""
    import ray

    if cfg.compute.wait_for_resources:
        return
    c = cfg.compute
    have = ray.cluster_resources()
    need = {"CPU": c.actors * c.num_cpus + c.write_num_cpus + c.load_num_cpus, "GPU": c.actors * num_gpus}
    for name, amount in need.items():
        if amount > have.get(name, 0) + 1e-9:
            raise UserError(f"the pipeline needs {amount:g} {name} ({c.actors} extractor actor(s) × "
                            f"{c.num_cpus if name == 'CPU' else num_gpus:g}, plus loader and writer) but the cluster "
                            f"has {have.get(name, 0):g}; lower compute.actors / compute.num_{name.lower()}s, or set "
                            f"compute.wait_for_resources=true on an autoscaling cluster")


def routed_pipeline(compute: ComputeSection, items: list[Item], loader: PlanLoader, mapper: type,
                    mapper_kwargs: dict[str, Any], writer_kwargs: dict[str, Any], num_gpus: float):
    """The lazy Ray Data pipeline of both store jobs (activations here, explanations in ``jobs.explain_dataset``):
    loader tasks → an actor pool of ``mapper`` → one ``RoutedWriter`` actor. Its output rows are the writer's
    records of rows received and parts written."""
    import ray.data

    c = compute
    shards = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    rows = shards.map_batches(loader, batch_size=1, batch_format="numpy", num_cpus=c.load_num_cpus)
    mapped = rows.map_batches(mapper, batch_size=c.batch_size, batch_format="numpy",
                              fn_constructor_kwargs=mapper_kwargs, compute=ray.data.ActorPoolStrategy(size=c.actors),
                              num_cpus=c.num_cpus, num_gpus=num_gpus)
    # One writer: a shard's rows may arrive from any actor of the pool, and only one place may assemble them.
    return mapped.map_batches(RoutedWriter, batch_size=None, batch_format="numpy", fn_constructor_kwargs=writer_kwargs,
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=c.write_num_cpus)


def pipeline_records(build: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """The rows of the pipeline ``build`` makes; a ``UserError`` raised inside a Ray task comes out as itself (Ray
    hands it over as text in a RayTaskError)."""
    try:
        yield from build().iter_rows()
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is not None:
            raise user_error from None
        raise


def run_ray(cfg: ExtractJobConfig, plans: list[ExtractPlan], items: list[Item]) -> Iterator[dict[str, Any]]:
    return pipeline_records(lambda: routed_pipeline(cfg.compute, items, loader_of(cfg, plans), ActivationExtractor,
                                                    extractor_kwargs(cfg, plans), writer_kwargs(cfg, plans),
                                                    gpus_per_actor(cfg)))


_ERROR_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([A-Za-z_][\w.]*\.[A-Za-z_]\w*): (.+)$", re.MULTILINE)


def user_error_in(exc: BaseException) -> UserError | None:
    """The ``UserError`` behind ``exc``: found in its cause chain, or — since Ray Data re-raises a task's error as a
    ``UserCodeException`` holding only the formatted traceback — parsed from the text as ``module.Class: message``
    where that class is a ``UserError``."""
    seen = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, UserError):
            return UserError(str(node))
        node = node.__cause__ or node.__context__
    for qualname, message in reversed(_ERROR_LINE.findall(str(exc))):
        module, _, name = qualname.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            continue
        if isinstance(cls, type) and issubclass(cls, UserError):
            return UserError(message.strip())
    return None


def run_routed(prepared: list[tuple[Any, list[int]]], labels: list[str], *, engine: str, every: int,
               records: Callable[[list[Item]], Iterable[dict[str, Any]]], address: str | None,
               unit: str = "parts") -> list[StoreProgress]:
    """Both store jobs' run: every prepared store's missing shards as the items of one routed pipeline
    (``records``), and each store's progress from the records it sends back."""
    items = [{STORE: sid, "shard": s} for sid, (_, missing) in enumerate(prepared) for s in missing]
    start, progress = time.perf_counter(), []
    for (plan, missing), label in zip(prepared, labels):
        rows = sum(hi - lo for lo, hi in map(plan.manifest.shard_range, missing))
        progress.append(StoreProgress(label, len(missing), rows, every, start=start, unit=unit))
        if missing:
            log.info("%s: %d of %d %s to compute (%d rows) → %s", label, len(missing), plan.manifest.num_shards,
                     unit, rows, plan.location)
    if items:
        if engine == "ray":
            init_ray(address)
        for p in progress:   # after Ray's start-up: the rate is the pipeline's
            p.open_bar()
        try:
            for record in records(items):
                progress[int(record[STORE])].update(record)
        finally:
            for p in progress:
                p.close()
    return progress


def fill_stores(cfg: ExtractJobConfig, prepared: list[tuple[ExtractPlan, list[int]]], *,
                address: str | None = None) -> list[dict[str, Any]]:
    """Compute every split's missing shards in one pipeline, then mark each split's store complete."""
    plans = [plan for plan, _ in prepared]
    run = run_local if cfg.compute.engine == "local" else run_ray
    progress = run_routed(prepared, [p.split for p in plans], engine=cfg.compute.engine, every=cfg.progress_every,
                          records=lambda items: run(cfg, plans, items), address=address)
    out = []
    for (plan, missing), prog in zip(prepared, progress):
        manifest = finalize_store(plan.location, plan.manifest)
        report_skipped(plan.split, manifest)
        out.append({"split": plan.split, "location": plan.location, "key": manifest.key, "rows": manifest.rows,
                    "skipped": len(manifest.skipped),
                    "shards": manifest.num_shards, "computed_shards": prog.shards, "computed_rows": prog.rows,
                    "rows_per_s": prog.rate if missing else 0.0, "steady_rows_per_s": prog.steady_rate,
                    "startup_s": prog.startup_s, "seconds": prog.seconds, "first_at": prog.first_at,
                    "last_at": prog.last_at, "first_rows": prog.first_rows,
                    "steady_rows": prog.extracted - prog.first_rows})
    return out


def report_skipped(label: str, manifest: Manifest) -> None:
    """One line per row left out of a store because its input could not be read (the reason names the file), and
    their count: at every run, resumed or not, since the manifest keeps them."""
    for row in manifest.skipped:
        log.warning("%s: skipped row %d: %s", label, row["index"], row["reason"])
    if manifest.skipped:
        log.warning("%s: %d of %d rows skipped as unreadable; the store holds the other %d", label,
                    len(manifest.skipped), manifest.rows, manifest.rows - len(manifest.skipped))


def pipeline_group(cfg: ExtractJobConfig, plan: ExtractPlan) -> str:
    """What the stores one pipeline fills share: the classifier, its layers, the kept columns, how the stages run."""
    return json.dumps([plan.checkpoint, plan.layers, plan.storage, cfg.keep, cfg.compute.model_dump(),
                       cfg.store.compression, cfg.fail_after_shards, cfg.fail_mode, cfg.progress_every],
                      sort_keys=True, default=str)


def extract_many(cfgs: Sequence[ExtractJobConfig], *, address: str | None = None) -> list[dict[str, Any]]:
    """Several extraction jobs (a training job's splits, each with its own row count, say): every store planned
    first, so a bad layer, dataset or output path fails before anything is written; then as few pipelines as they
    allow, one per group of stores with the same classifier, layers, kept columns and compute settings. A store
    asked for twice is filled once. One result per (job, split), in order."""
    per_job = [[make_plan(cfg, split) for split in cfg.splits] for cfg in cfgs]
    for location in dict.fromkeys(plans[0].location for plans in per_job):  # each job's first, as a job alone
        check_storage_paths(store=location)
    planned = [(cfg, plan) for cfg, plans in zip(cfgs, per_job) for plan in plans]
    unique: dict[str, tuple[ExtractJobConfig, ExtractPlan]] = {}
    for cfg, plan in planned:
        unique.setdefault(plan.location, (cfg, plan))
    to_do = [cfg for cfg, plan in unique.values()
             if not ((m := check_store(plan.location, plan.manifest)) is not None and m.complete)]
    if any(cfg.compute.engine == "ray" for cfg in to_do):
        init_ray(address)
        for cfg in {id(c): c for c in to_do if c.compute.engine == "ray"}.values():
            check_resources(cfg, gpus_per_actor(cfg))
    groups: dict[str, list[tuple[ExtractJobConfig, ExtractPlan, list[int]]]] = {}
    for cfg, plan in unique.values():
        plan.manifest, missing = prepare_store(plan.location, plan.manifest)
        groups.setdefault(pipeline_group(cfg, plan), []).append((cfg, plan, missing))
    results: dict[str, dict[str, Any]] = {}
    for members in groups.values():
        outs = fill_stores(members[0][0], [(plan, missing) for _, plan, missing in members], address=address)
        results.update({plan.location: out for (_, plan, _), out in zip(members, outs)})
    return [results[plan.location] for _, plan in planned]


def extract(cfg: ExtractJobConfig, *, address: str | None = None) -> list[dict[str, Any]]:
    """One job's splits, in one pipeline (``extract_many``): one result per split."""
    return extract_many([cfg], address=address)


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(ExtractJobConfig, args.config, args.overrides)
    for out in extract(cfg, address=args.address):
        done = "already complete" if out["computed_shards"] == 0 else (
            f"{out['computed_shards']} shard(s) computed at {out['rows_per_s']:.0f} rows/s")
        skipped = f" ({out['skipped']} skipped as unreadable)" if out["skipped"] else ""
        print(f"{out['split']}: {out['rows']} rows{skipped} in {out['shards']} shard(s), {done}; "
              f"store {out['location']} (key {out['key']})")
    return 0


if __name__ == "__main__":
    exit_with(main)
