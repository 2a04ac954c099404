"""Train an InterpNET explainer with Ray Train (TorchTrainer, DDP), one checkpoint per epoch, resumable.

    python -m jobs.train_interpnet --config configs/interpnet_scenes.yaml [--set explainer.variant=interpnet_1]

Algorithm 1 of the paper. The driver reads the activations of the train and val splits (the activation store, or an
in-process extraction — see ``load_table``), builds the vocabulary, trains the classifier head and freezes it, and
writes that starting point to ``<run>/interpnet_init`` (reused as-is when the run resumes). It then computes every
image's introspection vector r(x) once — gradients cannot reach the classifier — and hands (r, sentence) pairs to
the Ray Train workers through the object store. The workers train the LSTM explainer with DDP over the pairs and
report every epoch with a checkpoint (current weights, optimiser, lr, best-so-far weights, history). A rerun with the
same ``run.name`` and ``run.storage_path`` resumes the run from its last checkpoint. The best epoch (by validation
loss) is exported to ``output`` as an interp-ray explainer checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from interp_ray.checkpoint import read_checkpoint, save_checkpoint
from interp_ray.config import DataConfig, RunSection, ScalingSection, Section, load_config
from interp_ray.errors import UserError
from interp_ray.explainers.interpnet import (ActivationTable, ClassifierTrainConfig, DecoderTrainConfig, InterpNET,
                                             InterpNETConfig, collect, extract_in_process, state_digest)
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.train_loop import (epochs, export_dir, final_checkpoint, make_trainer, rank_and_world, report_epoch,
                             resolve_use_gpu, resume, run_path, weights_swapped, worker_history)

log = logging.getLogger("interp_ray.train_interpnet")
MODEL_DIR = "model"          # inside each Ray checkpoint: a complete explainer checkpoint (best epoch so far)
INIT_DIR = "interpnet_init"  # beside the Ray run: vocabulary + frozen classifier + initial decoder
CACHE_VERSION = 1


# --- config ------------------------------------------------------------------------------------------------------

class FeatureSection(Section):
    """Where the activations come from."""

    source: Literal["model", "store"] = "model"
    checkpoint: str = "outputs/scenes_cnn"   # the image classifier whose activations are read (both sources)
    # source=model (in-process extraction through interp_ray.activations.ActivationExtractor)
    batch_size: int = Field(250, gt=0)
    cache_dir: str | None = None             # cache the pooled activations here (keyed by a content hash)
    # source=store: the extract job's store root; ``layers`` = the layer list that extraction used
    store_root: str = "outputs/activations"
    layers: list[str] | None = None          # default: the explainer's columns


class EvaluateSection(Section):
    variants: list[str] = Field(default_factory=lambda: ["captioning", "interpnet_0", "interpnet_1", "interpnet_2",
                                                         "interpnet_3"])
    output_dir: str = "outputs/interpnet_table"   # <output_dir>/<variant>/ checkpoints, table.md, results.json
    trainer: Literal["ray", "local"] = "ray"      # how missing explainers are trained
    retrain: bool = False                         # train even when <output_dir>/<variant> exists
    beam_width: int = Field(1, ge=1)              # 1 = greedy (the paper's evaluation)
    samples: int = Field(8, ge=0)                 # example sentences per variant in the report
    meteor: bool = True


class InterpNETJobConfig(Section):
    data: DataConfig = Field(default_factory=lambda: DataConfig(name="scenes", options={"size": 64, "seed": 0}))
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    rows: dict[str, int | None] = Field(default_factory=dict)   # at most this many rows (the first) per role
    features: FeatureSection = Field(default_factory=FeatureSection)
    explainer: InterpNETConfig = Field(default_factory=InterpNETConfig)
    classifier_train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)
    train: DecoderTrainConfig = Field(default_factory=DecoderTrainConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    output: str = "outputs/interpnet"
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)


# --- activations (the adapter point) -------------------------------------------------------------------------------

def layers_to_extract(cfg: InterpNETJobConfig) -> list[str]:
    return cfg.features.layers or [c for c in cfg.explainer.columns() if c != "probabilities"]


def load_table(cfg: InterpNETJobConfig, role: str) -> ActivationTable:
    """The activations (+ reference sentences) of split role ``role`` ("train", "val", "test") as a table.

    ADAPTER POINT between the activation store and InterpNET: ``source: store`` reads the Parquet store written by
    ``jobs.extract_activations`` (its rows carry the dataset's row ``index``; the sentences are read from the dataset
    by that index, since the store keeps activations only); ``source: model`` runs the extraction callable here.
    """
    from interp_ray.data import load_dataset

    if role not in cfg.splits:
        raise UserError(f"no split configured for {role!r}; splits: {cfg.splits}")
    split = cfg.splits[role]
    dataset = load_dataset(cfg.data.name, split, **cfg.data.options)
    rows = cfg.rows.get(role)
    layers = layers_to_extract(cfg)
    columns = cfg.explainer.columns()
    pool = cfg.explainer.feature_pool
    if cfg.features.source == "store":
        return _table_from_store(cfg, dataset, split, layers, columns, rows)
    cache = None
    if cfg.features.cache_dir:
        from interp_ray.checkpoint import read_checkpoint as _read

        digest = _read(cfg.features.checkpoint, kind="classifier").digest
        ident = {"v": CACHE_VERSION, "checkpoint": digest, "layers": layers, "pool": pool, "rows": rows,
                 "dataset": dataset.describe(), "data": cfg.data.model_dump()}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
        cache = Path(cfg.features.cache_dir) / f"{cfg.data.name}-{split}-{key}.npz"
        if cache.is_file():
            return _read_cache(cache)
    batches = extract_in_process(dataset, cfg.features.checkpoint, layers, rows=rows,
                                 batch_size=cfg.features.batch_size, pool=pool)
    table = collect(batches, columns, pool=pool)
    if cache is not None:
        _write_cache(cache, table)
    return table


def _table_from_store(cfg, dataset, split, layers, columns, rows) -> ActivationTable:
    from interp_ray.store import find_store

    store = find_store(cfg.features.store_root, cfg.features.checkpoint, data=cfg.data, split=split, layers=layers)
    wanted = ["index", "id", "label", "prediction", *[c for c in columns]]

    def batches():
        left = len(store) if rows is None else int(rows)
        for b in store.iter_batches(1024, columns=list(dict.fromkeys(wanted))):
            if left <= 0:
                return
            b = {k: v[:left] for k, v in b.items()}
            left -= len(b["id"])
            extra = dataset.get_batch(np.asarray(b["index"], dtype=np.int64))
            if "sentences" in extra:
                b["sentences"] = extra["sentences"]
            yield b

    return collect(batches(), columns, pool=cfg.explainer.feature_pool)


def _write_cache(path: Path, t: ActivationTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    k = max((len(s) for s in t.sentences or [[]]), default=0)
    sentences = np.array([s + [""] * (k - len(s)) for s in t.sentences], dtype=str) if t.sentences else None
    arrays = {"ids": t.ids, "labels": t.labels, **{f"col:{c}": v for c, v in t.columns.items()}}
    if sentences is not None:
        arrays["sentences"] = sentences
    if t.prediction is not None:
        arrays["prediction"] = t.prediction
    tmp = path.with_name(f".{path.name}.tmp-{time.time_ns()}.npz")
    np.savez(tmp, **arrays)
    tmp.rename(path)


def _read_cache(path: Path) -> ActivationTable:
    with np.load(path, allow_pickle=False) as z:
        cols = {k[4:]: z[k] for k in z.files if k.startswith("col:")}
        sentences = [[s for s in row if s] for row in z["sentences"].tolist()] if "sentences" in z.files else None
        return ActivationTable(z["ids"], z["labels"], cols, sentences, z["prediction"] if "prediction" in z.files
                               else None)


def class_names_of(cfg: InterpNETJobConfig) -> list[str]:
    from interp_ray.checkpoint import read_checkpoint as _read

    return list(_read(cfg.features.checkpoint, kind="classifier").config["class_names"])


# --- the Ray Train worker ------------------------------------------------------------------------------------------

def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker: the explainer network's epochs, with DDP over the (r, sentence) pairs."""
    import ray
    import ray.train.torch

    from interp_ray.explainers.interpnet import DecoderTrainer
    from interp_ray.training import gather_from_ranks, seed_everything

    cfg = InterpNETJobConfig.model_validate(config["job"])
    rank, world = rank_and_world()
    seed_everything(cfg.train.seed)
    explainer = InterpNET.load(config["init"])
    pairs = ray.get(config["pairs"])
    train_pairs, val_pairs = pairs["train"], pairs["val"]

    device = ray.train.torch.get_device()
    decoder = explainer.decoder.to(device)
    start = resume()
    if start.restored:
        if start.state["vocab_digest"] != explainer.vocab.digest:
            raise UserError("vocabulary mismatch: the run's checkpoint was trained with another vocabulary than the "
                            "data gives now; use a new run.name")
        if start.state["classifier_digest"] != state_digest(explainer.classifier_state()):
            raise UserError("the frozen classifier differs from the one this run started with; use a new run.name")
    history = start.history

    model = ray.train.torch.prepare_model(decoder)
    trainer = DecoderTrainer(decoder, train_pairs, val_pairs, cfg.train, model=model, rank=rank, world=world,
                             device=device)
    if start.restored:
        trainer.load_state_dict(start.state["trainer"])

    for epoch in epochs(start, cfg.train.epochs, fail_at=cfg.train.fail_at_epoch, rank=rank):
        t0 = time.perf_counter()
        row = trainer.run_epoch(epoch)
        row.update({"attempt": start.attempt, "epoch_s": time.perf_counter() - t0, "world_size": world,
                    "pairs_per_rank": gather_from_ranks(row["pairs_seen"], world)})
        history.append(row)
        report_epoch(row, history, checkpoint=rank == 0 and cfg.run.checkpoint_due(epoch, cfg.train.epochs),
                     state=lambda: {"trainer": trainer.state_dict(), "epoch": epoch,
                                    "vocab_digest": explainer.vocab.digest,
                                    "classifier_digest": state_digest(explainer.classifier_state())},
                     save_model=lambda d: _save_best(explainer, trainer, history, d / MODEL_DIR))
    return {"history": history}


