"""Train FLINT (joint, post-hoc or the BASE-f control) with Ray Train (TorchTrainer, DDP), one checkpoint per epoch,
resumable; then compute global relevance, MAS, the AM+PI pictures it serves, test metrics (and the report's PNGs) and
write a FLINT checkpoint.

    python -m jobs.train_flint --config configs/flint_digits.yaml \
        [--set flint.mode=posthoc --set flint.predictor_checkpoint=DIR]

The per-epoch work is ``interp_ray.explainers.flint.training.flint_train_steps`` — the same function ``train_local``
runs without Ray. Joint and BASE train f, so they run it over images; post hoc, f is frozen and never runs here: its
taps, probabilities and the input are extracted once into the activation store (``store``; ``jobs.extract_activations``)
and each Ray Train worker streams its shard of it (``get_dataset_shard``), as ``jobs.train_explainer`` does. A rerun
with the same ``run.name`` and ``run.storage_path`` resumes that run from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from interp_ray.checkpoint import is_remote
from interp_ray.config import load_config
from interp_ray.explainers.flint.config import FlintJobConfig
from interp_ray.explainers.flint.explainer import FlintExplainer, save_flint
from interp_ray.explainers.flint.interpretation import attributes_with_ground_truth, evaluate_model
from interp_ray.explainers.flint.training import (FlintSetup, epoch_row, finalize, finalize_from_store, flint_evaluate,
                                                  flint_evaluate_steps, flint_train_epoch, flint_train_steps,
                                                  make_flint_optimizer, posthoc_layers, row_steps, setup,
                                                  store_columns)
from interp_ray.metrics.scene_attributes import scenes_attribute_table
from interp_ray.store import ActivationStore
from interp_ray.training import distributed_sampler, gather_from_ranks, state_digest
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.flint_inputs import align_to_predictor, flint_inputs, materialize
from jobs.train_explainer import data_progress_bars, kept, shard_batches, store_datasets
from jobs.train_loop import (epochs, final_checkpoint, make_trainer, rank_and_world, report_epoch, resolve_use_gpu,
                             start_worker, training_state, worker_history)

# The interp-ray commands that run this job (jobs/cli.py reads this line without importing the module).
CLI_COMMANDS = ("train-flint",)

log = logging.getLogger("interp_ray.train_flint")
MODEL_DIR = "flint"          # inside each Ray checkpoint: a complete interp-ray FLINT checkpoint (no relevance yet)


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker. Joint and BASE: f trains on this rank's images (a distributed sampler).
    Post hoc: this rank's shard of the train store streams in (``get_dataset_shard``), f never runs."""
    import ray.train
    import ray.train.torch

    cfg = FlintJobConfig.model_validate(config["job"])
    posthoc = cfg.flint.mode == "posthoc"
    rank, world = rank_and_world()
    # seeds, data (not post hoc), predictor (built or loaded frozen), then Ψ/h/d
    st = setup(cfg, flint_inputs(cfg, data=not posthoc))
    model = st.model
    opt, sched = make_flint_optimizer(model, cfg.train)
    start, model, inner, device = start_worker(model, opt, sched, cfg.run.log_level)
    history = start.history
    recon, layers = st.spec["recon_loss"], st.spec["layers"]
    if posthoc:
        shard = ray.train.get_dataset_shard("train")
        val = ray.train.get_dataset_shard("val")
        val_batches = kept(lambda: val.iter_batches(batch_size=512, batch_format="numpy"), keep=cfg.stream.keep_val)
    else:
        sampler = distributed_sampler(st.train_ds, world_size=world, rank=rank, shuffle=True, seed=cfg.train.seed)
        train_loader = st.train_ds.loader(cfg.train.batch_size, sampler=sampler)
        val_loader = st.val_ds.loader(512)

    for epoch in epochs(start, cfg.train.epochs, fail_at=cfg.train.fail_at_epoch, rank=rank):
        weights = st.schedule.weights(epoch + 1)  # the authors' epochs count from 1
        t0 = time.perf_counter()
        if posthoc:
            batches = shard_batches(shard, cfg.stream, cfg.train.batch_size, seed=cfg.train.seed, epoch=epoch,
                                    rank=rank)
            tr = flint_train_steps(model, row_steps(batches, layers), opt, device, weights, recon_loss=recon)
        else:
            sampler.set_epoch(epoch)
            tr = flint_train_epoch(model, train_loader, opt, device, weights, recon_loss=recon,
                                   max_shift=cfg.train.augment_shift)
        sched.step()
        va = (flint_evaluate_steps(inner, row_steps(val_batches(), layers), device, recon_loss=recon, weights=weights)
              if posthoc else flint_evaluate(inner, val_loader, device, recon_loss=recon, weights=weights))
        row = epoch_row(epoch, start.attempt, tr, va, weights, time.perf_counter() - t0, world)
        row["samples_per_rank"] = gather_from_ranks(tr["samples"], world)
        # DDP keeps the replicas identical (all-reduced gradients, same optimiser steps): equal digests show it.
        row["params_digest_per_rank"] = gather_from_ranks(state_digest(dict(inner.named_parameters())), world)
        history.append(row)
        report_epoch(row, history, checkpoint=rank == 0 and cfg.run.checkpoint_due(epoch, cfg.train.epochs),
                     state=lambda: training_state(inner, opt, sched, epoch),
                     save_model=lambda d: save_flint(
                         d / MODEL_DIR, inner, spec=st.spec, predictor_spec=st.predictor_spec,
                         class_names=config["class_names"], mode=cfg.flint.mode, tau=cfg.flint.tau,
                         data=cfg.data.model_dump(), predictor_digest=st.predictor_digest,
                         metrics={k: row[k] for k in ("epoch", "val_accuracy_f", "val_fidelity")}))
    return {"history": history}


