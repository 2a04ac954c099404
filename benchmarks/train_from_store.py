"""InterpNET trained through Ray Train from activation stores of growing size: is training bounded by the store?

    python -m benchmarks.train_from_store [--sizes 10000,40000,160000] [--batches 20] [--epochs 2] [--json out.json]

For each size N the extraction job (``ActivationExtractor``, local engine, reused when complete) writes a store of N
generated scenes rows (a seeded, untrained scenes CNN at 32×32: its ``gap`` layer, ``relu_fc`` and the softmax, plus
the 5 reference sentences per row). Then ``jobs.train_explainer.train`` trains InterpNET_2 in store mode (h_0 = gap,
h_1 = relu_fc, p = the softmax; no classifier phase) on Ray Train, 1 worker streaming its shard with a local shuffle
buffer, the same ``--batches`` batches of 256 rows in every epoch at every size (a 160k epoch would take too long on
this box; the store is streamed either way). Each size runs in a fresh driver process (its own ``ray.init``), so
the driver's peak RSS is that size's alone. Printed per size: rows/s of the worker over the epochs after the first
(steady state: the first carries Ray Data's start-up), the worker's peak RSS, the driver's peak RSS; then the ratios
largest ÷ smallest. Goals: rows/s within ±20 % across sizes, peak RSS growing ≤ 1.2×.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

VAL_ROWS = 256


def make_classifier(path: Path) -> None:
    """A seeded, untrained scenes CNN: the benchmark measures the streaming, not what the explainer learns."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    if (path / "config.json").is_file():
        return
    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 8, "hidden": 64}
    save_classifier(path, build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                    class_names=[str(i) for i in range(12)], data={"name": "scenes"})  # by index


