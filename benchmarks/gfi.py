"""Batched guided feature inversion vs the one-image-at-a-time loop, measured side by side in one run.

    python -m benchmarks.gfi [--n 32] [--precision float64] [--threads 1] [--model /tmp/interp-ray-scenes-cnn]

Explains the same ``--n`` scenes (val split) with the trained scenes CNN twice: as one batch of ``--n`` and as
``--n`` calls of one image. The loop is split in two halves run before and after the batch, so a change in machine
load during the run biases neither side. Prints ``name: value`` lines: seconds per image of each, their ratio,
the largest mask difference between them, and the same ratio for a bare forward + backward pass of the network at
batch 1 vs batch ``--n`` — the ceiling on what batching can gain, since GFI is ~150 such passes per image.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.scenes_model import DEFAULT_PATH, load_or_train


def network_pass_ms(model, n: int, dtype: torch.dtype, reps: int = 5) -> float:
    """Best-of-``reps`` milliseconds per image of forward + backward-to-input at batch ``n``."""
    device = next(model.parameters()).device
    x = torch.rand(n, *model.input_shape, dtype=dtype, device=device, requires_grad=True)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        (grad,) = torch.autograd.grad(model(x).sum(), [x])
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e3


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    from interp_ray.data import load_dataset
    from interp_ray.explainers.feature_inversion import FeatureInversion, compute_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_PATH)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--precision", choices=["float64", "float32"], default="float64")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU is shared)")
    ap.add_argument("--max-batch", type=int, default=None, help="images optimised together (default: --n)")
    ap.add_argument("--stage1", type=int, default=10, help="stage-1 iterations (paper: 10)")
    ap.add_argument("--stage2", type=int, default=70, help="stage-2 iterations (paper: 70)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model and the optimisation run there)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_or_train(args.model).model.to(args.device)
    images = load_dataset("scenes", "val", n=args.n).get_batch(np.arange(args.n))["image"]
    ex = FeatureInversion(model, precision=args.precision, max_batch=args.max_batch or args.n,
                          stage1_iterations=args.stage1,
                          stage2_iterations=args.stage2)
    ex.explain({"image": images[:2]}, {"stage1_iterations": 1, "stage2_iterations": 1})  # warm-up

    half = args.n // 2
    loop_a, t_a = timed(lambda: [ex.explain({"image": images[i:i + 1]})[0] for i in range(half)])
    batched, t_batch = timed(lambda: ex.explain({"image": images}))
    loop_b, t_b = timed(lambda: [ex.explain({"image": images[i:i + 1]})[0] for i in range(half, args.n)])
    loop = loop_a + loop_b
    diff = max(float(np.abs(a.saliency - b.saliency).max()) for a, b in zip(batched, loop))

    net = compute_model(model, args.precision)
    dtype = next(net.parameters()).dtype
    pass_1, pass_n = network_pass_ms(net, 1, dtype), network_pass_ms(net, args.n, dtype)

    print(f"device: {args.device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"images: {args.n}, batch: {args.max_batch or args.n}")
    print(f"precision: {args.precision}, iterations: {args.stage1} + {args.stage2}")
    print(f"loop_s_per_image: {(t_a + t_b) / args.n:.4f}")
    print(f"batched_s_per_image: {t_batch / args.n:.4f}")
    print(f"ratio loop/batched (speed-up of batching): {(t_a + t_b) / t_batch:.2f}")
    print(f"max_mask_abs_diff: {diff:.2e}")
    print(f"network_pass_ms_per_image_batch1: {pass_1:.2f}")
    print(f"network_pass_ms_per_image_batch{args.n}: {pass_n:.2f}")
    print(f"ratio network batch1/batch{args.n} (ceiling for the speed-up): {pass_1 / pass_n:.2f}")


if __name__ == "__main__":
    main()
