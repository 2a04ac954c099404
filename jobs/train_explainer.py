"""Train any learned explainer from the activation store with Ray Train (TorchTrainer), one checkpoint per epoch.

    python -m jobs.train_explainer --config configs/interpnet_scenes.yaml [--set explainer.variant=interpnet_1]
    python -m jobs.train_explainer --config configs/semantic_scenes.yaml [--local]
    interp-ray train-explainer --config …      (train-interpnet and train-semantic are the same command)

The config's ``method`` names a registered explainer that is ``Trainable`` (interp_ray/explainers/_trainable.py); its
``TrainJob`` validates the file, and ``check_data`` checks the dataset before any work: the captions a method trains
on (``trains_on``; a user's ``captions.jsonl`` or Parquet ``captions_column``, docs/your_model.md#captions) and the
``keep`` columns, each problem one line. Then, for any such method:

1. ``source``: the extraction job (``jobs.extract_activations``, i.e. ``ActivationExtractor`` on Ray Data) writes the
   train and val splits' stores — the explainer's layers plus the ``keep`` columns (reference sentences) — or finds
   them complete and costs nothing.
2. The driver builds the untrained explainer from streaming passes over the train store (``from_rows``: vocabulary,
   widths, statistics) and saves it as the run's starting point ``<run>/explainer_init`` (reused as-is on resume).
3. Ray Train: ``ActivationStore.to_ray()`` of both splits go to the TorchTrainer as ``datasets``; each worker streams
   its shard of the train rows (``get_dataset_shard("train")``, local shuffle buffer) and every val row into the
   method's ``EpochTrainer.run_epoch``, and rank 0 reports a checkpoint each epoch (trainer state, history, the best
   epoch's explainer). Nothing holds the whole table: not the driver, not a worker. A rerun with the same
   ``run.name`` and ``run.storage_path`` resumes from the last checkpoint.
4. The best epoch's explainer is finished on the driver (``finish``: e.g. neuron labels, streamed) and saved to
   ``output``.

``--local`` runs steps 2–4 in this process, without Ray (the same trainer over the store's batches).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from interp_ray.config import LearnedJobConfig, deep_merge, parse_overrides, read_yaml, validate
from interp_ray.errors import UserError
from interp_ray.explainers.base import Trainable, explainer_names, get_explainer
from interp_ray.progress import Progress as Bar
from interp_ray.store import shuffled
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.train_loop import (epochs, final_checkpoint, make_trainer, progress_note, quiet_console, rank_and_world,
                             report_epoch, resolve_use_gpu, resume, run_path, worker_history)

# The interp-ray commands of the two jobs this one replaced (the config's ``method`` says what is trained),
# besides the generic train-explainer; jobs/cli.py reads this line without importing the module.
CLI_COMMANDS = ("train-interpnet", "train-semantic")

log = logging.getLogger("interp_ray.train_explainer")
MODEL_DIR = "model"          # inside each Ray checkpoint: the best epoch's explainer so far
INIT_DIR = "explainer_init"  # beside the Ray run: the untrained explainer every worker starts from


# --- config --------------------------------------------------------------------------------------------------------

def learned_methods() -> list[str]:
    return explainer_names(kind=Trainable)


def method_class(method: Any) -> type:
    if not isinstance(method, str) or method not in explainer_names():
        raise UserError(f"method: {method!r} is not a learned explainer; valid: {', '.join(learned_methods())}")
    cls = get_explainer(method)
    if not issubclass(cls, Trainable):
        raise UserError(f"method: {method!r} learns nothing from the store; valid: {', '.join(learned_methods())}")
    return cls


def load_job(path: str | None, overrides: Sequence[str] = ()) -> LearnedJobConfig:
    """The file (plus ``--set`` overrides) validated by its method's ``TrainJob``."""
    if not path:
        raise UserError("--config is required (e.g. configs/interpnet_scenes.yaml)")
    raw = deep_merge(read_yaml(path), parse_overrides(list(overrides)))
    return validate(method_class(raw.get("method")).TrainJob, raw, source=path)


def train_settings(job: LearnedJobConfig) -> Any:
    """The method's ``train`` section (both methods' carry ``seed`` and the drill's ``fail_at_epoch``)."""
    return getattr(job, "train", None)