def job_for(size: int, args: argparse.Namespace, *, run_name: str | None = None):
    from interp_ray.explainers.interpnet.config import InterpNETTrainJob

    work = Path(args.workdir).resolve()
    return InterpNETTrainJob.model_validate({
        "source": {"checkpoint": str(work / "cnn"), "data": {"name": "scenes", "options": {"size": 32, "seed": 0}},
                   "rows": {"train": size, "val": VAL_ROWS}, "keep": ["sentences"],
                   "layers": ["gap", "relu_fc"], "store": {"root": str(work / "stores"), "shard_rows": 2048},
                   "compute": {"engine": "local", "batch_size": 500}},
        "stream": {"batch_rows": 256, "shuffle_buffer": 2048, "max_batches": args.batches or None,
                   "read_ahead_mib": args.read_ahead_mib},
        "explainer": {"variant": "interpnet_2", "classifier": "store", "feature_layer": "gap",
                      "layers": ["relu_fc"], "embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim,
                      "max_len": 30},
        "train": {"epochs": args.epochs, "batch_size": args.pair_batch, "lr": 5e-4, "seed": 0},
        "scaling": {"num_workers": 1, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        "run": {"storage_path": str(work / "runs"), "name": run_name, "checkpoints_to_keep": 1},
        "output": str(work / "out" / f"interpnet_{size}")})


def measure(history: list[dict[str, Any]]) -> dict[str, float]:
    """Steady rows/s (epochs after the first; all of them when there is one): over whole epochs, and over the
    streaming alone (first batch to the shard's end: without each epoch's fixed start-up and validation); the
    worker's peak RSS."""
    steady = history[1:] or history
    rows = sum(sum(h["rows_per_rank"]) for h in steady)
    seconds = sum(h["epoch_s"] for h in steady)
    stream = sum(h.get("stream_s", 0.0) for h in steady)
    return {"rows_per_s": rows / seconds if seconds else float("nan"),
            "stream_rows_per_s": rows / stream if stream else float("nan"),
            "first_batch_s": sum(h.get("first_batch_s", 0.0) for h in steady) / len(steady),
            "rows_per_epoch": sum(history[-1]["rows_per_rank"]), "epoch_s": seconds / len(steady),
            "worker_peak_rss_mib": max(max(h["peak_rss_mib_per_rank"]) for h in history),
            # private memory apart from the object store's shared pages mapped into the worker (jobs.train_explainer
            # .memory_mib): RSS alone grows with the store until the arena has been touched, a leak does not stop
            "worker_peak_anon_mib": _peak(history, "peak_anon_mib_per_rank"),
            "worker_shmem_mib": _peak(history, "shmem_mib_per_rank")}


def _peak(history: list[dict[str, Any]], key: str) -> float:
    values = [v for h in history for v in h.get(key) or []]
    return max(values) if values else float("nan")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One size, in this (fresh) process: train on Ray Train and measure."""
    from jobs.common import init_ray
    from jobs.train_explainer import peak_rss_mib, train

    init_ray(num_cpus=args.num_cpus) if args.num_cpus else init_ray()
    t0 = time.perf_counter()
    out = train(job_for(args.child, args, run_name=f"bench-{args.child}-{time.time_ns()}"))
    return {"size": args.child, **measure(out["history"]), "driver_peak_rss_mib": peak_rss_mib(),
            "fit_s": time.perf_counter() - t0}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    small, large = rows[0], rows[-1]
    rates = [r["rows_per_s"] for r in rows]
    mean = sum(rates) / len(rates)
    stream = [r.get("stream_rows_per_s", float("nan")) for r in rows]
    return {"sizes": [r["size"] for r in rows], "rows_per_s_spread": max(abs(x - mean) / mean for x in rates),
            "rows_per_s_ratio": large["rows_per_s"] / small["rows_per_s"],
            "stream_rows_per_s_ratio": stream[-1] / stream[0],
            "worker_rss_ratio": large["worker_peak_rss_mib"] / small["worker_peak_rss_mib"],
            "worker_anon_ratio": large.get("worker_peak_anon_mib", float("nan"))
            / small.get("worker_peak_anon_mib", float("nan")),
            "driver_rss_ratio": large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,40000,160000", help="train rows of each store (comma-separated)")
    p.add_argument("--batches", type=int, default=20, help="batches of 256 rows per epoch, at every size (0: whole "
                                                           "epochs, every row of the store)")
    p.add_argument("--read-ahead-mib", type=int, default=None, help="stream.read_ahead_mib (None: Ray's default)")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--pair-batch", type=int, default=32, help="(image, sentence) pairs per optimiser step")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workdir", default="outputs/bench_train_from_store", help="classifier, stores, runs")
    p.add_argument("--num-cpus", type=int, default=None, help="each driver's ray.init(num_cpus=…)")
    p.add_argument("--datasource", choices=("v1", "v2"), default=None,
                   help="Ray Data's Parquet read path (RAY_DATA_USE_DATASOURCE_V2; default: Ray's, v2 in 2.60)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return {}
    from jobs.train_explainer import role_stores

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir)
    make_classifier(work / "cnn")
    for size in sizes:   # the extraction job, in this process: the children find the stores complete
        t0 = time.perf_counter()
        stores = role_stores(job_for(size, args), ("train", "val"))
        print(f"store {size}: {len(stores['train'])} rows at {stores['train'].location} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for size in sizes:
        cmd = [sys.executable, "-m", "benchmarks.train_from_store", "--child", str(size), "--batches",
               str(args.batches), "--epochs", str(args.epochs), "--workdir", str(args.workdir), "--embed-dim",
               str(args.embed_dim), "--hidden-dim", str(args.hidden_dim), "--pair-batch", str(args.pair_batch)]
        if args.read_ahead_mib:
            cmd += ["--read-ahead-mib", str(args.read_ahead_mib)]
        if args.num_cpus:
            cmd += ["--num-cpus", str(args.num_cpus)]
        env = dict(os.environ)
        if args.datasource:
            env["RAY_DATA_USE_DATASOURCE_V2"] = "1" if args.datasource == "v2" else "0"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"size {size} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        rows.append(r)
        print(f"size {size}: {r['rows_per_s']:.0f} rows/s ({r['rows_per_epoch']} rows per epoch, "
              f"{r['epoch_s']:.1f} s per epoch; streaming {r['stream_rows_per_s']:.0f} rows/s after "
              f"{r['first_batch_s']:.1f} s to the first batch); worker peak RSS {r['worker_peak_rss_mib']:.0f} MiB "
              f"(private peak {r['worker_peak_anon_mib']:.0f} MiB, object-store pages mapped "
              f"{r['worker_shmem_mib']:.0f} MiB); "
              f"driver peak RSS {r['driver_peak_rss_mib']:.0f} MiB", flush=True)
    s = summarise(rows)
    print(f"rows_per_s largest/smallest: {s['rows_per_s_ratio']:.3f} (largest deviation from the mean "
          f"{s['rows_per_s_spread'] * 100:.1f}%, goal ±20%)")
    print(f"stream_rows_per_s largest/smallest: {s['stream_rows_per_s_ratio']:.3f}")
    print(f"worker_peak_rss largest/smallest: {s['worker_rss_ratio']:.3f} (goal ≤ 1.2)")
    print(f"worker_peak_private largest/smallest: {s['worker_anon_ratio']:.3f} (goal ≤ 1.2; RSS less the object "
          f"store's shared pages)")
    print(f"driver_peak_rss largest/smallest: {s['driver_rss_ratio']:.3f} (goal ≤ 1.2)")
    result = {"rows": rows, **s}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
