"""Per-epoch time of Ray Train (1 worker) against the same loop run plainly in one process.

    python -m benchmarks.train_overhead [--dataset scenes --model scenes_cnn --epochs 4 --rows 3000]

Both sides run the same ``interp_ray.training.train_epoch`` on the same data, model and seed in this run. The plain
loop runs twice, before and after the Ray Train run, so a load change during the run shows up as a gap between the
two plain figures instead of silently biasing the ratio. The Ray side's per-epoch time is measured inside the worker
(the epoch's work, the report and its checkpoint), from the previous report's return to the next report's return;
start-up is printed apart. The in-worker split (the epoch's own work vs. the whole epoch) is measured at the same
moments, so no load change can bias it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from interp_ray.config import ClassifierJobConfig
from interp_ray.data import load_dataset
from interp_ray.models import build_model
from interp_ray.training import distributed_sampler, evaluate, make_optimizer, seed_everything, train_epoch


def plain_epochs(cfg: ClassifierJobConfig) -> list[float]:
    from jobs.train_classifier import model_options

    seed_everything(cfg.train.seed)
    train_ds = load_dataset(cfg.data.name, "train", **cfg.data.options)
    val_ds = load_dataset(cfg.data.name, "val", **cfg.data.options)
    model = build_model(cfg.model.name, **model_options(cfg, train_ds))
    opt, sched = make_optimizer(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                schedule=cfg.train.schedule, epochs=cfg.train.epochs)
    sampler = distributed_sampler(train_ds, world_size=1, rank=0, shuffle=True, seed=cfg.train.seed)
    loader, val_loader = train_ds.loader(cfg.train.batch_size, sampler=sampler), val_ds.loader(512)
    times = []
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        train_epoch(model, loader, opt, torch.device("cpu"), max_shift=cfg.train.augment_shift)
        sched.step()
        evaluate(model, val_loader, torch.device("cpu"))
        times.append(time.perf_counter() - t0)
    return times


def ray_epochs(cfg: ClassifierJobConfig) -> tuple[list[float], float]:
    from jobs.train_classifier import train

    t0 = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - t0
    return out["worker_history"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="scenes")
    p.add_argument("--model", default="scenes_cnn")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rows", type=int, default=3000, help="training rows (scenes only)")
    p.add_argument("--storage", default="/tmp/interp-ray-bench-runs")
    p.add_argument("--checkpoint-every", type=int, default=1, help="run.checkpoint_every of the Ray side")
    args = p.parse_args()
    torch.set_num_threads(1)  # the Ray worker gets one CPU; give the plain loop the same
    options = {"n": args.rows} if args.dataset == "scenes" else {}
    cfg = ClassifierJobConfig.model_validate({
        "data": {"name": args.dataset, "options": options}, "model": {"name": args.model},
        "train": {"epochs": args.epochs},
        "run": {"storage_path": args.storage, "checkpoint_every": args.checkpoint_every},
        "output": f"{args.storage}/out"})

    load_before = os.getloadavg()[0]
    plain_before = plain_epochs(cfg)
    from jobs.common import init_ray

    init_ray(num_cpus=2)
    rows, wall = ray_epochs(cfg)
    import ray

    ray.shutdown()  # the second plain phase runs without Ray's daemons, like the first
    plain_after = plain_epochs(cfg)
    plain = plain_before[1:] + plain_after[1:]
    ray_times = [h["epoch_wall_s"] for h in rows]
    # The first epoch of each side pays warm-up (allocator, thread pools); compare the steady state.
    p_med, r_med = statistics.median(plain), statistics.median(ray_times[1:] or ray_times)
    steady = rows[1:] or rows
    # Inside the worker, at the same moments: the epoch's own work vs. the whole epoch as Ray Train runs it. Load
    # changes between the plain and the Ray phases do not bias this split.
    work, report = statistics.median(h["epoch_s"] for h in steady), statistics.median(h["report_s"] for h in steady)
    print(f"machine: {torch.get_num_threads()} torch thread(s), cuda={torch.cuda.is_available()}")
    print(f"load_average_before_after: {load_before:.1f} {os.getloadavg()[0]:.1f}")
    print(f"plain_epoch_s_before_after: {statistics.median(plain_before[1:] or plain_before):.3f} "
          f"{statistics.median(plain_after[1:] or plain_after):.3f}")
    print(f"plain_epoch_s: {p_med:.3f}")
    print(f"ray_train_epoch_s: {r_med:.3f}")
    print(f"ray_train_startup_and_teardown_s: {wall - sum(ray_times):.1f}")
    print(f"checkpoint_every: {args.checkpoint_every}")
    print(f"worker_epoch_work_s: {work:.3f}")
    print(f"worker_report_s (median): {report:.3f}")
    print(f"overhead_ratio (ray/plain): {r_med / p_med:.3f}")
    print(f"in_worker_ratio (epoch wall / epoch work): {r_med / work:.3f}")


if __name__ == "__main__":
    main()