def with_layers(job: LearnedJobConfig) -> LearnedJobConfig:
    """``job`` with the classifier layers its method reads settled (``Trainable.for_classifier``: named ones checked,
    open ones from the classifier's roles) and every layer it will extract checked to exist in ``source.checkpoint``:
    a wrong name is one line here, before any extraction or Ray start."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.explainers.base import check_named_layers

    cls = method_class(job.method)
    classifier = load_classifier(job.source.checkpoint, device="cpu")
    job = cls.for_classifier(job, classifier)
    layers = store_layers(job)
    if layers:
        check_named_layers(cls, classifier, layers, field="source.layers")
    return job


# --- the rows ------------------------------------------------------------------------------------------------------

def store_layers(job: LearnedJobConfig) -> list[str] | None:
    layers = getattr(job, "store_layers", None)
    return layers() if callable(layers) else job.source.layers


def role_data(job: LearnedJobConfig, role: str) -> Any:
    """The dataset config of ``role`` (train, val, test): ``source.data`` with ``source.rows`` as its ``n`` option."""
    from interp_ray.data import get_loader

    src = job.source
    if role not in src.splits:
        raise UserError(f"source.splits has no split for {role!r}; it maps {src.splits}")
    data = src.data.model_copy(deep=True)
    if src.rows.get(role) is not None:
        if "n" not in inspect.signature(get_loader(data.name)).parameters:
            raise UserError(f"source.rows: dataset {data.name!r} has no n option; remove source.rows.{role}")
        data.options["n"] = int(src.rows[role])
    return data


def check_data(job: LearnedJobConfig, roles: Iterable[str] = ("train", "val")) -> None:
    """Before any Ray or extraction work: each role's dataset loads (a malformed captions file fails here, naming its
    line), carries what the method trains on (``Trainable.trains_on``: captions, the ``sentences`` column) and every
    column ``source.keep`` names. Loading lists files and reads labels and captions only, never the images."""
    from interp_ray.data import load_dataset
    from interp_ray.data.captions import CAPTIONS_COLUMN, captions_hint

    cls, src = method_class(job.method), job.source
    wants_captions = "captions" in getattr(cls, "trains_on", frozenset())
    if not wants_captions and not src.keep:
        return   # nothing to check: the dataset is loaded once, by the extraction (a WebDataset's index costs a pass)
    if wants_captions and CAPTIONS_COLUMN not in src.keep:
        raise UserError(f"source.keep must name {CAPTIONS_COLUMN!r}: {job.method} learns from the captions kept in "
                        f"the store beside the activations")
    for role in roles:
        data = role_data(job, role)
        what = f"{data.name}/{src.splits[role]}"
        columns = load_dataset(data.name, src.splits[role], **data.options).extra_columns()
        if wants_captions and CAPTIONS_COLUMN not in columns:
            raise UserError(captions_hint(job.method, data.name))
        missing = [c for c in src.keep if c not in columns]
        if missing:
            raise UserError(f"source.keep: {what} has no column {', '.join(missing)}; remove it from source.keep "
                            f"(the dataset's own columns: {', '.join(columns) or 'none'})")


def check_source(job: LearnedJobConfig, roles: Iterable[str] = ("train", "val")) -> None:
    """Each role has a split, and ``source.rows`` only where the dataset takes a row count: one line, no work."""
    for role in roles:
        role_data(job, role)


def role_stores(job: LearnedJobConfig, roles: Iterable[str], *, address: str | None = None) -> dict[str, Any]:
    """The store of each role (train, val, test), extracted first where it is missing (``jobs.extract_activations``:
    the one path that runs the classifier; all roles in one pipeline). ``source.rows`` becomes the dataset's ``n``
    option for that split."""
    from interp_ray.store import ActivationStore
    from jobs.extract_activations import ExtractJobConfig, extract_many

    src, roles = job.source, list(roles)
    cfgs = []
    for role in roles:
        data = role_data(job, role)
        cfgs.append(ExtractJobConfig(checkpoint=src.checkpoint, layers=store_layers(job), data=data,
                                     splits=[src.splits[role]], keep=src.keep, store=src.store, compute=src.compute))
    outs = extract_many(cfgs, address=address)
    return {role: ActivationStore.open(out["location"], key=out["key"]) for role, out in zip(roles, outs)}


# --- the Ray Train worker ------------------------------------------------------------------------------------------

def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker: the method's epochs over this worker's shard of the store."""
    import ray.train
    import ray.train.torch

    from interp_ray.training import gather_from_ranks, seed_everything

    cls = method_class(config["method"])
    job = cls.TrainJob.model_validate(config["job"])
    rank, world = rank_and_world()
    settings = train_settings(job)
    seed = int(getattr(settings, "seed", 0))
    seed_everything(seed)
    explainer = cls.load(config["init"])
    device = ray.train.torch.get_device()
    trainer = explainer.trainer(job, device=device, wrap=ray.train.torch.prepare_model)
    quiet_console(job.run.log_level)
    start = resume()
    if start.restored:
        trainer.load_state_dict(start.state["trainer"])
    history = start.history
    shard = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val")
    val_batches = kept(lambda: val.iter_batches(batch_size=job.stream.batch_rows, batch_format="numpy"),
                       keep=job.stream.keep_val)
    stream = job.stream
    for epoch in epochs(start, trainer.epochs, fail_at=getattr(settings, "fail_at_epoch", None), rank=rank):
        t0 = time.perf_counter()
        train_batches = shard_batches(shard, stream, stream.batch_rows, seed=seed, epoch=epoch, rank=rank)
        seen: list[np.ndarray] = []
        marks: dict[str, float] = {}
        if stream.max_batches:
            train_batches = itertools.islice(train_batches, stream.max_batches)
        row = trainer.run_epoch(epoch, tapped(train_batches, seen, marks), val_batches())
        rows_read = int(sum(len(s) for s in seen))
        row.update({"attempt": start.attempt, "epoch_s": time.perf_counter() - t0, "world_size": world,
                    # the shard's start-up (until its first batch) apart from the streaming itself
                    "first_batch_s": marks.get("first", t0) - t0,
                    "stream_s": marks.get("end", t0) - marks.get("first", t0),
                    "rows_per_rank": gather_from_ranks(rows_read, world),
                    # this worker process's peak resident memory so far: flat in the store's size when streaming
                    "peak_rss_mib_per_rank": gather_from_ranks(peak_rss_mib(), world),
                    # ... of which private: the peak is what training itself holds; the rest is shared object-store
                    # pages mapped in, bounded by the object store's size, not the table's
                    "peak_anon_mib_per_rank": gather_from_ranks(marks.get("anon_mib", 0.0), world),
                    "shmem_mib_per_rank": gather_from_ranks(memory_mib().get("shmem", 0.0), world)})
        if stream.record_indices:
            row["indices_per_rank"] = gather_from_ranks(np.concatenate(seen).tolist() if seen else [], world)
        history.append(row)
        report_epoch(row, history, checkpoint=rank == 0 and job.run.checkpoint_due(epoch, trainer.epochs),
                     state=lambda: {"trainer": trainer.state_dict(), "epoch": epoch},
                     save_model=lambda d: save_best(cls, config["init"], trainer, history, d / MODEL_DIR))
    return {"history": history}


