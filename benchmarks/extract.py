"""Images/s of the Ray Data extraction job against a plain single-process PyTorch loop, side by side in one run.

    python -m benchmarks.extract [--rows 8192] [--batch-size 256] [--shard-rows 1024] [--threads 2]
    python -m benchmarks.extract --stream --rows 100000     # the streaming run: images/s and peak memory only

Same data (generated 64×64 scenes), same model (the scenes CNN; random weights unless ``--checkpoint``: throughput
does not depend on them), same layers (relu4 128×8×8 and relu_fc 256), same torch thread count. The plain loop is
``dataset.iter_batches`` → ``model.activations`` → numpy, nothing written; it runs before and after the Ray job and
the two are averaged, because this machine's cores are shared and its load drifts. The Ray job is the real one
(``jobs.extract_activations.extract``: loader tasks → extractor actor pool → writer actor → Parquet store), so it also
pays for Parquet encoding and writing the store, which the plain loop does not.

Figures (``name: value`` lines):
  plain_images_per_s            the plain loop (mean of the runs before and after the Ray job; both printed)
  ray_steady_images_per_s       the Ray job from the first extracted rows reaching the writer to the last: throughput
                                without start-up (worker processes, torch import, checkpoint load)
  ray_total_images_per_s        the Ray job over its whole run after ray.init (start-up included)
  ray_startup_s / ray_init_s    job start to the first extracted rows reaching the writer / ray.init
  ratio_steady / ratio_total    Ray images/s over plain images/s (the goal on this CPU machine: ≥ 0.9)
  *_cpu_s_per_1000_images       CPU seconds per 1000 images: the plain process; for Ray the whole process tree
                                (driver, daemons, workers), steady (same window as ray_steady) and total (start-up in)
  ratio_cpu_steady / _total     plain CPU per image / Ray CPU per image. On a machine whose cores other work shares,
                                wall-clock ratios mostly measure how much of the machine each side got (a pipeline
                                of several processes gets more CPU-scheduler share than one process); CPU per image
                                does not depend on that
With ``--stream``: peak memory of the whole process tree (driver + every Ray daemon and worker), as the sum of PSS
(shared pages counted once) and of RSS (shared pages counted in every process), sampled twice a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


LAYERS = ["relu4", "relu_fc"]


# --- memory of a process tree ------------------------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(start time, utime + stime) of a process, in clock ticks; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]), int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


class TreeSampler(threading.Thread):
    """Samples a process tree (``root`` and every descendant: the driver, each Ray daemon and worker) twice a second.

    Memory: RSS and PSS summed over the tree; the peaks are kept. CPU: each process's own user + system time, taken
    at its last sample — the exited ones too (Ray's raylet does not accumulate its dead workers' times), so at most
    one interval of an exiting process is lost. ``cpu_at(t)`` reads the tree's cumulative CPU on the sample timeline.

    PSS is read every ``pss_every``-th sample only (0: never). ``/proc/<pid>/smaps_rollup`` walks a process's page
    tables, and every Ray worker maps the whole object store. Read twice a second for a Ray job's ≈ 15 processes, it
    was 71 % of the driver's CPU samples (py-spy) in the ResNet-50 benchmark. Its CPU counts in the tree it measures
    and takes cores from the pipeline it times, so it weighed on the store's side and hardly on the loop's.
    """

    def __init__(self, root: int, interval: float = 0.5, pss_every: int = 10):
        super().__init__(daemon=True)
        self.root, self.interval, self.pss_every, self.samples = root, interval, pss_every, 0
        self.tick = os.sysconf("SC_CLK_TCK")
        self.peak_pss = self.peak_rss = self.peak_driver_rss = self.peak_processes = 0
        self.first: dict[tuple[int, int], int] = {}   # (pid, start) → CPU ticks when first seen
        self.last: dict[tuple[int, int], int] = {}
        self.timeline: list[tuple[float, float]] = []  # (perf_counter, cumulative CPU seconds since start)
        self._halt = threading.Event()
        self.sample()

    def sample(self) -> None:
        pids = descendants(self.root)
        rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        if self.pss_every and self.samples % self.pss_every == 0:
            self.peak_pss = max(self.peak_pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
        self.samples += 1
        self.peak_driver_rss = max(self.peak_driver_rss, _kib(f"/proc/{self.root}/status", "VmRSS:"))
        self.peak_processes = max(self.peak_processes, len(pids))
        for pid in pids:
            got = _cpu_ticks(pid)
            if got is not None:
                key = (pid, got[0])
                # a process born after the first sample counts from zero; one alive then, from its value then
                self.first.setdefault(key, got[1] if not self.timeline else 0)
                self.last[key] = got[1]
        used = sum(self.last[k] - self.first[k] for k in self.last) / self.tick
        self.timeline.append((time.perf_counter(), used))

    def cpu_at(self, t: float) -> float:
        """Cumulative tree CPU seconds at the last sample taken at or before ``t``."""
        before = [cpu for ts, cpu in self.timeline if ts <= t]
        return before[-1] if before else 0.0

    def run(self) -> None:
        while not self._halt.is_set():
            self._halt.wait(self.interval)
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


# --- the two contenders ------------------------------------------------------------------------------------------

def random_checkpoint(path: Path, size: int) -> str:
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.data.scenes import CLASS_NAMES
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": len(CLASS_NAMES), "in_channels": 3, "image_size": size}
    save_classifier(path, build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                    class_names=list(CLASS_NAMES))
    return str(path)


def timed_plain_loop(model, datasets, layers: list[str], batch_size: int) -> dict[str, float]:
    """Rows, wall seconds and CPU seconds of the obvious single-process loop: every batch of every dataset through
    ``model``, the layers and probabilities turned into numpy as the extractor hands them on. The comparison every
    extraction benchmark names (this one and benchmarks/extract_fashion_mnist.py)."""
    import torch

    t0, c0, n = time.perf_counter(), time.process_time(), 0
    with torch.inference_mode():
        for ds in datasets:
            for batch in ds.iter_batches(batch_size):
                acts = model.activations(torch.from_numpy(batch["image"]), layers, with_logits=True)
                probs = torch.softmax(acts.pop("logits"), dim=1).numpy()
                outputs = {k: v.numpy() for k, v in acts.items()}  # what a consumer gets: numpy, like the extractor
                n += len(probs)
                del outputs
    return {"rows": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def plain_loop(checkpoint: str, rows: int, size: int, batch_size: int, threads: int) -> tuple[float, float]:
    """(images/s, CPU seconds per 1000 images) of the obvious single-process loop over the same rows and model."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.data import load_dataset

    torch.set_num_threads(threads)
    model = load_classifier(checkpoint).model
    dataset = load_dataset("scenes", "train", n=rows, size=size, seed=0)
    t = timed_plain_loop(model, [dataset], LAYERS, batch_size)
    return t["rows"] / t["wall_s"], t["cpu_s"] / t["rows"] * 1000


