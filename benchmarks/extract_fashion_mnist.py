"""The activation store over all 70,000 Fashion-MNIST images against a plain single-process torch loop, in one run.

    python -m benchmarks.extract_fashion_mnist [--checkpoint outputs/fashion_mnist] [--layers relu3] [--threads 1]

The classifier is the one configs/fashion_mnist.yaml trains (``--checkpoint``; ``--random`` builds an untrained
flint_mnist instead: throughput does not depend on the weights). Both contenders go over the same rows — the train,
val and test splits, 55,000 + 5,000 + 10,000 — with the same model, layers, batch size and torch thread count.

* plain: ``dataset.iter_batches`` → ``model.activations`` → softmax → numpy, nothing written; run before and after
  the Ray job and averaged, because the shared cores' load drifts.
* store: the real job (``jobs.extract_activations.extract``: loader tasks → extractor actor → writer actor →
  Parquet store) into a fresh store root, so every shard is computed; it also pays for Parquet encoding and
  writing, which the plain loop does not.

Figures (``name: value`` lines): ``plain_rows_per_s`` (and ``_before`` / ``_after``), ``store_rows_per_s`` (70,000
over the job's wall time after ray.init, start-up included), ``store_steady_rows_per_s`` (from the pipeline's first
extracted rows to its last: throughput without start-up), ``store_startup_s`` (until those first rows: one pipeline
fills all three splits, so one actor start and checkpoint load), ``store_wall_s``, ``plain_wall_s``, ``ratio_total`` and
``ratio_steady`` (store over plain), the CPU seconds per 1000 rows of each side (for the store: the whole process
tree, driver and every Ray daemon and worker) and ``ratio_cpu`` (plain CPU per row over the store's). A ``split_*``
line per split gives its rows and when, after the pipeline's start, its first rows and its last part came.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.extract import timed_plain_loop

SPLITS = ("train", "val", "test")


def random_checkpoint(path: Path) -> str:
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.data.fashion_mnist import CLASS_NAMES
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    save_classifier(path, build_model("flint_mnist", **opts), model_name="flint_mnist", model_options=opts,
                    class_names=list(CLASS_NAMES))
    return str(path)


def plain_loop(checkpoint: str, layers: list[str], data: dict, batch_size: int, threads: int) -> dict[str, float]:
    """Rows, wall seconds and CPU seconds of the obvious single-process loop over every split."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.data import load_dataset

    torch.set_num_threads(threads)
    model = load_classifier(checkpoint).model
    datasets = [load_dataset("fashion_mnist", s, **data) for s in SPLITS]  # file reading is not timed on either side
    return timed_plain_loop(model, datasets, layers, batch_size)


def store_job(checkpoint: str, root: str, layers: list[str], data: dict, args) -> list[dict]:
    from jobs.extract_activations import ExtractJobConfig, extract

    cfg = ExtractJobConfig.model_validate({
        "checkpoint": checkpoint, "layers": layers, "splits": list(SPLITS),
        "data": {"name": "fashion_mnist", "options": data},
        "store": {"root": root, "shard_rows": args.shard_rows, "compression": "snappy"},
        "compute": {"engine": "ray", "batch_size": args.batch_size, "actors": 1, "num_cpus": 1,
                    "torch_threads": args.threads, "load_num_cpus": 0.5, "write_num_cpus": 0.25, "num_gpus": 0},
        "progress_every": 4})
    return extract(cfg)