def shard_batches(shard: Any, stream: Any, batch_size: int, *, seed: int, epoch: int, rank: int
                  ) -> Iterable[dict[str, np.ndarray]]:
    """One epoch of this worker's shard (``get_dataset_shard``) in numpy batches, through a local shuffle buffer of
    ``stream.shuffle_buffer`` rows seeded by (seed, epoch, rank); store order when the buffer is 0."""
    return shard.iter_batches(
        batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=stream.shuffle_buffer or None,
        local_shuffle_seed=(seed * 7919 + epoch * 104_729 + rank) if stream.shuffle_buffer else None)


def store_datasets(stores: dict[str, Any], columns: Sequence[str], stream: Any) -> dict[str, Any]:
    """``make_trainer``'s ``datasets`` (the train and val stores, only ``columns``) and ``dataset_config``. Only
    "train" is split between workers; each reads every val row, so all ranks pick the same best epoch. Call it where
    Ray Data's progress bars are set as the training wants them (``data_progress_bars``): a Dataset keeps the
    context it is made in."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    if stream.read_ahead_mib:
        options.resource_limits = options.resource_limits.copy(object_store_memory=stream.read_ahead_mib * 2**20)
    return {"datasets": {role: stores[role].to_ray(columns=list(columns)) for role in ("train", "val")},
            "dataset_config": ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)}


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_mib() -> dict[str, float]:
    """This process's resident memory now, split as Linux accounts it: ``anon`` is its private heap (what it
    allocated itself), ``shmem`` the shared pages mapped in (Ray's object store is one shared-memory arena that
    every worker maps: the blocks it reads zero-copy count in its RSS while mapped, and ru_maxrss cannot tell them
    from a leak). {} where /proc is not there."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {key: int(fields[name].split()[0]) / 1024 for key, name in (("anon", "RssAnon"), ("shmem", "RssShmem"))
            if name in fields}


