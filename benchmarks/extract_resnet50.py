"""ResNet-50 activations of JPEGs at 224×224: the store job against the loop a user writes, and the bare forward pass.

    python -m benchmarks.extract_resnet50 [--n 2000] [--batch-size 64] [--device cpu|cuda] [--float16-autocast]

The model is torchvision's ResNet-50 with random weights (``torchvision:resnet50``, ImageNet normalisation, 1000
classes: throughput does not depend on the weights). The images are ``--n`` JPEGs this benchmark writes into an image
folder (10 class directories; 256×256 low-frequency noise with a few filled shapes, quality 90), decoded and resized
to 224×224 by each contender. Kept, identically on both sides: ``layer3`` avgpool-reduced to 1024×7×7 and cast to
bfloat16, ``layer4`` (2048×7×7) and ``avgpool`` (2048) in bfloat16, plus index, id, label, prediction and the 1000
softmax probabilities (float32), zstd-compressed Parquet.

* bare: the ceiling. Every image decoded into memory first (not timed), then only ``model(x)`` batch after batch.
* loop: what a user writes instead: a ``torch.utils.data.DataLoader`` with ``--workers`` worker processes decoding
  the JPEGs, forward hooks on the three layers, the same reduction and cast, and one ``pyarrow.parquet.ParquetWriter``
  appending each batch with the same columns, types and compression.
* store: the real job (``jobs.extract_activations.extract``: loader tasks → extractor actor → writer actor →
  content-keyed, resumable Parquet store), Ray started by this process.

Figures (``name: value`` lines): ``*_rows_per_s`` over the whole side (store: from the job's start after ray.init,
actor start-up included; loop: from building the DataLoader, worker start-up included) and ``*_steady_rows_per_s``
(after the first batch), ``*_bytes_per_row`` on disk, ``*_peak_rss_mib`` of each process (the store: the driver and
each Ray worker by its process title), the load average, and the ratios ``ratio_store_over_loop`` (goal ≥ 1.0, whole
job, equal output), ``ratio_store_steady_over_loop_steady`` and ``ratio_store_steady_over_bare`` (goal ≥ 0.8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.extract import TreeSampler, descendants, du

LAYERS = ["layer3", "layer4", "avgpool"]
SIZE = 224
CLASSES = 10
# the storage both sides keep: what docs/activation_store.md recommends for a ResNet-50 at 224 px
STORE_LAYERS = {"layer3": {"reduce": "avgpool", "pool_size": 7}}
STORE_DTYPE = "bfloat16"


def loads() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- inputs ------------------------------------------------------------------------------------------------------

def write_jpegs(root: Path, n: int, seed: int = 0, side: int = 256) -> Path:
    """``n`` JPEGs under ``root/c<k>/``: smooth colour noise (a 16×16 field upscaled) with three filled shapes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"c{i % CLASSES}"
        d.mkdir(parents=True, exist_ok=True)
        field = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(field).resize((side, side), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, side - 40, 2)
            w, h = rng.integers(20, side // 2, 2)
            box = [int(x0), int(y0), int(min(side, x0 + w)), int(min(side, y0 + h))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        img.save(d / f"{i:07d}.jpg", quality=90)
    return root


def resnet50_checkpoint(path: Path, size: int = SIZE) -> str:
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": 1000, "image_size": size, "mean": "imagenet", "std": "imagenet"}
    model = build_model("torchvision:resnet50", **opts)
    save_classifier(path, model, model_name="torchvision:resnet50", model_options=opts,
                    class_names=[f"c{i}" for i in range(1000)])  # the folder's c0…c9 are among them (jobs check)
    return str(path)


# --- per-process peak memory -------------------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if raw.startswith("ray::"):  # a Ray worker's title names what it runs: ray::MapWorker(MapBatches(...)), ray::IDLE
        return raw.split(" ")[0][:90]
    return os.path.basename(raw.split(" ")[0]) or "?"


def cpu_by_title(cpu: TreeSampler, titles: dict[int, str], root: int) -> dict[str, float]:
    """CPU seconds per process title (processes sharing a title summed) from a stopped ``TreeSampler`` and the
    titles a ``ProcessPeaks`` saw over the same run; ``root`` is "driver"."""
    out: dict[str, float] = {}
    for (pid, start), last in cpu.last.items():
        title = "driver" if pid == root else titles.get(pid, "?")
        out[title] = out.get(title, 0.0) + (last - cpu.first[(pid, start)]) / cpu.tick
    return out


class ProcessPeaks(threading.Thread):
    """Peak RSS of every process under ``root`` (this one included), sampled every ``interval`` s, by pid and title
    (the title last seen: a Ray worker is ``ray::IDLE`` until it gets an actor)."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self._halt = threading.Event()

    def sample(self) -> None:
        for pid in descendants(self.root):
            rss = _rss_kib(pid)
            if rss > self.peaks.get(pid, 0):
                self.peaks[pid] = rss
            title = _title(pid)
            if title != "?" and not (title == "ray::IDLE" and pid in self.titles):
                self.titles[pid] = title

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        self.sample()
        return self.report()

    def report(self) -> dict[str, float]:
        """title → peak RSS MiB (the largest of processes sharing a title), and the tree's sum of per-process peaks."""
        out: dict[str, float] = {}
        for pid, kib in self.peaks.items():
            title = "driver" if pid == self.root else self.titles.get(pid, "?")
            out[title] = max(out.get(title, 0.0), kib / 1024)
        out["sum_of_process_peaks"] = sum(self.peaks.values()) / 1024
        return out


# --- the three contenders ----------------------------------------------------------------------------------------

def steady_rate(stamps: list[tuple[float, int]], start: float) -> tuple[float, float]:
    """(rows/s over the whole run from ``start``, rows/s after the first batch) from (time, rows) per batch."""
    total = sum(n for _, n in stamps)
    whole = total / (stamps[-1][0] - start)
    window = stamps[-1][0] - stamps[0][0]
    steady = (total - stamps[0][1]) / window if window > 0 else float("nan")
    return whole, steady


def bare_forward(checkpoint: str, folder: str, args) -> dict[str, float]:
    """The ceiling: ``model(x)`` over already-decoded tensors in memory, nothing captured, nothing written."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.data import load_dataset

    torch.set_num_threads(args.threads)
    model = load_classifier(checkpoint).model.to(args.device).eval()
    ds = load_dataset("image_folder", "train", root=folder, image_size=args.image_size)
    batches = [torch.from_numpy(ds.get_batch(np.arange(lo, min(lo + args.batch_size, len(ds))))["image"])
               for lo in range(0, len(ds), args.batch_size)]
    stamps, t0, c0 = [], time.perf_counter(), time.process_time()
    with torch.inference_mode(), autocast(args):
        for x in batches:
            model(x.to(args.device)).float().cpu()
            sync(args.device)
            stamps.append((time.perf_counter(), len(x)))
    whole, steady = steady_rate(stamps, t0)
    return {"bare_rows_per_s": whole, "bare_steady_rows_per_s": steady,
            "bare_cpu_ms_per_row": (time.process_time() - c0) / len(ds) * 1000}


def autocast(args):
    import contextlib

    import torch

    return torch.autocast(args.device, dtype=torch.float16) if args.float16_autocast else contextlib.nullcontext()


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class JpegFolder:
    """The user's torch Dataset: a path list; each item decoded and resized in a DataLoader worker."""

    def __init__(self, folder: str, size: int):
        from interp_ray.data import load_dataset

        ds = load_dataset("image_folder", "train", root=folder, image_size=size)
        self.root, self.paths, self.labels, self.size = ds.root, ds.paths, ds.labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from interp_ray.data.images import read_image_file

        return i, self.paths[i], int(self.labels[i]), read_image_file(Path(self.root) / self.paths[i], self.size)


def bf16_bits(t):
    import torch

    return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


def loop(checkpoint: str, folder: str, out_path: str, args) -> dict[str, float]:
    """DataLoader workers → forward hooks → the same reduction and cast → one ParquetWriter, zstd."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from interp_ray.checkpoint import load_classifier

    torch.set_num_threads(args.threads)
    model = load_classifier(checkpoint).model.to(args.device).eval()
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.net.named_modules())
    for name in LAYERS:
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
    t0 = time.perf_counter()
    loader = DataLoader(JpegFolder(folder, args.image_size), batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=args.device == "cuda", persistent_workers=False)
    writer, stamps = None, []
    with torch.inference_mode():
        for index, ids, labels, images in loader:
            with autocast(args):
                logits = model(images.to(args.device, non_blocking=True))
            probs = torch.softmax(logits.float(), dim=1)
            cols = {
                "index": pa.array(index.numpy().astype(np.int64)),
                "id": pa.array(list(ids), type=pa.string()),
                "label": pa.array(labels.numpy().astype(np.int64)),
                "prediction": pa.array(probs.argmax(1).cpu().numpy().astype(np.int64)),
                "probabilities": pa.FixedShapeTensorArray.from_numpy_ndarray(probs.cpu().numpy()),
                "layer3": pa.FixedShapeTensorArray.from_numpy_ndarray(
                    bf16_bits(F.adaptive_avg_pool2d(captured["layer3"].float(), 7))),
                "layer4": pa.FixedShapeTensorArray.from_numpy_ndarray(bf16_bits(captured["layer4"])),
                "avgpool": pa.FixedShapeTensorArray.from_numpy_ndarray(bf16_bits(captured["avgpool"])),
            }
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(out_path, table.schema, compression="zstd")
            writer.write_table(table)
            stamps.append((time.perf_counter(), len(index)))
    writer.close()
    whole, steady = steady_rate(stamps, t0)
    rows = sum(n for _, n in stamps)
    return {"loop_rows": rows, "loop_rows_per_s": whole, "loop_steady_rows_per_s": steady,
            "loop_wall_s": stamps[-1][0] - t0, "loop_bytes_per_row": os.path.getsize(out_path) / rows}


def store_job(checkpoint: str, folder: str, root: str, args) -> dict:
    from jobs.extract_activations import ExtractJobConfig, extract

    cuda = args.device == "cuda"
    cfg = ExtractJobConfig.model_validate({
        "checkpoint": checkpoint, "layers": LAYERS, "splits": ["train"],
        "data": {"name": "image_folder", "options": {"root": folder, "image_size": args.image_size}},
        "store": {"root": root, "compression": "zstd", "part_bytes": args.part_bytes, "dtype": STORE_DTYPE,
                  "layers": STORE_LAYERS},
        "compute": {"engine": "ray", "batch_size": args.batch_size, "actors": 1, "num_cpus": 1,
                    "torch_threads": args.threads, "load_num_cpus": args.load_num_cpus, "write_num_cpus": 0.25,
                    "num_gpus": 1 if cuda else 0, "device": args.device,
                    "autocast": "float16" if args.float16_autocast else None},
        "progress_every": 1})
    (out,) = extract(cfg)
    return out


# --- main --------------------------------------------------------------------------------------------------------

def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="JPEGs (rows)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--float16-autocast", action="store_true", help="torch.autocast(float16) forward, every side")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, every side")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="the loop's DataLoader workers")
    p.add_argument("--load-num-cpus", type=float, default=0.5, help="the store's loader tasks' CPU reservation")
    p.add_argument("--part-bytes", default="32MiB")
    p.add_argument("--workdir", default=None, help="keep images and outputs here (default: a temp dir, removed)")
    p.add_argument("--image-size", type=int, default=SIZE, help="pixels a side (224; smaller only for a dry run)")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, float]:
    args = parse(argv)
    from benchmarks.extract import benchmark_env, print_figures, scratch_dir, start_ray

    benchmark_env()  # both sides at nice 0

    figures: dict[str, float] = {}
    with scratch_dir(args.workdir, "interp-ray-resnet50-bench-") as work:
        folder = work / "jpegs"
        if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != args.n:
            shutil.rmtree(folder, ignore_errors=True)
            write_jpegs(folder, args.n)
        checkpoint = resnet50_checkpoint(work / "resnet50", args.image_size)
        print(f"model: torchvision:resnet50 (random weights) at {args.image_size}x{args.image_size}\nrows: {args.n}\n"
              f"layers: layer3 (avgpool 7x7, bfloat16), layer4 (bfloat16), avgpool (bfloat16)\n"
              f"batch_size: {args.batch_size}\ndevice: {args.device}\nfloat16_autocast: {args.float16_autocast}\n"
              f"torch_threads: {args.threads}\nloop_workers: {args.workers}\ncpus: {os.cpu_count()}\n"
              f"load_average_at_start: {loads()}", flush=True)
        figures.update(bare_forward(checkpoint, str(folder), args))
        print(f"bare_steady_rows_per_s: {figures['bare_steady_rows_per_s']:.2f} (load {loads()})", flush=True)
        peaks, cpu = ProcessPeaks(os.getpid()), TreeSampler(os.getpid(), pss_every=0)  # CPU only: PSS costs
        peaks.start()
        cpu.start()
        c0 = cpu.timeline[-1][1]
        figures.update(loop(checkpoint, str(folder), str(work / "loop.parquet"), args))
        loop_peaks = peaks.stop()
        cpu.stop()
        loop_cpu = cpu_by_title(cpu, peaks.titles, os.getpid())
        figures["loop_cpu_ms_per_row"] = (cpu.timeline[-1][1] - c0) / figures["loop_rows"] * 1000
        print(f"loop_rows_per_s: {figures['loop_rows_per_s']:.2f} (load {loads()})", flush=True)
        import ray

        ours = not ray.is_initialized()
        peaks, cpu = ProcessPeaks(os.getpid()), TreeSampler(os.getpid(), pss_every=0)  # CPU only: PSS costs
        peaks.start()
        cpu.start()
        figures["ray_init_s"] = start_ray(os.cpu_count() or 2)
        t0, c0 = time.perf_counter(), cpu.timeline[-1][1]
        out = store_job(checkpoint, str(folder), str(work / "store"), args)
        wall = time.perf_counter() - t0
        store_peaks = peaks.stop()
        cpu.stop()
        store_cpu = cpu_by_title(cpu, peaks.titles, os.getpid())
        figures["store_cpu_ms_per_row"] = (cpu.timeline[-1][1] - c0) / out["rows"] * 1000
        if ours:
            ray.shutdown()
        if out["rows"] != figures["loop_rows"]:
            raise RuntimeError(f"the contenders saw different rows: loop {figures['loop_rows']}, store {out['rows']}")
        from interp_ray.store import ActivationStore

        store = ActivationStore.open(out["location"])
        figures.update({
            "store_rows_per_s": out["rows"] / wall, "store_steady_rows_per_s": out["steady_rows_per_s"] or float("nan"),
            "store_wall_s": wall, "store_startup_s": out["startup_s"] or float("nan"),
            "store_bytes_per_row": sum(du(p) for p in [out["location"]]) / out["rows"],
            "store_parts": len(store.part_paths())})
        figures["ratio_store_over_loop"] = figures["store_rows_per_s"] / figures["loop_rows_per_s"]
        figures["ratio_store_steady_over_loop_steady"] = (figures["store_steady_rows_per_s"]
                                                          / figures["loop_steady_rows_per_s"])
        # CPU per row (every process of each side): what the shared cores' load does not change
        figures["ratio_loop_cpu_over_store_cpu"] = figures["loop_cpu_ms_per_row"] / figures["store_cpu_ms_per_row"]
        figures["ratio_store_bytes_over_loop_bytes"] = figures["store_bytes_per_row"] / figures["loop_bytes_per_row"]
        figures["ratio_store_steady_over_bare"] = figures["store_steady_rows_per_s"] / figures["bare_steady_rows_per_s"]
        print_figures(figures, digits=2)
        for side, got in (("loop", loop_peaks), ("store", store_peaks)):
            for title, mib in sorted(got.items(), key=lambda kv: -kv[1]):
                print(f"{side}_peak_rss_mib[{title}]: {mib:.0f}")
        # where each side's CPU went, per row (the store's ray.init included): what to cut when the store spends more
        for side, got, rows in (("loop", loop_cpu, figures["loop_rows"]), ("store", store_cpu, out["rows"])):
            for title, seconds in sorted(got.items(), key=lambda kv: -kv[1])[:10]:
                print(f"{side}_cpu_ms_per_row[{title}]: {seconds * 1000 / rows:.1f}")
        print(f"load_average_at_end: {loads()}")
        figures["loop_peak_rss_mib"] = loop_peaks["sum_of_process_peaks"]
        figures["store_peak_rss_mib"] = store_peaks["sum_of_process_peaks"]
        return figures


if __name__ == "__main__":
    main()
