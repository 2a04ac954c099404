"""The store job at growing sizes into S3 (moto on loopback), then one epoch of InterpNET streaming each store.

    python -m benchmarks.store_scale [--sizes 70000,300000,1000000] [--batches 50] [--kill-at 0.5]

Per size N, in a fresh driver process each (its own ``ray.init``, so every peak is that size's alone):

1. extraction: ``python -m jobs.extract_activations`` (the real job, Ray engine) of a seeded, untrained scenes CNN
   at 32×32 over N generated scenes (``gap`` 32 floats, ``relu_fc`` 64 floats, the softmax, the 5 reference sentences
   per row) into ``s3://<bucket>/stores/…`` on a moto server on 127.0.0.1 (``tests/moto_s3.py``);
2. listing: opening the finished store (manifest read + part listing + footers), timed, with the manifest's size;
3. training: one epoch of InterpNET_2 in store mode through Ray Train (``jobs.train_explainer.train``, one worker
   streaming the store from S3), ``--batches`` batches of 256 rows (0: every row).

Printed per size (``name: value`` lines, prefixed ``N.``): extraction rows/s, part count, manifest bytes, listing
seconds, the extraction's and training's peak RSS per process (driver; Ray workers by title), training rows/s over
the epoch and over its streaming alone, with the stream's start-up (``first_batch_s``) apart.
Then the ratios largest ÷ smallest size.

``--kill-at F``: at the largest size the extraction is killed with SIGKILL (its whole process tree: driver, raylet,
workers) once F of its parts are in S3, then rerun; the rerun must compute only what is missing, and every row
index 0..N-1 must be present exactly once in the store. Prints ``kill.*`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARD_ROWS = 8192


def extract_config(work: Path, bucket: str, size: int, args) -> dict[str, Any]:
    return {"checkpoint": str(work / "cnn"), "layers": ["gap", "relu_fc"], "keep": ["sentences"], "splits": ["train"],
            "data": {"name": "scenes", "options": {"n": size, "size": 32, "seed": 0}},
            "store": {"root": f"s3://{bucket}/stores", "shard_rows": args.shard_rows, "compression": "zstd"},
            "compute": {"engine": "ray", "batch_size": 2048, "actors": 1, "num_cpus": 1, "load_num_cpus": 0.5,
                        "write_num_cpus": 0.25, "num_gpus": 0},
            "progress_every": 10}


def train_config(work: Path, bucket: str, size: int, args) -> dict[str, Any]:
    from benchmarks.train_from_store import job_for

    job = job_for(size, argparse.Namespace(workdir=str(work), batches=args.batches, read_ahead_mib=None,
                                           embed_dim=32, hidden_dim=64, epochs=1, pair_batch=32),
                  run_name=f"scale-{size}-{uuid.uuid4().hex[:6]}").model_dump()
    ext = extract_config(work, bucket, size, args)
    job["source"].update({"rows": {"train": size, "val": 256}, "store": ext["store"], "compute": ext["compute"]})
    return job


# --- one size, in a child process --------------------------------------------------------------------------------

def measured(cfg_path: str, config_class: type, step: Callable[[Any], Any]) -> tuple[Any, float, dict[str, float]]:
    """``step(config)`` in this process with a Ray of its own, the config read from the JSON file: its result, its
    wall seconds (after ``ray.init``) and the peak RSS of each process of the tree (driver; Ray's by title)."""
    from benchmarks.extract_resnet50 import ProcessPeaks
    from jobs.common import init_ray

    cfg = config_class.model_validate(json.loads(Path(cfg_path).read_text()))
    peaks = ProcessPeaks(os.getpid())
    peaks.start()
    init_ray(None)
    t0 = time.perf_counter()
    out = step(cfg)
    return out, time.perf_counter() - t0, peaks.stop()


def child_extract(cfg_path: str) -> dict[str, Any]:
    from jobs.extract_activations import ExtractJobConfig, extract

    (out,), wall, peaks = measured(cfg_path, ExtractJobConfig, extract)
    return {"rows": out["rows"], "computed_rows": out["computed_rows"], "wall_s": wall,
            "rows_per_s": out["computed_rows"] / wall, "steady_rows_per_s": out["steady_rows_per_s"],
            "location": out["location"], "peaks": peaks}


def child_train(cfg_path: str) -> dict[str, Any]:
    from interp_ray.explainers.interpnet.config import InterpNETTrainJob
    from jobs.train_explainer import train

    out, wall, peaks = measured(cfg_path, InterpNETTrainJob, train)
    (h,) = out["history"][-1:]
    rows = sum(h["rows_per_rank"])
    # the epoch = the stream's start-up (until its first batch) + streaming; apart, because a short epoch's rate is
    # mostly start-up, and the streaming rate is what a long epoch runs at
    return {"rows": rows, "epoch_s": h["epoch_s"], "wall_s": wall, "rows_per_s": rows / h["epoch_s"],
            "first_batch_s": h["first_batch_s"], "stream_rows_per_s": rows / max(h["stream_s"], 1e-9),
            "peaks": peaks}


def listing(location: str) -> dict[str, Any]:
    """Seconds to open the store (manifest + part listing + checks) and list its parts; the manifest's bytes."""
    from interp_ray.store import ActivationStore, part_files, resolve_location

    t0 = time.perf_counter()
    store = ActivationStore.open(location)
    opened = time.perf_counter() - t0
    fs, directory = resolve_location(location)
    t0 = time.perf_counter()
    parts = part_files(fs, directory)
    listed = time.perf_counter() - t0
    with fs.open_input_stream(f"{directory}/_manifest.json") as f:
        manifest_bytes = len(f.read())
    return {"open_s": opened, "list_s": listed, "parts": len(parts), "manifest_bytes": manifest_bytes,
            "rows": len(store)}


def rows_exactly_once(location: str) -> tuple[int, int, int]:
    """(rows read, distinct indices, indices missing from 0..len-1) over the whole store."""
    import numpy as np

    from interp_ray.store import ActivationStore

    store = ActivationStore.open(location)
    seen = np.zeros(len(store), dtype=np.int64)
    total = 0
    for batch in store.iter_batches(65536, columns=["index"]):
        np.add.at(seen, batch["index"], 1)
        total += len(batch["index"])
    return total, int((seen > 0).sum()), int((seen == 0).sum()) + int((seen > 1).sum())


# --- the parent ----------------------------------------------------------------------------------------------------

def run_child(mode: str, cfg: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    path = work / f"{mode}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.store_scale", f"--child-{mode}", str(path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def tree(pid: int) -> list[int]:
    from benchmarks.extract import descendants

    return descendants(pid)


def killed_run(cfg: dict[str, Any], work: Path, env: dict[str, str], fraction: float) -> dict[str, Any]:
    """Start the extraction, SIGKILL its whole process tree once ``fraction`` of its parts exist, rerun it."""
    from interp_ray.store import part_files, resolve_location

    parts_total = -(-cfg["data"]["options"]["n"] // cfg["store"]["shard_rows"])
    path = work / "kill.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.store_scale", "--child-extract", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)
    location, seen = None, set()
    try:
        while proc.poll() is None:
            seen.update(tree(proc.pid))  # every process it started, by pid: Ray's daemons detach from the group
            if location is None:
                location = find_store(cfg)
            if location is not None:
                fs, directory = resolve_location(location)
                done = len(part_files(fs, directory))
                if done >= fraction * parts_total:
                    break
            time.sleep(0.1)  # a small store's parts land a few per second: a slow poll can miss "partway" entirely
        else:
            raise RuntimeError(f"the extraction finished (exit {proc.returncode}) before {fraction:.0%} of its parts")
        seen.update(tree(proc.pid))
        for pid in sorted(seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(2)
    fs, directory = resolve_location(location)
    at_kill = len(part_files(fs, directory))
    rerun = run_child("extract", cfg, work, env)
    total, distinct, bad = rows_exactly_once(location)
    return {"parts_at_kill": at_kill, "parts_total": parts_total, "rerun_computed_rows": rerun["computed_rows"],
            "rows_read": total, "distinct_indices": distinct, "indices_missing_or_repeated": bad,
            "every_row_once": total == distinct == cfg["data"]["options"]["n"] and bad == 0}


def find_store(cfg: dict[str, Any]) -> str | None:
    """The store directory under the config's root once its manifest exists (its key is not known in advance)."""
    from interp_ray.store import resolve_location

    fs, base = resolve_location(cfg["store"]["root"])
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError:
        return None
    for info in infos:
        if info.path.endswith("/_manifest.json"):
            manifest = json.loads(fs.open_input_stream(info.path).read())
            if manifest["rows"] == cfg["data"]["options"]["n"]:
                return cfg["store"]["root"].split("://")[0] + "://" + info.path.rsplit("/", 1)[0]
    return None


def fmt_peaks(prefix: str, peaks: dict[str, float]) -> list[str]:
    return [f"{prefix}[{title}]: {mib:.0f}" for title, mib in sorted(peaks.items(), key=lambda kv: -kv[1])][:6]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="70000,300000,1000000")
    p.add_argument("--batches", type=int, default=50, help="training batches of 256 rows in the epoch (0: all)")
    p.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    p.add_argument("--kill-at", type=float, default=None, help="kill -9 the largest size's job at this fraction")
    p.add_argument("--no-train", action="store_true", help="extraction and listing only")
    p.add_argument("--workdir", default=None)
    p.add_argument("--child-extract", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("RAY_worker_niceness", "0")
    if args.child_extract or args.child_train:
        out = child_extract(args.child_extract) if args.child_extract else child_train(args.child_train)
        print("RESULT " + json.dumps(out), flush=True)
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from moto_s3 import CREDENTIALS, create_bucket, moto_server

    from benchmarks.train_from_store import make_classifier

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="interp-ray-store-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    make_classifier(work / "cnn")
    results: dict[str, Any] = {"sizes": {}}
    print(f"cpus: {os.cpu_count()}\nload_average_at_start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    with moto_server(log=work / "moto.log") as endpoint:
        bucket = f"scale-{uuid.uuid4().hex[:8]}"
        create_bucket(endpoint, bucket)
        env = {**os.environ, **CREDENTIALS, "INTERP_RAY_S3_ENDPOINT": endpoint,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        os.environ.update({**CREDENTIALS, "INTERP_RAY_S3_ENDPOINT": endpoint})
        for size in sizes:
            cfg = extract_config(work, bucket, size, args)
            if args.kill_at is not None and size == sizes[-1]:
                k = killed_run(cfg, work, env, args.kill_at)
                results["kill"] = k
                for key, v in k.items():
                    print(f"kill.{key}: {v}", flush=True)
                continue
            ext = run_child("extract", cfg, work, env)
            lst = listing(ext["location"])
            r = {"extract_rows_per_s": ext["rows_per_s"], "extract_steady_rows_per_s": ext["steady_rows_per_s"],
                 "extract_wall_s": ext["wall_s"], **{f"store_{k}": v for k, v in lst.items()},
                 "extract_driver_peak_rss_mib": ext["peaks"].get("driver", float("nan")),
                 "extract_tree_peak_rss_mib": ext["peaks"]["sum_of_process_peaks"]}
            lines = fmt_peaks(f"{size}.extract_peak_rss_mib", ext["peaks"])
            if not args.no_train:
                tr = run_child("train", train_config(work, bucket, size, args), work, env)
                r.update({"train_rows_per_s": tr["rows_per_s"], "train_rows": tr["rows"],
                          "train_first_batch_s": tr["first_batch_s"],
                          "train_stream_rows_per_s": tr["stream_rows_per_s"],
                          "train_driver_peak_rss_mib": tr["peaks"].get("driver", float("nan")),
                          "train_tree_peak_rss_mib": tr["peaks"]["sum_of_process_peaks"]})
                lines += fmt_peaks(f"{size}.train_peak_rss_mib", tr["peaks"])
            results["sizes"][size] = r
            for key, v in r.items():
                print(f"{size}.{key}: {v:.3f}" if isinstance(v, float) else f"{size}.{key}: {v}", flush=True)
            for line in lines:
                print(line, flush=True)
            print(f"{size}.load_average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    measured = list(results["sizes"].values())
    if len(measured) >= 2:
        small, large = measured[0], measured[-1]
        for key in ("extract_rows_per_s", "store_open_s", "store_manifest_bytes", "extract_driver_peak_rss_mib",
                    "extract_tree_peak_rss_mib", "train_rows_per_s", "train_first_batch_s", "train_stream_rows_per_s",
                    "train_driver_peak_rss_mib"):
            if key in small and key in large:
                print(f"ratio_{key}_largest_over_smallest: {large[key] / small[key]:.3f}")
    return results


if __name__ == "__main__":
    main()