def kept(read: Callable[[], Iterable[dict[str, np.ndarray]]], *, keep: bool
         ) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    """A function giving one pass over ``read()``'s batches: read once and kept for later passes if ``keep``."""
    if not keep:
        return read
    cache: list[dict[str, np.ndarray]] = []

    def passes() -> Iterable[dict[str, np.ndarray]]:
        if not cache:
            cache.extend(read())
        return iter(cache)
    return passes


def tapped(batches: Iterable[dict[str, np.ndarray]], seen: list[np.ndarray], marks: dict[str, float]
           ) -> Iterator[dict[str, np.ndarray]]:
    """The batches unchanged; the store row index of every row read is noted in ``seen``, and in ``marks`` when the
    first batch arrived, when the shard was exhausted (the trainer has stepped on every batch by then), and the
    largest private (anonymous) memory seen at a batch (``anon_mib``; ru_maxrss also counts the object store's
    shared pages)."""
    for b in batches:
        marks.setdefault("first", time.perf_counter())
        marks["anon_mib"] = max(marks.get("anon_mib", 0.0), memory_mib().get("anon", 0.0))
        seen.append(np.asarray(b["index"], dtype=np.int64))
        yield b
    marks["end"] = time.perf_counter()


def save_best(cls: type, init: str, trainer: Any, history: list[dict[str, Any]], path: Path) -> None:
    """The best epoch so far as an explainer checkpoint: a fresh copy of the starting point with the best state in
    it, so the explainer being trained keeps its current weights."""
    best = cls.load(init)
    best.use_state(trainer.best_state, history)
    best.save(str(path))


# --- the driver ----------------------------------------------------------------------------------------------------

def run_name(job: LearnedJobConfig) -> str:
    return job.run.name or f"{job.method}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1000:03d}"


def starting_point(cls: type, job: LearnedJobConfig, train_store: Any, init_path: str | None) -> Any:
    """The untrained explainer: reused from ``init_path`` when a resumed run already wrote it, else built from
    streaming passes over the train store (and written there)."""
    if init_path is not None:
        try:
            explainer = cls.load(init_path)
        except UserError as e:
            if "no checkpoint at" not in str(e) and "cannot read checkpoint" not in str(e):
                raise
        else:
            if getattr(explainer, "config", None) != getattr(job, "explainer", None):
                raise UserError(f"{init_path} was made with another explainer config; use a new run.name")
            log.info("reusing the starting point of %s", init_path)
            return explainer
    explainer = cls.from_rows(job, rows(job, train_store), class_names=train_store.class_names,
                              store=train_store.describe())
    explainer.info = {**getattr(explainer, "info", {}), "store": {"train": train_store.key},
                      "source": job.source.model_dump()}
    if init_path is not None:
        explainer.save(init_path)
    return explainer


def data_progress_bars(enabled: bool):
    """Ray Data's progress bars on or off while the block runs. Off for training: each epoch re-executes the store's
    read for every worker, and their bars filled the workers' logs (and, when Ray forwards those, the terminal:
    jobs/terminal.py) with lines no one reads. The datasets carry the setting to the workers when Ray Train ships
    them."""
    from interp_ray.store import data_context

    return data_context(enable_progress_bars=enabled)


