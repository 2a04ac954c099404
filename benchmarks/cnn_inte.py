"""CNN-INTE fit time at three sizes of 1,024-feature activations from generated scenes, and how it grows with rows.

    .venv/bin/python -m benchmarks.cnn_inte                      # 15k, 30k, 60k rows
    .venv/bin/python -m benchmarks.cnn_inte --sizes 5000 10000   # quicker

The activations (what we used, exactly): scenes images (``load_dataset("scenes", "train", n=60000, size=32)``),
each image's pixels minus their mean, times a fixed Gaussian matrix (3,072 × 1,024, seed 0, scaled by 1/√3072),
plus a Gaussian bias (σ 0.1), through a ReLU: a random-feature layer of 1,024 units standing in for a CNN tap (a
random-weight scenes_cnn at 64 px needs ~12 CPU-minutes per 60k rows here). The "CNN prediction" the meta-model
learns is a RidgeClassifier readout fitted on the first 5,000 rows' labels (~44% accurate): a weak classifier whose
decision boundary crosses dense data, so the trees grow deep — a pessimistic case for the forest's cost. The rows
are cached under outputs/bench/ (the generation takes ~2 minutes and is not timed).

Printed: ``name: value`` lines; wall and process-CPU seconds per fit (CPU time counts every thread, so it is the
figure that holds up on a shared machine), per-stage wall times, the ratios between sizes, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

CACHE = Path("outputs/bench")
WIDTH, IMAGE_SIZE, READOUT_ROWS, HOLDOUT = 1024, 32, 5000, 2000


def random_features(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """ReLU(centred pixels · W + b) with a fixed seeded W (3·32·32 × 1,024) and b."""
    import torch

    d_in = int(np.prod(images.shape[1:]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, WIDTH, generator=g) / np.sqrt(d_in)
    b = torch.randn(WIDTH, generator=g) * 0.1
    x = torch.from_numpy(images).flatten(1)
    return torch.relu((x - x.mean(1, keepdim=True)) @ w + b).numpy()


def scenes_activations(split: str, n: int) -> dict[str, np.ndarray]:
    from interp_ray.data import load_dataset

    ds = load_dataset("scenes", split, n=n, size=IMAGE_SIZE)
    xs, labels = [], []
    for b in ds.iter_batches(2000):
        xs.append(random_features(b["image"]))
        labels.append(b["label"])
    return {"x": np.concatenate(xs), "label": np.concatenate(labels)}


def load_data(n: int) -> dict[str, np.ndarray]:
    """``n`` train rows + a held-out set, with the readout's predictions; cached on disk."""
    from sklearn.linear_model import RidgeClassifier

    path = CACHE / f"cnn_inte_scenes_{n}_{WIDTH}_v1.npz"
    if path.is_file():
        return dict(np.load(path))
    train, hold = scenes_activations("train", n), scenes_activations("test", HOLDOUT)
    readout = RidgeClassifier(alpha=1.0).fit(train["x"][:READOUT_ROWS], train["label"][:READOUT_ROWS])
    data = {"x": train["x"], "label": train["label"], "prediction": readout.predict(train["x"]),
            "hold_x": hold["x"], "hold_label": hold["label"], "hold_prediction": readout.predict(hold["x"])}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def batches(x: np.ndarray, prediction: np.ndarray, label: np.ndarray, size: int = 4096):
    """The rows as the activation store hands them out: batches of ``size``."""
    for lo in range(0, len(x), size):
        yield {"proj": x[lo:lo + size], "prediction": prediction[lo:lo + size], "label": label[lo:lo + size],
               "id": np.arange(lo, min(lo + size, len(x))).astype(str)}


def time_fit(data: dict[str, np.ndarray], n: int, config: dict) -> dict[str, float]:
    from interp_ray.explainers.cnn_inte import CnnInte

    wall, cpu = time.perf_counter(), time.process_time()
    model = CnnInte({"layer": "proj", **config}).fit(batches(data["x"][:n], data["prediction"][:n], data["label"][:n]))
    out = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
           **{k: v for k, v in model.info["timings"].items()}}
    report = model.report(batches(data["hold_x"], data["hold_prediction"], data["hold_label"]))
    out["holdout_fidelity"] = report["fidelity"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[15000, 30000, 60000])
    ap.add_argument("--features", default=None, help="override CnnInteConfig.features")
    ap.add_argument("--n-estimators", type=int, default=None)
    args = ap.parse_args(argv)
    config = {k: v for k, v in {"features": args.features, "n_estimators": args.n_estimators}.items() if v}
    data = load_data(max(args.sizes))
    print(f"cpu_count: {os.cpu_count()}")
    print(f"load_average_1min_start: {os.getloadavg()[0]:.1f}")
    print(f"config_overrides: {config or 'none (defaults)'}")
    results = {}
    for n in sorted(args.sizes):
        r = results[n] = time_fit(data, n, config)
        for k, v in r.items():
            print(f"fit_{k}_{n}x{WIDTH}: {v:.3f}" if not k.endswith("fidelity") else f"{k}_{n}: {v:.4f}")
    base = min(results)
    for n in sorted(results)[1:]:
        for k in ("wall_s", "cpu_s"):
            ratio = results[n][k] / results[base][k]
            print(f"ratio_{k}_{n}_vs_{base}: {ratio:.2f} (rows x{n / base:.1f}; per-row cost x{ratio * base / n:.2f})")
    print(f"load_average_1min_end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
