"""Train FLINT (joint, post-hoc or the BASE-f control) with Ray Train (TorchTrainer, DDP), one checkpoint per epoch,
resumable; then compute global relevance, MAS, test metrics (and pictures) and write a FLINT checkpoint.

    python -m jobs.train_flint --config configs/flint_digits.yaml [--set flint.mode=posthoc --set flint.predictor_checkpoint=DIR]

The per-epoch work is ``interp_ray.explainers.flint.flint_train_epoch`` — the same function ``train_local`` runs
without Ray. A rerun with the same ``run.name`` and ``run.storage_path`` resumes that run from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from interp_ray.checkpoint import is_remote
from interp_ray.config import load_config
from interp_ray.explainers.flint import (FlintExplainer, FlintJobConfig, FlintSetup, epoch_row, evaluate_explainer, finalize,
                                         flint_evaluate, flint_train_epoch, make_flint_optimizer, save_flint,
                                         scenes_attribute_table, setup)
from interp_ray.training import distributed_sampler, gather_from_ranks
from jobs.common import base_parser, exit_with, init_ray

log = logging.getLogger("interp_ray.train_flint")
MODEL_DIR = "flint"          # inside each Ray checkpoint: a complete interp-ray FLINT checkpoint (no relevance yet)
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


class InjectedFailure(RuntimeError):
    """Raised once by ``train.fail_at_epoch`` to drill fault tolerance."""


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = FlintJobConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    st = setup(cfg)  # seeds, data, predictor (built or loaded frozen), Ψ/h/d
    model = st.model
    opt, sched = make_flint_optimizer(model, cfg.train)

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
    inner = getattr(model, "module", model)
    sampler = distributed_sampler(st.train_ds, world_size=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    train_loader = st.train_ds.loader(cfg.train.batch_size, sampler=sampler)
    val_loader = st.val_ds.loader(512)
    recon = st.spec["recon_loss"]

    for epoch in range(start_epoch, cfg.train.epochs):
        if cfg.train.fail_at_epoch == epoch and not restored and rank == 0:
            raise InjectedFailure(f"injected failure at epoch {epoch}")
        sampler.set_epoch(epoch)
        weights = st.schedule.weights(epoch + 1)  # the authors' epochs count from 1
        t0 = time.perf_counter()
        tr = flint_train_epoch(model, train_loader, opt, device, weights, recon_loss=recon,
                               max_shift=cfg.train.augment_shift)
        sched.step()
        va = flint_evaluate(inner, val_loader, device, recon_loss=recon, weights=weights)
        row = epoch_row(epoch, attempt, tr, va, weights, time.perf_counter() - t0, world)
        row["samples_per_rank"] = gather_from_ranks(tr["samples"], world)
        history.append(row)
        _report(row, history, inner, opt, sched, epoch, cfg, st, rank)
    return {"history": history}



def _report(row, history, inner, opt, sched, epoch, cfg: FlintJobConfig, st, rank) -> None:
    import ray.train

    # Every rank reports; rank 0 adds the checkpoint when one is due (run.checkpoint_every).
    if rank != 0 or not cfg.run.checkpoint_due(epoch, cfg.train.epochs):
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": inner.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch}, Path(d) / STATE_FILE)
        (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
        save_flint(Path(d) / MODEL_DIR, inner, spec=st.spec, predictor_spec=st.predictor_spec,
                   class_names=st.train_ds.class_names, mode=cfg.flint.mode, tau=cfg.flint.tau,
                   data=cfg.data.model_dump(), predictor_digest=st.predictor_digest,
                   metrics={k: row[k] for k in ("epoch", "val_accuracy_f", "val_fidelity")})
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


def make_trainer(cfg: FlintJobConfig):
    import ray.train
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.scaling.use_gpu
    if use_gpu == "auto":
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage = cfg.run.storage_path if is_remote(cfg.run.storage_path) else str(Path(cfg.run.storage_path).resolve())
    name = cfg.run.name or f"flint-{cfg.flint.mode}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1e3) % 1000:03d}"
    return TorchTrainer(
        train_func,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=bool(use_gpu),
                                               resources_per_worker=dict(cfg.scaling.resources_per_worker)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep)),
    )


def prepare(cfg: FlintJobConfig) -> tuple[FlintJobConfig, FlintSetup]:
    """Resolve paths and build everything once in this process, so bad names, layers or a missing predictor
    checkpoint fail here (a ``UserError``) before Ray starts or any worker runs."""
    # Workers may not share this process's working directory: hand them an absolute predictor path.
    ckpt = cfg.flint.predictor_checkpoint
    if ckpt and not is_remote(ckpt):
        cfg = cfg.model_copy(update={"flint": cfg.flint.model_copy(
            update={"predictor_checkpoint": str(Path(ckpt.removeprefix("file://")).resolve())})})
    return cfg, setup(cfg)


def train(cfg: FlintJobConfig, prepared: FlintSetup | None = None) -> dict[str, Any]:
    """Fit on Ray Train; then, in this process: global relevance + MAS on the training split, test metrics, the
    ground-truth attribute matches (scenes), the final checkpoint at ``cfg.output`` and, if enabled, the pictures."""
    from interp_ray.data import load_dataset
    from interp_ray.explainers.flint import materialize

    if prepared is None:
        cfg, prepared = prepare(cfg)
    st = prepared
    test_ds = materialize(load_dataset(cfg.data.name, "test", **cfg.data.options), cfg.materialize_rows)
    result = make_trainer(cfg).fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / HISTORY_FILE).read_text())
        explainer = FlintExplainer.load(str(Path(d) / MODEL_DIR))
    extra = finalize(explainer.flint, st.train_ds, cfg.flint, seed=21)
    explainer.mas_images = extra["mas_images"]
    test = evaluate_explainer(explainer, test_ds, taus=cfg.flint.taus)
    matches = None
    if "attributes" in test_ds.get_batch([0]):
        matches = scenes_attribute_table(explainer, test_ds)
        explainer.config["attribute_matches"] = matches
    explainer.config["metrics"] = {"test": test, "epochs": len(history)}
    explainer.config["am"] = cfg.pictures.am.model_dump(mode="json")
    explainer.save(cfg.output)
    out = {"test": test, "history": history, "checkpoint": str(cfg.output), "run_path": result.path,
           "attribute_matches": matches, "global": explainer.global_interpretation(cfg.flint.tau),
           "worker_history": (getattr(result, "return_value", None) or {}).get("history", [])}
    if cfg.pictures.enabled:
        from interp_ray.explainers.flint_plots import write_global_pictures, write_local_sheet

        pdir = Path(cfg.pictures.dir or (Path(cfg.output) / "pictures" if not is_remote(cfg.output)
                                         else "outputs/flint_pictures"))
        out["pictures"] = write_global_pictures(explainer, st.train_ds, pdir, tau=cfg.flint.tau, am=cfg.pictures.am,
                                                n_mas=cfg.flint.n_mas, samples=cfg.flint.relevance_samples,
                                                max_pairs=cfg.pictures.max_pairs)
        sheet, _ = write_local_sheet(explainer, test_ds.get_batch([0])["image"][0], pdir / "local_test0000.png",
                                     tau=cfg.flint.tau, am=cfg.pictures.am)
        out["pictures"].append({"class": None, "attribute": None, "relevance": None, "path": sheet})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, prepared = prepare(load_config(FlintJobConfig, args.config, args.overrides))
    init_ray(args.address)
    out = train(cfg, prepared)
    t = out["test"]
    tau = cfg.flint.tau
    print(f"flint ({cfg.flint.mode}) on {cfg.data.name}: test accuracy f {t['accuracy_f']:.4f}, g {t['accuracy_g']:.4f}, "
          f"fidelity {t['fidelity']:.4f}, CNS(tau={tau:g}) {t.get(f'cns_{tau:g}', float('nan')):.3f} "
          f"({len(out['history'])} epochs); checkpoint: {out['checkpoint']}")
    for cls, attrs in out["global"].items():
        print(f"  class {cls}: " + ", ".join(f"{a} ({r:.2f})" for a, r in attrs))
    if out["attribute_matches"]:
        for m in out["attribute_matches"]:
            if m["match"]:
                print(f"  {m['attribute']} ~ {m['match']} (rho={m['corr']:.2f})")
    if out.get("pictures"):
        print(f"  {len(out['pictures'])} pictures in {Path(out['pictures'][0]['path']).parent}")
    return 0


if __name__ == "__main__":
    exit_with(main)