def posthoc_stores(cfg: FlintJobConfig, spec: dict[str, Any] | None = None, *, address: str | None = None
                   ) -> dict[str, ActivationStore]:
    """The train and val stores post-hoc FLINT learns from: f's taps, its probabilities and the input, extracted
    by ``jobs.extract_activations`` (``ActivationExtractor``, the one code path that runs the classifier) into
    ``cfg.store`` with ``cfg.compute`` (``engine: local`` needs no Ray), or found complete there and reused.
    ``spec``: the resolved FLINT architecture (default: resolved from the predictor checkpoint)."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.explainers.flint.model import resolved_flint_spec
    from jobs.extract_activations import ExtractJobConfig, extract

    if spec is None:
        spec = resolved_flint_spec(load_classifier(cfg.flint.predictor_checkpoint).model, cfg.flint)
    stores = {}
    for split in ("train", "val"):
        ecfg = ExtractJobConfig(checkpoint=cfg.flint.predictor_checkpoint, layers=posthoc_layers(spec),
                                data=cfg.data, splits=[split], store=cfg.store, compute=cfg.compute)
        out = extract(ecfg, address=address)[0]
        stores[split] = ActivationStore.open(out["location"], key=out["key"])
    return stores


def run_name(cfg: FlintJobConfig) -> str:
    return cfg.run.name or (f"flint-{cfg.flint.mode}-{time.strftime('%Y%m%d-%H%M%S')}-"
                            f"{int(time.time() * 1e3) % 1000:03d}")


def prepare(cfg: FlintJobConfig) -> tuple[FlintJobConfig, FlintSetup]:
    """Resolve paths and build everything once in this process, so bad names, layers or a missing predictor
    checkpoint fail here (a ``UserError``) before Ray starts or any worker runs."""
    cfg.check_fidelity_trained()
    # Workers may not share this process's working directory: hand them an absolute predictor path.
    ckpt = cfg.flint.predictor_checkpoint
    if ckpt and not is_remote(ckpt):
        cfg = cfg.model_copy(update={"flint": cfg.flint.model_copy(
            update={"predictor_checkpoint": str(Path(ckpt.removeprefix("file://")).resolve())})})
    return cfg, setup(cfg, flint_inputs(cfg))


def train(cfg: FlintJobConfig, prepared: FlintSetup | None = None) -> dict[str, Any]:
    """Fit on Ray Train; then, in this process: global relevance + MAS on the training split, test metrics, the
    ground-truth attribute matches (scenes), the final checkpoint at ``cfg.output`` and, if enabled, the pictures."""
    from interp_ray.data import load_dataset

    if prepared is None:
        cfg, prepared = prepare(cfg)
    st = prepared
    (test_ds,) = align_to_predictor(cfg, [materialize(load_dataset(cfg.data.name, "test", **cfg.data.options),
                                                      cfg.materialize_rows)], ["test"])
    loop_config = {"job": cfg.model_dump(mode="json"), "class_names": list(st.train_ds.class_names)}
    stores = posthoc_stores(cfg, st.spec) if cfg.flint.mode == "posthoc" else None
    with data_progress_bars(False):   # the datasets keep the context they are made in
        # post hoc, both stores stream to the workers; joint and BASE read images
        datasets = store_datasets(stores, store_columns(st.spec["layers"]), cfg.stream) if stores else {}
        result = make_trainer(train_func, loop_config, name=run_name(cfg), scaling=cfg.scaling, run=cfg.run,
                              use_gpu=resolve_use_gpu(cfg.scaling.use_gpu), epochs=cfg.train.epochs,
                              **datasets).fit()
    with final_checkpoint(result) as (d, history):
        explainer = FlintExplainer.load(str(d / MODEL_DIR))
    pairs = cfg.pictures.max_pairs
    extra = (finalize_from_store(explainer.flint, stores["train"], cfg.flint, seed=21, max_pairs=pairs) if stores
             else finalize(explainer.flint, st.train_ds, cfg.flint, seed=21, max_pairs=pairs))
    explainer.mas_images = extra["mas_images"]
    # the report reads CNS at flint.tau, which need not be among flint.taus
    test = evaluate_model(explainer.flint, test_ds, taus=sorted({*cfg.flint.taus, cfg.flint.tau}))
    matches = None
    if "attributes" in test_ds.get_batch([0]):
        matches = scenes_attribute_table(*attributes_with_ground_truth(explainer.flint, test_ds),
                                         explainer.attribute_names)
        explainer.config["attribute_matches"] = matches
    explainer.config["metrics"] = {"test": test, "epochs": len(history)}
    explainer.config["am"] = cfg.pictures.am.model_dump(mode="json")
    if cfg.pictures.stored:   # grown once here, so a served or drawn explanation composes its sheet from them
        t0 = time.perf_counter()
        explainer.grow_pictures(extra["pairs"], cfg.pictures.am)
        log.info("FLINT pictures: %d attributes and %d pairs grown in %.1f s", len(explainer.mas_images),
                 len(extra["pairs"]), time.perf_counter() - t0)
    explainer.save(cfg.output)
    out = {"test": test, "history": history, "checkpoint": str(cfg.output), "run_path": result.path,
           "attribute_matches": matches, "global": explainer.global_interpretation(cfg.flint.tau),
           "worker_history": worker_history(result)}
    if cfg.pictures.enabled:
        from interp_ray.explainers.flint.plots import write_global_pictures, write_local_sheet

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
    check_storage_paths(run__storage_path=cfg.run.storage_path, output=cfg.output)
    init_ray(args.address)
    out = train(cfg, prepared)
    t = out["test"]
    tau = cfg.flint.tau
    cns = t.get(f"cns_{tau:g}", float("nan"))
    print(f"flint ({cfg.flint.mode}) on {cfg.data.name}: test accuracy f {t['accuracy_f']:.4f}, "
          f"g {t['accuracy_g']:.4f}, fidelity {t['fidelity']:.4f}, CNS(tau={tau:g}) {cns:.3f} "
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