def ray_job(checkpoint: str, root: str, args) -> dict:
    from jobs.extract_activations import ExtractJobConfig, extract

    cfg = ExtractJobConfig.model_validate({
        "checkpoint": checkpoint, "layers": LAYERS, "splits": ["train"],
        "data": {"name": "scenes", "options": {"n": args.rows, "size": args.size, "seed": 0}},
        "store": {"root": root, "shard_rows": args.shard_rows, "compression": "snappy"},
        "compute": {"engine": "ray", "batch_size": args.batch_size, "actors": args.actors, "num_cpus": 1,
                    "torch_threads": args.threads, "load_num_cpus": 0.5, "write_num_cpus": 0.25, "num_gpus": 0},
        "progress_every": max(1, args.rows // args.shard_rows // 10)})
    (out,) = extract(cfg)
    return out


def start_ray(num_cpus: int) -> float:
    from jobs.common import init_ray

    t0 = time.perf_counter()
    init_ray(None, num_cpus=num_cpus, include_dashboard=False)
    return time.perf_counter() - t0


def benchmark_env() -> None:
    """What every extraction benchmark sets first: a local Ray on 127.0.0.1, its workers at nice 0 like the plain
    side (see ``main``), and the job's own progress lines readable among Ray's."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("ray").setLevel(logging.WARNING)


def du(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())



@contextmanager
def scratch_dir(workdir: str | None, prefix: str, *, keep: bool | None = None) -> Iterator[Path]:
    """``workdir`` (created if missing) or a new temporary folder named ``prefix…``; removed when the block ends,
    however it ends, unless ``keep`` (default: keep a folder the caller named, remove a temporary one)."""
    work = Path(workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not (workdir is not None if keep is None else keep):
            shutil.rmtree(work, ignore_errors=True)


def print_figures(figures: dict[str, object], digits: int) -> None:
    """The figures as ``name: value`` lines: ratios to 3 decimals, other floats to ``digits``."""
    for k, v in figures.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) and k.startswith("ratio") else
              f"{k}: {v:.{digits}f}" if isinstance(v, float) else f"{k}: {v}")

# --- main --------------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-rows", type=int, default=1024)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both contenders")
    p.add_argument("--checkpoint", default=None, help="a scenes CNN checkpoint (default: random weights)")
    p.add_argument("--stream", action="store_true", help="the Ray job only, with peak-memory sampling")
    p.add_argument("--keep", action="store_true", help="keep the written store")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    # Ray starts its workers at nice 15 (so the raylet stays responsive). On a machine shared with other nice-0
    # work that alone starves the Ray side of a side-by-side comparison; both contenders run at nice 0 here.
    benchmark_env()

    with scratch_dir(args.workdir, "interp-ray-extract-bench-", keep=args.keep) as work:
        checkpoint = args.checkpoint or random_checkpoint(work / "scenes_cnn", args.size)
        print(f"rows: {args.rows}\nimage: 3x{args.size}x{args.size}\nlayers: {','.join(LAYERS)}\n"
              f"batch_size: {args.batch_size}\nshard_rows: {args.shard_rows}\nactors: {args.actors}\n"
              f"torch_threads: {args.threads}\ncpus: {os.cpu_count()}\n"
              f"ray_worker_niceness: {os.environ['RAY_worker_niceness']}", flush=True)
        if args.stream:
            stream(checkpoint, str(work / "store"), args)
        else:
            compare(checkpoint, str(work / "store"), args)


def steady_cpu_per_1000(sampler: TreeSampler, out: dict) -> float:
    """Tree CPU seconds per 1000 images between the first and the last extracted rows reaching the writer."""
    cpu = sampler.cpu_at(out["last_at"]) - sampler.cpu_at(out["first_at"])
    return cpu / max(out["steady_rows"], 1) * 1000


def compare(checkpoint: str, root: str, args) -> None:
    plain_before, plain_cpu_before = plain_loop(checkpoint, args.rows, args.size, args.batch_size, args.threads)
    print(f"plain_images_per_s_before: {plain_before:.1f}", flush=True)
    sampler = TreeSampler(os.getpid())
    sampler.start()
    ray_init = start_ray(os.cpu_count() or 2)
    t0, c0 = time.perf_counter(), sampler.timeline[-1][1]
    out = ray_job(checkpoint, root, args)
    wall = time.perf_counter() - t0
    sampler.stop()
    ray_cpu_total = (sampler.timeline[-1][1] - c0) / out["rows"] * 1000
    plain_after, plain_cpu_after = plain_loop(checkpoint, args.rows, args.size, args.batch_size, args.threads)
    print(f"plain_images_per_s_after: {plain_after:.1f}")
    plain, plain_cpu = (plain_before + plain_after) / 2, (plain_cpu_before + plain_cpu_after) / 2
    steady = out["steady_rows_per_s"] or float("nan")
    steady_cpu = steady_cpu_per_1000(sampler, out)
    total = out["rows"] / wall
    print(f"plain_images_per_s: {plain:.1f}\n"
          f"ray_steady_images_per_s: {steady:.1f}\n"
          f"ray_total_images_per_s: {total:.1f}\n"
          f"ray_startup_s: {out['startup_s'] or float('nan'):.1f}\nray_init_s: {ray_init:.1f}\n"
          f"ray_job_s: {wall:.1f}\nstore_mib: {du(out['location']) / 2**20:.0f}\n"
          f"plain_cpu_s_per_1000_images: {plain_cpu:.2f}\n"
          f"ray_steady_cpu_s_per_1000_images: {steady_cpu:.2f}\n"
          f"ray_total_cpu_s_per_1000_images: {ray_cpu_total:.2f}\n"
          f"ratio_steady: {steady / plain:.3f}\nratio_total: {total / plain:.3f}\n"
          f"ratio_cpu_steady: {plain_cpu / steady_cpu:.3f}\nratio_cpu_total: {plain_cpu / ray_cpu_total:.3f}")


def stream(checkpoint: str, root: str, args) -> None:
    sampler = TreeSampler(os.getpid())
    sampler.start()
    t0 = time.perf_counter()
    ray_init = start_ray(os.cpu_count() or 2)
    c0 = sampler.timeline[-1][1]
    out = ray_job(checkpoint, root, args)
    wall = time.perf_counter() - t0
    sampler.stop()
    images_gib = args.rows * 3 * args.size * args.size * 4 / 2**30
    print(f"ray_init_s: {ray_init:.1f}\nray_startup_s: {out['startup_s'] or float('nan'):.1f}\n"
          f"ray_job_s: {out['seconds']:.1f}\nwall_s: {wall:.1f}\n"
          f"ray_total_images_per_s: {out['rows'] / out['seconds']:.1f}\n"
          f"ray_steady_images_per_s: {out['steady_rows_per_s'] or float('nan'):.1f}\n"
          f"ray_steady_cpu_s_per_1000_images: {steady_cpu_per_1000(sampler, out):.2f}\n"
          f"ray_total_cpu_s_per_1000_images: {(sampler.timeline[-1][1] - c0) / out['rows'] * 1000:.2f}\n"
          f"rows_written: {out['rows']}\nstore_gib: {du(out['location']) / 2**30:.2f}\n"
          f"dataset_images_gib_if_held: {images_gib:.2f}\n"
          f"peak_tree_pss_gib: {sampler.peak_pss / 2**20:.2f}\npeak_tree_rss_gib: {sampler.peak_rss / 2**20:.2f}\n"
          f"peak_driver_rss_gib: {sampler.peak_driver_rss / 2**20:.2f}\npeak_processes: {sampler.peak_processes}")
    from interp_ray.store import ActivationStore

    store = ActivationStore.open(out["location"])
    ids = set()
    for batch in store.iter_batches(8192, columns=["index", "id"]):
        ids.update(batch["id"].tolist())
    print(f"store_rows_read_back: {len(ids)} unique ids of {len(store)}")


if __name__ == "__main__":
    main()
