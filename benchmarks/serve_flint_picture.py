"""The latency of FLINT's picture route, over real HTTP on 127.0.0.1: the service's FastAPI app (the one the
Ingress serves) on uvicorn in this process, over the in-process backend, with FLINT alone and one torch thread.

    python -m benchmarks.serve_flint_picture --prepare DIR     # train a FLINT on digits (its pictures stored)
    python -m benchmarks.serve_flint_picture --serve DIR [--requests 5]

``--prepare`` trains a joint FLINT on scikit-learn's digits without Ray (configs/flint_digits.yaml, fewer epochs),
grows and stores its pictures, and saves its predictor f as the classifier checkpoint it is served with.
``--serve`` times ``POST /v1/explain/flint/picture`` for distinct test digits, sequentially: the first request (a
checkpoint without stored pictures grows them then) and the median. Run ``--serve`` with another tree's code on the
path (``PYTHONPATH=<tree> python <this file> --serve DIR``) to time that tree on the same checkpoint.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import threading
import time
from pathlib import Path


def prepare(out: Path, epochs: int) -> None:
    from interp_ray.checkpoint import save_classifier
    from interp_ray.config import load_config
    from interp_ray.explainers.flint.config import FlintJobConfig
    from interp_ray.explainers.flint.explainer import train_explainer
    from jobs.flint_inputs import flint_inputs

    cfg = load_config(FlintJobConfig, "configs/flint_digits.yaml", [f"train.epochs={epochs}", "scaling.use_gpu=false"])
    t0 = time.perf_counter()
    explainer, _ = train_explainer(cfg, flint_inputs(cfg))
    print(f"trained and grew the pictures in {time.perf_counter() - t0:.1f} s")
    explainer.save(str(out / "flint"))
    save_classifier(out / "digits", explainer.flint.predictor, model_name="digits_cnn",
                    model_options={"num_classes": 10, "in_channels": 1, "image_size": 8},
                    class_names=[str(i) for i in range(10)])


def serve(ckpts: Path, requests: int) -> None:
    import httpx
    import numpy as np
    import uvicorn
    from PIL import Image

    from interp_ray.data import load_dataset
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import ExplainerService, LocalBackend

    service = ExplainerService({"checkpoint": str(ckpts / "digits"), "explainer_checkpoints": {"flint": str(
        ckpts / "flint")}, "methods": ["flint"], "torch_threads": 1, "token_env": "INTERP_RAY_BENCH_UNSET_TOKEN"})
    backend = LocalBackend(service)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_api(backend, JobRunner(backend=backend), service.args, token=""),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    images = load_dataset("digits", "test").get_batch(np.arange(requests))["image"]
    times = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
            for img in images:
                buf = io.BytesIO()
                Image.fromarray((np.clip(img[0], 0, 1) * 255).round().astype(np.uint8), "L").save(buf, "PNG")
                t0 = time.perf_counter()
                r = client.post("/v1/explain/flint/picture", content=buf.getvalue(),
                                headers={"content-type": "image/png"})
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print(f"flint picture over HTTP, {requests} digits: first {times[0]:.3f} s, median "
          f"{statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"(all: {', '.join(f'{t:.3f}' for t in times)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", type=Path, help="train a FLINT and write its checkpoints here")
    p.add_argument("--serve", type=Path, help="time the picture route over these checkpoints")
    p.add_argument("--requests", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    if args.prepare:
        prepare(args.prepare, args.epochs)
    if args.serve:
        serve(args.serve, args.requests)


if __name__ == "__main__":
    main()