def summarise(plain_before: dict, plain_after: dict, outs: list[dict], store_wall: float, store_cpu: float) -> dict:
    """The figures, from the two plain runs and the store job's per-split results."""
    plain_rate = [p["rows"] / p["wall_s"] for p in (plain_before, plain_after)]
    plain = sum(plain_rate) / 2
    plain_cpu = sum(p["cpu_s"] / p["rows"] for p in (plain_before, plain_after)) / 2 * 1000
    rows = sum(o["rows"] for o in outs)
    if not plain_before["rows"] == plain_after["rows"] == rows:
        raise RuntimeError(f"the contenders saw different rows: plain {plain_before['rows']} / {plain_after['rows']}, "
                           f"store {rows}")
    # One pipeline fills every split: steady is its throughput from the first extracted rows (of any split) to the
    # last, the very first batch not counted; start-up is the time until that first batch.
    began = [o for o in outs if o["first_at"] is not None]
    first = min(began, key=lambda o: o["first_at"])
    window = max(o["last_at"] for o in began) - first["first_at"]
    steady_rows = sum(o["steady_rows"] + o["first_rows"] for o in began) - first["first_rows"]
    steady = steady_rows / window if window > 0 else float("nan")
    total = rows / store_wall
    store_cpu_k = store_cpu / rows * 1000
    return {"rows": rows, "plain_rows_per_s_before": plain_rate[0], "plain_rows_per_s_after": plain_rate[1],
            "plain_rows_per_s": plain, "plain_wall_s": (plain_before["wall_s"] + plain_after["wall_s"]) / 2,
            "store_rows_per_s": total, "store_steady_rows_per_s": steady,
            "store_wall_s": store_wall, "store_startup_s": first["startup_s"],
            "ratio_total": total / plain, "ratio_steady": steady / plain,
            "plain_cpu_s_per_1000_rows": plain_cpu, "store_cpu_s_per_1000_rows": store_cpu_k,
            "ratio_cpu": plain_cpu / store_cpu_k}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="outputs/fashion_mnist")
    p.add_argument("--random", action="store_true", help="an untrained flint_mnist instead of --checkpoint")
    p.add_argument("--layers", default="relu3", help="comma-separated layers (relu2 is FLINT's 32×14×14 block)")
    p.add_argument("--root", default=None, help="Fashion-MNIST directory (default: Debian's)")
    p.add_argument("--val-rows", type=int, default=None, help="validation rows (default: the dataset's 5,000)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--shard-rows", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1, help="torch threads, both contenders (the actor has 1 CPU)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    from benchmarks.extract import TreeSampler, benchmark_env, du, print_figures, scratch_dir, start_ray

    benchmark_env()  # both sides at nice 0

    with scratch_dir(args.workdir, "interp-ray-fmnist-bench-") as work:
        layers = [s for s in args.layers.split(",") if s]
        data = {**({"root": args.root} if args.root else {}),
                **({"val_rows": args.val_rows} if args.val_rows else {})}
        checkpoint = random_checkpoint(work / "flint_mnist") if args.random else os.path.abspath(args.checkpoint)
        print(f"checkpoint: {'random flint_mnist' if args.random else checkpoint}\nlayers: {','.join(layers)}\n"
              f"batch_size: {args.batch_size}\nshard_rows: {args.shard_rows}\ntorch_threads: {args.threads}\n"
              f"cpus: {os.cpu_count()}\nload_average_at_start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
              flush=True)
        before = plain_loop(checkpoint, layers, data, args.batch_size, args.threads)
        print(f"plain_rows_per_s_before: {before['rows'] / before['wall_s']:.1f}", flush=True)
        import ray

        ours = not ray.is_initialized()  # a caller's cluster (the tests') is left running
        sampler = TreeSampler(os.getpid())
        sampler.start()
        ray_init = start_ray(os.cpu_count() or 2)
        t0, c0 = time.perf_counter(), sampler.timeline[-1][1]
        outs = store_job(checkpoint, str(work / "store"), layers, data, args)
        store_wall = time.perf_counter() - t0
        sampler.stop()
        store_cpu = sampler.timeline[-1][1] - c0
        store_mib = sum(du(o["location"]) for o in outs) / 2**20
        if ours:
            ray.shutdown()
        after = plain_loop(checkpoint, layers, data, args.batch_size, args.threads)
        figures = summarise(before, after, outs, store_wall, store_cpu)
        figures.update({"ray_init_s": ray_init, "store_mib": store_mib})
        for o in outs:
            # one pipeline: every split's clock starts with it, and the splits' rows follow one another
            print(f"split_{o['split']}: {o['rows']} rows, first rows {o['startup_s'] or 0:.1f} s and last part "
                  f"{o['seconds']:.1f} s after the pipeline's start")
        print_figures(figures, digits=1)
        print(f"load_average_at_end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return figures


if __name__ == "__main__":
    main()