def rows(job: LearnedJobConfig, store: Any, columns: Sequence[str] | None = None) -> Callable[[], Iterable[dict]]:
    """A function starting one streaming pass over ``store`` (one part in memory at a time)."""
    return lambda: store.iter_batches(job.stream.batch_rows, columns=columns)


def train(job: LearnedJobConfig, *, address: str | None = None) -> dict[str, Any]:
    """Extract what is missing, train on Ray Train, finish and save the best epoch to ``job.output``."""
    cls = method_class(job.method)
    job = with_layers(job)
    stores = role_stores(job, ("train", "val"), address=address)
    name = run_name(job)
    init_path = run_path(job.run, name, INIT_DIR)
    explainer = starting_point(cls, job, stores["train"], init_path)
    columns = list(dict.fromkeys(["index", *explainer.train_columns()]))
    loop_config = {"method": job.method, "job": job.model_dump(), "init": init_path}
    with data_progress_bars(False):   # a Dataset keeps the context it was made in: make them in here
        result = make_trainer(train_func, loop_config, name=name, scaling=job.scaling, run=job.run,
                              use_gpu=resolve_use_gpu(job.scaling.use_gpu),
                              epochs=explainer.trainer(job, device="cpu").epochs,   # as the workers' (phases too)
                              **store_datasets(stores, columns, job.stream)).fit()
    with final_checkpoint(result) as (d, history):
        trained = cls.load(str(d / MODEL_DIR))
    finished = trained.finish(job, rows(job, stores["train"], columns))
    trained.save(job.output)
    return {"history": history, "checkpoint": str(job.output), "run_path": result.path, "init": init_path,
            "best_epoch": best_epoch(history), "finish": finished, "worker_history": worker_history(result),
            "stores": {role: s.location for role, s in stores.items()}}


def train_local(job: LearnedJobConfig) -> dict[str, Any]:
    """The same training in this process, without Ray: the method's trainer over the store's batches."""
    cls = method_class(job.method)
    job = with_layers(job)
    stores = role_stores(job, ("train", "val"))
    explainer = starting_point(cls, job, stores["train"], None)
    columns = list(dict.fromkeys(explainer.train_columns()))
    settings = train_settings(job)
    seed = int(getattr(settings, "seed", 0))
    trainer = explainer.trainer(job, device="cpu")
    history = []
    with Bar(f"{job.method} epochs", trainer.epochs, "epochs") as bar:
        for epoch in range(trainer.epochs):
            train_rows = shuffled(stores["train"].iter_batches(job.stream.batch_rows, columns=columns),
                                  job.stream.shuffle_buffer, seed * 7919 + epoch, job.stream.batch_rows)
            history.append(trainer.run_epoch(epoch, train_rows, rows(job, stores["val"], columns)()))
            log.info("epoch %d: %s", epoch, {k: v for k, v in history[-1].items() if isinstance(v, float)})
            bar.update_to(epoch + 1, note=progress_note(history[-1]), force=True)
    explainer.use_state(trainer.best_state, history)
    finished = explainer.finish(job, rows(job, stores["train"], columns))
    explainer.save(job.output)
    return {"history": history, "checkpoint": str(job.output), "best_epoch": best_epoch(history),
            "finish": finished}


def best_epoch(history: Sequence[dict[str, Any]]) -> int:
    """The epoch the trainer kept (its last row's ``best_epoch``)."""
    return int(history[-1]["best_epoch"]) if history else -1


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--local", action="store_true", help="train in this process, without Ray")
    args = p.parse_args(argv)
    job = load_job(args.config, args.overrides)
    check_source(job)
    check_data(job)   # captions and kept columns: one line now, not after Ray and an extraction started
    job = with_layers(job)   # a layer it cannot read: refused before Ray
    if args.local:
        out = train_local(job)
    else:
        check_storage_paths(run__storage_path=job.run.storage_path)
        init_ray(args.address)
        out = train(job, address=args.address)
    best = next((h for h in out["history"] if h["epoch"] == out["best_epoch"]), out["history"][-1])
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_") and isinstance(v, float))
    extra = "".join(f"; {k} {v}" for k, v in (out.get("finish") or {}).items())
    print(f"{job.method}: best epoch {out['best_epoch']} of {len(out['history'])} ({metrics}){extra}; "
          f"checkpoint: {out['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
