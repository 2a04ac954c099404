"""Train a classifier with Ray Train (TorchTrainer, DDP), one checkpoint per epoch, resumable.

    python -m jobs.train_classifier --config configs/digits.yaml [--set train.epochs=5]

The per-epoch work is ``interp_ray.training`` — the same functions run without Ray (see benchmarks/train_overhead.py).
A rerun with the same ``run.name`` and ``run.storage_path`` resumes that run from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from interp_ray.checkpoint import atomic_write_dir, is_remote, load_classifier, save_classifier, upload_dir
from interp_ray.config import ClassifierJobConfig, load_config
from interp_ray.data import load_dataset
from interp_ray.errors import UserError
from interp_ray.models import build_model
from interp_ray.training import (distributed_sampler, evaluate, gather_from_ranks, make_optimizer, pick_device,
                                 seed_everything, train_epoch)
from jobs.common import base_parser, exit_with, init_ray

log = logging.getLogger("interp_ray.train_classifier")
MODEL_DIR = "model"          # inside each Ray checkpoint: a complete interp-ray classifier checkpoint
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


class InjectedFailure(RuntimeError):
    """Raised once by ``train.fail_at_epoch`` to drill fault tolerance."""


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
    import ray.train
    import ray.train.torch

    cfg = ClassifierJobConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.train.seed)
    train_ds, val_ds, model, options = build_from_config(cfg)
    opt, sched = make_optimizer(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                schedule=cfg.train.schedule, epochs=cfg.train.epochs)

    start_epoch, history, restored = 0, [], False
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, restored = state["epoch"] + 1, True
    attempt = 1 + max((h["attempt"] for h in history), default=-1) if restored else 0

    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    sampler = distributed_sampler(train_ds, world_size=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    train_loader = train_ds.loader(cfg.train.batch_size, sampler=sampler)
    val_loader = val_ds.loader(512)

    last_return = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        if cfg.train.fail_at_epoch == epoch and not restored and rank == 0:
            raise InjectedFailure(f"injected failure at epoch {epoch}")
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        tr = train_epoch(model, train_loader, opt, device, max_shift=cfg.train.augment_shift)
        sched.step()
        va = evaluate(model, val_loader, device)
        samples = gather_from_ranks(tr["samples"], world)
        row = {"epoch": epoch, "attempt": attempt, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": va["loss"], "val_accuracy": va["accuracy"], "epoch_s": time.perf_counter() - t0,
               "world_size": world, "samples_per_rank": samples}
        history.append(row)
        t_report = time.perf_counter()
        _report(row, history, model, opt, sched, epoch, cfg, options, train_ds, rank)
        # Wall time of the whole epoch as Ray Train runs it, report and checkpoint upload included.
        now = time.perf_counter()
        row["report_s"] = now - t_report
        row["epoch_wall_s"] = now - last_return
        last_return = now
    return {"history": history}



def _report(row, history, model, opt, sched, epoch, cfg, options, train_ds, rank) -> None:
    import ray.train

    # Every rank reports; rank 0 adds the checkpoint when one is due (run.checkpoint_every).
    if rank != 0 or not cfg.run.checkpoint_due(epoch, cfg.train.epochs):
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as d:
        inner = getattr(model, "module", model)
        torch.save({"model": inner.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch}, Path(d) / STATE_FILE)
        (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
        save_classifier(Path(d) / MODEL_DIR, inner, model_name=cfg.model.name, model_options=options,
                        class_names=train_ds.class_names, data=cfg.data.model_dump(),
                        metrics={k: row[k] for k in ("epoch", "val_accuracy", "val_loss")})
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


def make_trainer(cfg: ClassifierJobConfig):
    import ray.train
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available() if cfg.scaling.use_gpu == "auto" else cfg.scaling.use_gpu
    if use_gpu and cfg.scaling.use_gpu == "auto":
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage = cfg.run.storage_path if is_remote(cfg.run.storage_path) else str(Path(cfg.run.storage_path).resolve())
    name = cfg.run.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1e3) % 1000:03d}"
    return TorchTrainer(
        train_func,
        train_loop_config=cfg.model_dump(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=bool(use_gpu),
                                               resources_per_worker=dict(cfg.scaling.resources_per_worker)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep)),
    )


def train(cfg: ClassifierJobConfig) -> dict[str, Any]:
    """Fit on Ray Train, export the final classifier to ``cfg.output`` and score it on the test split."""
    # Fail fast on bad names before any worker starts: building once here costs milliseconds.
    test_ds = load_dataset(cfg.data.name, "test", **cfg.data.options)
    build_model(cfg.model.name, **model_options(cfg, test_ds))
    result = make_trainer(cfg).fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / HISTORY_FILE).read_text())
        if is_remote(cfg.output):
            upload_dir(Path(d) / MODEL_DIR, cfg.output)
        else:
            atomic_write_dir(Path(cfg.output), lambda tmp: shutil.copytree(Path(d) / MODEL_DIR, tmp,
                                                                          dirs_exist_ok=True))
    loaded = load_classifier(cfg.output)
    test = evaluate(loaded.model, test_ds.loader(512), torch.device("cpu"))
    # The history saved with the checkpoint is authoritative (it survives restarts); rank 0's return value adds the
    # per-epoch wall times measured after each report.
    worker_history = (getattr(result, "return_value", None) or {}).get("history", [])
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "history": history,
            "worker_history": worker_history, "checkpoint": str(cfg.output), "run_path": result.path}


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(ClassifierJobConfig, args.config, args.overrides)
    init_ray(args.address)
    out = train(cfg)
    last = out["history"][-1]
    print(f"{cfg.model.name} on {cfg.data.name}: test accuracy {out['test_accuracy']:.4f} "
          f"(val {last['val_accuracy']:.4f}, {len(out['history'])} epochs); checkpoint: {out['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