def _save_best(explainer: InterpNET, trainer, history: list[dict[str, Any]], path: Path) -> None:
    with weights_swapped(explainer.decoder, trainer.best_state):
        explainer.history["explainer"] = list(history)
        explainer.save(str(path))


# --- the driver ----------------------------------------------------------------------------------------------------

def run_name(cfg: InterpNETJobConfig) -> str:
    return cfg.run.name or (f"interpnet-{cfg.explainer.variant}-{time.strftime('%Y%m%d-%H%M%S')}-"
                            f"{time.time_ns() % 1000:03d}")


def prepare(cfg: InterpNETJobConfig, tables: dict[str, ActivationTable] | None, init_path: str
            ) -> tuple[InterpNET, dict[str, Any]]:
    """The frozen starting point (reused from ``init_path`` when a resumed run already wrote it) and the pairs."""
    tables = tables or {role: load_table(cfg, role) for role in ("train", "val")}
    train_t, val_t = tables["train"], tables["val"]
    try:
        explainer = InterpNET.load(init_path)
        if explainer.config != cfg.explainer:
            raise UserError(f"{init_path} was made with another explainer config; use a new run.name")
        explainer.setup(train_t)  # checks the vocabulary covers the data and the activation widths match
        log.info("reusing the frozen classifier and vocabulary of %s", init_path)
    except UserError as e:
        if "no checkpoint at" not in str(e) and "cannot read checkpoint" not in str(e):
            raise
        explainer = InterpNET(cfg.explainer, class_names=class_names_of(cfg))
        explainer.info = {"features": cfg.features.model_dump(), "data": cfg.data.model_dump(),
                          "splits": cfg.splits, "rows": cfg.rows}
        explainer.setup(train_t)
        t0 = time.perf_counter()
        explainer.fit_classifier(train_t, val_t, cfg.classifier_train)
        log.info("classifier head trained in %.1f s", time.perf_counter() - t0)
        explainer.save(init_path)
    pairs = {"train": explainer.training_pairs(train_t), "val": explainer.training_pairs(val_t)}
    return explainer, pairs


