"""Train a classifier with Ray Train (TorchTrainer, DDP), one checkpoint per epoch, resumable.

    python -m jobs.train_classifier --config configs/digits.yaml [--set train.epochs=5]

The per-epoch work is ``interp_ray.training`` — the same functions run without Ray (see benchmarks/train_overhead.py).
A rerun with the same ``run.name`` and ``run.storage_path`` resumes that run from its last checkpoint.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Sequence

import torch

from interp_ray.checkpoint import load_classifier, save_classifier
from interp_ray.config import ClassifierJobConfig, load_config
from interp_ray.data import load_dataset
from interp_ray.models import build_model
from interp_ray.training import (distributed_sampler, evaluate, gather_from_ranks, make_optimizer,
                                 seed_everything, state_digest, train_epoch)
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.train_loop import (epochs, export_dir, final_checkpoint, make_trainer, rank_and_world, report_epoch,
                             resolve_use_gpu, start_worker, training_state, worker_history)

log = logging.getLogger("interp_ray.train_classifier")
MODEL_DIR = "model"          # inside each Ray checkpoint: a complete interp-ray classifier checkpoint


def build_from_config(cfg: ClassifierJobConfig):
    train_ds = load_dataset(cfg.data.name, "train", **cfg.data.options)
    val_ds = load_dataset(cfg.data.name, "val", **cfg.data.options)
    options = model_options(cfg, train_ds)
    return train_ds, val_ds, build_model(cfg.model.name, **options), options


def model_options(cfg: ClassifierJobConfig, ds) -> dict[str, Any]:
    """The model's options, with the data's classes/channels/size filled in unless the config sets them."""
    c, h, _ = ds.image_shape
    return {"num_classes": ds.num_classes, "in_channels": c, "image_size": h, **cfg.model.options}


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    cfg = ClassifierJobConfig.model_validate(config)
    rank, world = rank_and_world()
    seed_everything(cfg.train.seed)
    train_ds, val_ds, model, options = build_from_config(cfg)
    opt, sched = make_optimizer(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                schedule=cfg.train.schedule, epochs=cfg.train.epochs)
    start, model, inner, device = start_worker(model, opt, sched, cfg.run.log_level)
    history = start.history
    sampler = distributed_sampler(train_ds, world_size=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    train_loader = train_ds.loader(cfg.train.batch_size, sampler=sampler)
    val_loader = val_ds.loader(512)

    last_return = time.perf_counter()
    for epoch in epochs(start, cfg.train.epochs, fail_at=cfg.train.fail_at_epoch, rank=rank):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        tr = train_epoch(model, train_loader, opt, device, max_shift=cfg.train.augment_shift)
        sched.step()
        va = evaluate(model, val_loader, device)
        samples = gather_from_ranks(tr["samples"], world)
        row = {"epoch": epoch, "attempt": start.attempt, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": va["loss"], "val_accuracy": va["accuracy"], "epoch_s": time.perf_counter() - t0,
               "world_size": world, "samples_per_rank": samples,
               # DDP keeps the replicas identical (all-reduced gradients, same optimiser steps): equal digests show it.
               "params_digest_per_rank": gather_from_ranks(state_digest(dict(inner.named_parameters())), world)}
        history.append(row)
        t_report = time.perf_counter()
        report_epoch(row, history, checkpoint=rank == 0 and cfg.run.checkpoint_due(epoch, cfg.train.epochs),
                     state=lambda: training_state(inner, opt, sched, epoch),
                     save_model=lambda d: save_classifier(
                         d / MODEL_DIR, inner, model_name=cfg.model.name, model_options=options,
                         class_names=train_ds.class_names, data=cfg.data.model_dump(),
                         metrics={k: row[k] for k in ("epoch", "val_accuracy", "val_loss")}))
        # Wall time of the whole epoch as Ray Train runs it, report and checkpoint upload included.
        now = time.perf_counter()
        row["report_s"] = now - t_report
        row["epoch_wall_s"] = now - last_return
        last_return = now
    return {"history": history}


def run_name(cfg: ClassifierJobConfig) -> str:
    # A model spec may hold ':' (torchvision:resnet34, my_pkg.models:build): the run's folder name keeps it readable
    # without characters that some object stores and shells treat specially.
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.model.name)
    return cfg.run.name or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1e3) % 1000:03d}"


def train(cfg: ClassifierJobConfig) -> dict[str, Any]:
    """Fit on Ray Train, export the final classifier to ``cfg.output`` and score it on the test split."""
    # Fail fast on bad names before any worker starts: building once here costs milliseconds.
    test_ds = load_dataset(cfg.data.name, "test", **cfg.data.options)
    build_model(cfg.model.name, **model_options(cfg, test_ds))
    result = make_trainer(train_func, cfg.model_dump(), name=run_name(cfg), scaling=cfg.scaling, run=cfg.run,
                          use_gpu=resolve_use_gpu(cfg.scaling.use_gpu), epochs=cfg.train.epochs).fit()
    with final_checkpoint(result) as (d, history):
        export_dir(d / MODEL_DIR, cfg.output)
    loaded = load_classifier(cfg.output)
    test = evaluate(loaded.model, test_ds.loader(512), torch.device("cpu"))
    # The history saved with the checkpoint is authoritative (it survives restarts); rank 0's return value adds the
    # per-epoch wall times measured after each report.
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "history": history,
            "worker_history": worker_history(result), "checkpoint": str(cfg.output), "run_path": result.path}


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(ClassifierJobConfig, args.config, args.overrides)
    check_storage_paths(run__storage_path=cfg.run.storage_path, output=cfg.output)
    # A missing or unreadable dataset is the user's to fix: say so before Ray starts (that took 10 s here), from the
    # smallest split, which train() reads anyway.
    load_dataset(cfg.data.name, "test", **cfg.data.options)
    init_ray(args.address)
    out = train(cfg)
    last = out["history"][-1]
    print(f"{cfg.model.name} on {cfg.data.name}: test accuracy {out['test_accuracy']:.4f} "
          f"(val {last['val_accuracy']:.4f}, {len(out['history'])} epochs); checkpoint: {out['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
