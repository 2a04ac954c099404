"""FLINT-g's fidelity next to LIME's, to the same f on the same test images (the comparison of FLINT's Table 1).

    python -m benchmarks.flint_lime --flint outputs/flint_fashion_mnist [--images 500] [--num-samples 1000]

f is the FLINT checkpoint's predictor (joint FLINT: FLINT-f; post hoc: the frozen classifier). On the first
``--images`` test images: FLINT-g fidelity (argmax g = argmax f) and LIME fidelity (argmax of LIME's local surrogate
at the image = argmax f; ``interp_ray.metrics.fidelity``), and FLINT-g fidelity over the whole test split for scale.
LIME costs ``--num-samples`` forward passes of f per image, which is why it runs on a subset. Prints ``name: value``
lines; ``--out`` also writes them as JSON.

``--lime-cache FILE`` keeps LIME's classes in an .npz keyed by a digest of f's weights and the LIME settings, and
reuses them when they match: post hoc FLINT's f is the classifier checkpoint, so LIME can run on it (``--classifier
DIR``, LIME only) while FLINT trains.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flint", default="outputs/flint_fashion_mnist", help="a FLINT checkpoint (jobs.train_flint)")
    p.add_argument("--classifier", default=None, help="LIME only, on this classifier checkpoint (fills --lime-cache)")
    p.add_argument("--lime-cache", default=None, help=".npz of LIME classes, reused when f and settings match")
    p.add_argument("--images", type=int, default=500, help="first N test images")
    p.add_argument("--num-samples", type=int, default=1000, help="LIME perturbations per image (LIME's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # lime draws a progress bar per image
    import torch

    from interp_ray.data import load_dataset
    from interp_ray.explainers.flint.explainer import FlintExplainer
    from interp_ray.explainers.flint.interpretation import collect, interpretation_metrics

    torch.set_num_threads(args.threads)
    if args.classifier:
        from interp_ray.checkpoint import load_classifier

        loaded = load_classifier(args.classifier)
        data = loaded.config.get("data") or {"name": "fashion_mnist"}
        test = load_dataset(data["name"], "test", **data.get("options", {}))
        n = min(args.images, len(test))
        t0 = time.perf_counter()
        lime = cached_lime(loaded.model, test, n, args)
        out = {"classifier": args.classifier, "images": n, "lime_s": time.perf_counter() - t0}
        print("\n".join(f"{k}: {v}" for k, v in out.items()))
        return out
    explainer = FlintExplainer.load(args.flint)
    flint = explainer.flint.eval()
    data = explainer.config.get("data") or {"name": "fashion_mnist"}
    test = load_dataset(data["name"], "test", **data.get("options", {}))
    whole = collect(flint, test.loader(1000))
    full = interpretation_metrics(whole, explainer.weight, taus=[])
    n = min(args.images, len(test))
    pf, pg = whole["logits"].argmax(1)[:n], whole["interp_logits"].argmax(1)[:n]
    t0 = time.perf_counter()
    lime = cached_lime(flint.predictor, test, n, args)
    lime_s = time.perf_counter() - t0
    out = {"flint_checkpoint": args.flint, "images": n, "num_samples": args.num_samples,
           "flint_g_fidelity_subset": float((pg == pf).mean()), "lime_fidelity_subset": float((lime == pf).mean()),
           "flint_f_accuracy_subset": float((pf == whole["labels"][:n]).mean()),
           "flint_g_fidelity_test": full["fidelity"], "flint_f_accuracy_test": full["accuracy_f"],
           "flint_g_accuracy_test": full["accuracy_g"], "test_images": full["samples"], "lime_s": lime_s,
           "lime_s_per_image": lime_s / max(n, 1)}
    for k, v in out.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


def weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_lime(model, test, n: int, args) -> np.ndarray:
    """LIME's classes on the first ``n`` test images for ``model``, from ``args.lime_cache`` when it matches."""
    from interp_ray.metrics.fidelity import LimeSettings, lime_predictions, torch_proba

    key = f"{weights_digest(model)}:{n}:{args.num_samples}:{args.seed}"
    if args.lime_cache and os.path.exists(args.lime_cache):
        cached = np.load(args.lime_cache)
        if str(cached["key"]) == key:
            print(f"lime_cache: reused {args.lime_cache}")
            return cached["lime"]
    images = test.get_batch(np.arange(n))["image"]
    lime = lime_predictions(torch_proba(model), images, test.num_classes,
                            settings=LimeSettings(num_samples=args.num_samples), seed=args.seed)
    if args.lime_cache:
        np.savez(args.lime_cache, key=key, lime=lime)
    return lime


if __name__ == "__main__":
    main()