def _resave(src: Path, uri: str) -> None:
    ck = read_checkpoint(src)
    save_checkpoint(uri, kind=ck.config["kind"],
                    config={k: v for k, v in ck.config.items() if k not in ("format", "kind")},
                    state_dict=ck.state_dict, files=ck.files)


def train(cfg: InterpNETJobConfig, tables: dict[str, ActivationTable] | None = None) -> dict[str, Any]:
    """Fit on Ray Train and export the best epoch to ``cfg.output``. ``tables``: pre-loaded train/val activations."""
    import ray

    name = run_name(cfg)
    init_path = run_path(cfg.run, name, INIT_DIR)
    explainer, pairs = prepare(cfg, tables, init_path)
    loop_config = {"job": cfg.model_dump(), "init": init_path, "pairs": ray.put(pairs)}
    result = make_trainer(train_func, loop_config, name=name, scaling=cfg.scaling, run=cfg.run,
                          use_gpu=resolve_use_gpu(cfg.scaling.use_gpu)).fit()
    with final_checkpoint(result) as (d, history):
        export_dir(d / MODEL_DIR, cfg.output, upload=_resave)
    trained = InterpNET.load(cfg.output)
    return {"history": history, "checkpoint": str(cfg.output), "run_path": result.path, "init": init_path,
            "classifier_digest_before": state_digest(explainer.classifier_state()),
            "classifier_digest_after": state_digest(trained.classifier_state()),
            "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
            "worker_history": worker_history(result)}


