"""Private memory of a plain Ray Data consumer of an activation store, with no training: where does the training
worker's growth with the store's size come from (BENCHMARKS.md, "train_from_store")?

    python -m benchmarks.stream_memory [--size 160000] [--modes numpy,arrow] [--splits equal,none]

Reads the stores ``benchmarks.train_from_store`` writes (run it first, or give ``--workdir``): one pass over the
train rows in 256-row batches, each configuration in a fresh process. Modes: ``numpy`` (Ray Data's numpy batches)
and ``arrow`` (``batch_format="pyarrow"``, every column converted and copied by us, so no batch keeps an Arrow
buffer alive). Splits: ``equal`` (``streaming_split(1, equal=True)``, as Ray Train hands a worker its shard),
``unequal`` and ``none`` (``Dataset.iter_batches``). Printed per configuration: RssAnon growth from before the
first batch to the end of the pass, what ``malloc_trim(0)`` gives back, and the bytes Arrow's pool still holds;
then each growth as a ratio of the first configuration's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from typing import Any, Sequence


def to_numpy(table) -> dict[str, Any]:
    """A pyarrow batch as numpy arrays that own their memory (tensor columns included)."""
    import numpy as np

    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        arr = col.to_numpy_ndarray() if hasattr(col, "to_numpy_ndarray") else col.to_numpy(zero_copy_only=False)
        out[name] = np.array(arr, copy=True)
    return out


def one_pass(size: int, mode: str, split: str, workdir: str) -> dict[str, float]:
    import pyarrow as pa

    from benchmarks.train_from_store import job_for, parse
    from jobs.common import init_ray
    from jobs.train_explainer import memory_mib, role_stores

    job = job_for(size, parse(["--batches", "0", "--epochs", "1", "--workdir", workdir]))
    init_ray(num_cpus=2)
    ds = role_stores(job, ("train",))["train"].to_ray()
    it = ds if split == "none" else ds.streaming_split(1, equal=(split == "equal"))[0]
    start = peak = memory_mib()["anon"]
    rows = 0
    for batch in it.iter_batches(batch_size=256, batch_format="pyarrow" if mode == "arrow" else "numpy"):
        if mode == "arrow":
            batch = to_numpy(batch)
        rows += len(batch["index"])
        peak = max(peak, memory_mib()["anon"])
    end = memory_mib()["anon"]
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"rows": rows, "growth_mib": peak - start, "trimmed_mib": end - memory_mib()["anon"],
            "arrow_pool_mib": pa.default_memory_pool().bytes_allocated() / 2**20}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=160000, help="train rows of the store (train_from_store's sizes)")
    p.add_argument("--modes", default="numpy,arrow")
    p.add_argument("--splits", default="equal,none")
    p.add_argument("--workdir", default="outputs/bench_train_from_store")
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(one_pass(args.size, *args.child, args.workdir)), flush=True)
        return []
    rows = []
    for split in args.splits.split(","):
        for mode in args.modes.split(","):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.stream_memory", "--size", str(args.size),
                                   "--workdir", args.workdir, "--child", mode, split],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            rows.append({"mode": mode, "split": split, **json.loads(line[len("RESULT "):])})
    base = rows[0]["growth_mib"] or float("nan")
    for r in rows:
        print(f"{r['split']:>8} {r['mode']:>6}: {r['rows']} rows, private growth {r['growth_mib']:.0f} MiB "
              f"({r['growth_mib'] / base:.2f}x of {rows[0]['split']} {rows[0]['mode']}), malloc_trim gives back "
              f"{r['trimmed_mib']:.0f} MiB, Arrow pool {r['arrow_pool_mib']:.1f} MiB")
    return rows


if __name__ == "__main__":
    main()