def train_local(cfg: InterpNETJobConfig, tables: dict[str, ActivationTable] | None = None) -> dict[str, Any]:
    """The same training in this process, without Ray (same helpers; for quick experiments and tests)."""
    tables = tables or {role: load_table(cfg, role) for role in ("train", "val")}
    explainer = InterpNET(cfg.explainer, class_names=class_names_of(cfg))
    explainer.info = {"features": cfg.features.model_dump(), "data": cfg.data.model_dump(), "splits": cfg.splits,
                      "rows": cfg.rows}
    explainer.fit(tables["train"], tables["val"], classifier_train=cfg.classifier_train, train=cfg.train,
                  on_epoch=lambda row: log.info("epoch %d: train %.4f val %.4f", row["epoch"], row["train_loss"],
                                                row["val_loss"]))
    explainer.save(cfg.output)
    hist = explainer.history["explainer"]
    return {"history": hist, "checkpoint": str(cfg.output),
            "best_epoch": min(hist, key=lambda h: h["val_loss"])["epoch"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--local", action="store_true", help="train in this process, without Ray")
    args = p.parse_args(argv)
    cfg = load_config(InterpNETJobConfig, args.config, args.overrides)
    if args.local:
        out = train_local(cfg)
    else:
        check_storage_paths(run__storage_path=cfg.run.storage_path)
        init_ray(args.address)
        out = train(cfg)
    best = min(out["history"], key=lambda h: h["val_loss"])
    print(f"InterpNET ({cfg.explainer.variant}) on {cfg.data.name}: best val loss {best['val_loss']:.4f} at epoch "
          f"{best['epoch']} of {len(out['history'])}; checkpoint: {out['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
