"""Load on the explanation service over loopback: batched vs unbatched, and HTTP vs the in-process call.

    python -m benchmarks.serve_load [--model scenes|digits] [--method flint] [--clients 32] [--duration 60]
    python -m benchmarks.serve_load --method interpnet --classifier-checkpoint outputs/pipeline/checkpoints/scenes \
        --explainer-checkpoint outputs/pipeline/interpnet/interpnet_2        # after scripts/run.sh

Phases, one after the other in this run, on one local Ray (127.0.0.1) and one Explainer replica (1 CPU):

  (b) inprocess_seq    one client: the library call (decode the PNG, build the batch, explain) in this process;
      handle_seq       one client: the Explainer deployment through a DeploymentHandle (the Ray hop, no HTTP);
      http_seq         one client: the same upload over HTTP (proxy → Ingress → Explainer, batching on);
                       goal: http_seq p50 − inprocess_seq p50 ≤ 3 ms;
      http_noop_seq    one client: the same upload to a do-nothing deployment behind the same proxy (Serve's floor).
  (a) http_batched     --clients concurrent clients, max_batch_size 32, the Ingress coalescing waiting images into
                       one Explainer call (the shipped default, ``forwarding.coalesce``);
      http_batched_per_image   the same with one Explainer call per image (``coalesce: false``);
      http_unbatched_before / _after   max_batch_size 1 everywhere (the application redeployed), measured first
                       and last; goal: batched ≥ 4× requests/s of their mean;
      handle_batched / handle_unbatched   the same load through a DeploymentHandle from the driver: the Explainer's
                       own batching gain, without the HTTP front.

Each phase runs --duration s after a short warm-up. Every request explains one PNG (the first test image of the
model's dataset) with --method. By default that is FLINT with random weights over a random-weight classifier (a
forward pass costs the same whatever was learned): ``scenes`` (64×64 RGB, the default) or ``digits`` (8×8). A method
whose cost depends on what it learned (InterpNET: the sentence length) is benchmarked on trained checkpoints.
Clients run in a separate process (one keep-alive connection per thread). Prints ``name: value`` lines and the
ratios. (Ray Serve's HAProxy front, RAY_SERVE_ENABLE_HA_PROXY, is not offered: it makes replicas bind all
interfaces.) Takes the test suite's machine-wide lock so it never runs beside a test session's Ray (``--no-lock`` to
skip).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve_common import machine_lock, summarise
from benchmarks.serve_floor import plain_app

APP = "serve_load"


# --------------------------------------------------------------------------- what is explained


def make_checkpoints(root: Path, model: str) -> dict[str, Any]:
    """A random-weight classifier (+ FLINT over it) under ``root``: the application's ``args``."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.explainers.flint.config import FlintSection
    from interp_ray.explainers.flint.explainer import save_flint
    from interp_ray.explainers.flint.model import build_flint, resolved_flint_spec
    from interp_ray.models import build_model

    opts = MODEL_OPTIONS[model]
    name = f"{model}_cnn"
    torch.manual_seed(0)
    predictor = build_model(name, **opts)
    classes = [str(i) for i in range(opts["num_classes"])]
    save_classifier(root / model, predictor, model_name=name, model_options=opts, class_names=classes)
    spec = resolved_flint_spec(predictor, FlintSection())
    save_flint(root / f"{model}_flint", build_flint(predictor, spec), spec=spec,
               predictor_spec={"name": name, "options": opts}, class_names=classes, mode="joint")
    return {"checkpoint_dir": str(root), "classifier": model}


def trained_args(classifier: str, method: str, checkpoint: str) -> dict[str, Any]:
    """``args`` serving a trained method (e.g. the pipeline's InterpNET: its cost depends on what it learned — the
    sentences' length — so random weights would not do)."""
    return {"checkpoint": str(Path(classifier).resolve()),
            "explainer_checkpoints": {method: str(Path(checkpoint).resolve())}}


def request_body(model: str) -> bytes:
    """A PNG of the first test image of the model's dataset (generated scenes or scikit-learn digits)."""
    import io

    from PIL import Image

    from interp_ray.data import load_dataset

    image = load_dataset(model, "test").get_batch(np.arange(1))["image"][0]  # C×H×W in [0, 1]
    pixels = np.clip(np.rint(np.moveaxis(image, 0, -1) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


MODEL_OPTIONS = {"digits": {"num_classes": 10, "in_channels": 1, "image_size": 8},
                 "scenes": {"num_classes": 12, "in_channels": 3, "image_size": 64}}


# --------------------------------------------------------------------------- load generation (its own process)


def client_process(url: str, path: str, body: bytes, clients: int, duration: float, queue: Any) -> None:
    """``clients`` threads, each one keep-alive connection, sending ``body`` until ``duration`` has passed."""
    from serving.client import ExplainClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + duration

    def worker() -> None:
        mine, bad = [], []
        with ExplainClient(url, timeout=60) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    c.request("POST", path, body=body, content_type="image/png")
                    mine.append(time.perf_counter() - t0)
                except Exception as e:  # counted, whatever it is
                    bad.append(type(e).__name__)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((latencies, errors, time.perf_counter() - start))


def http_load(url: str, path: str, body: bytes, clients: int, duration: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=client_process, args=(url, path, body, clients, duration, queue))
    proc.start()
    latencies, errors, wall = queue.get(timeout=duration + 300)
    proc.join(timeout=60)
    return summarise(latencies, len(errors), wall)


# --------------------------------------------------------------------------- the in-process call


def inprocess_load(args: dict[str, Any], method: str, body: bytes, duration: float) -> dict[str, float]:
    """A library user's call: decode the upload, build the batch, explain; sequentially for ``duration`` s."""
    import torch

    from interp_ray.data.images import decode_image
    from serving.service import ExplainerService

    torch.set_num_threads(1)  # as in the Explainer replica (Ray sets OMP_NUM_THREADS to its 1 CPU)
    service = ExplainerService({**args, "methods": [method]})
    session = service.sessions[method]
    c = service.model.input_shape[0]
    mode = "L" if c == 1 else "RGB"
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        image = decode_image(body, None, mode)
        session.explain(image[None], [-1], {})
        latencies.append(time.perf_counter() - t0)
    return summarise(latencies, 0, time.perf_counter() - start)


# --------------------------------------------------------------------------- the service


def deploy(args: dict[str, Any], max_batch_size: int, coalesce: bool = True) -> None:
    from ray import serve

    from serving.app import build_app

    cfg = {**args, "batching": {"default": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.0}},
           "forwarding": {"coalesce": coalesce}}
    app = build_app(cfg, ingress_options={"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 256},
                    explainer_options={"num_replicas": 1, "ray_actor_options": {"num_cpus": 1},
                                       "max_ongoing_requests": 64})
    serve.run(app, name=APP, route_prefix="/")


def noop_floor(url: str, body: bytes, duration: float) -> dict[str, float]:
    """One client uploading the same body to a do-nothing Serve deployment behind the same proxy: what any Serve
    HTTP request costs here, before the application does anything."""
    from ray import serve


    serve.run(plain_app(read_body=True), name="noop", route_prefix="/noop")
    try:
        http_load(url, "/noop", body, 1, 2.0)  # warm-up
        result = http_load(url, "/noop", body, 1, duration)
    finally:
        serve.delete("noop")
    report("http_noop_seq", result)
    return result


def batch_stats(method: str) -> tuple[int, int]:
    from ray import serve

    s = serve.get_deployment_handle("Explainer", app_name=APP).stats.remote().result()
    return s["batches"].get(method, 0), s["rows"].get(method, 0)


def http_phase(name: str, url: str, method: str, body: bytes, clients: int, duration: float) -> dict[str, float]:
    from serving.client import ExplainClient

    path = f"/v1/explain/{method}"
    with ExplainClient(url) as c:  # warm-up: first calls load lazily (routers, torch kernels)
        for _ in range(20):
            c.request("POST", path, body=body, content_type="image/png")
    b0, r0 = batch_stats(method)
    result = http_load(url, path, body, clients, duration)
    b1, r1 = batch_stats(method)
    result["mean_batch"] = (r1 - r0) / max(1, b1 - b0)
    report(name, result)
    return result


def handle_phase(name: str, method: str, body: bytes, duration: float) -> dict[str, float]:
    """The Explainer through a DeploymentHandle from this driver: the Ray hop without HTTP or the Ingress."""
    from ray import serve

    from interp_ray.data.images import decode_image
    from serving.service import Row

    handle = serve.get_deployment_handle("Explainer", app_name=APP)
    c = handle.info.remote().result()["model"]["input_shape"][0]
    row = Row(image=decode_image(body, None, "L" if c == 1 else "RGB"))
    for _ in range(20):
        handle.explain.remote(method, row).result()
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        handle.explain.remote(method, row).result()
        latencies.append(time.perf_counter() - t0)
    result = summarise(latencies, 0, time.perf_counter() - start)
    report(name, result)
    return result


def handle_load_phase(name: str, method: str, body: bytes, clients: int, duration: float) -> dict[str, float]:
    """``clients`` concurrent calls through a DeploymentHandle from this driver: the Explainer's own throughput,
    without the HTTP front (the proxy and the Ingress)."""
    import asyncio

    from ray import serve

    from interp_ray.data.images import decode_image
    from serving.service import Row

    handle = serve.get_deployment_handle("Explainer", app_name=APP)
    c = handle.info.remote().result()["model"]["input_shape"][0]
    row = Row(image=decode_image(body, None, "L" if c == 1 else "RGB"))
    latencies: list[float] = []
    errors = [0]

    async def worker(stop: float) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await handle.explain.remote(method, row)
                latencies.append(time.perf_counter() - t0)
            except Exception:  # counted, whatever it is
                errors[0] += 1

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration) for _ in range(clients)))
        return time.perf_counter() - start

    b0, r0 = batch_stats(method)
    wall = asyncio.run(run())
    b1, r1 = batch_stats(method)
    result = summarise(latencies, errors[0], wall)
    result["mean_batch"] = (r1 - r0) / max(1, b1 - b0)
    report(name, result)
    return result


def report(name: str, r: dict[str, float]) -> None:
    for key in ("requests", "errors", "rps", "p50_ms", "p99_ms", "mean_batch"):
        if key in r:
            value = r[key]
            print(f"{name}.{key}: {value:.2f}" if isinstance(value, float) else f"{name}.{key}: {value}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODEL_OPTIONS), default="scenes")
    p.add_argument("--method", default="flint")
    p.add_argument("--classifier-checkpoint", help="a trained classifier (default: random weights)")
    p.add_argument("--explainer-checkpoint", help="the trained --method over it (needed for methods other than flint)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    p.add_argument("--port", type=int, default=8129)
    p.add_argument("--no-lock", dest="lock", action="store_false")
    opts = p.parse_args()
    if bool(opts.classifier_checkpoint) != bool(opts.explainer_checkpoint):
        p.error("give --classifier-checkpoint and --explainer-checkpoint together")
    if opts.method != "flint" and not opts.explainer_checkpoint:
        p.error(f"--method {opts.method} needs --classifier-checkpoint and --explainer-checkpoint")

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1 only
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp, machine_lock(opts.lock):
        if opts.explainer_checkpoint:
            args = trained_args(opts.classifier_checkpoint, opts.method, opts.explainer_checkpoint)
        else:
            args = make_checkpoints(Path(tmp), opts.model)
        args.update(token_env="INTERP_RAY_SERVE_LOAD_NO_TOKEN", methods=[opts.method])
        body = request_body(opts.model)
        print(f"model: {opts.model}_cnn  method: {opts.method}  clients: {opts.clients}  duration_s: {opts.duration}  "
              f"weights: {'trained' if opts.explainer_checkpoint else 'random'}  front: serve-proxy", flush=True)
        seq = inprocess_load(args, opts.method, body, opts.duration)
        report("inprocess_seq", seq)

        import ray
        from ray import serve

        t0 = time.perf_counter()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
        url = f"http://127.0.0.1:{opts.port}"
        try:
            # The unbatched service is measured before and after the batched one, so a change of load on the
            # machine during the run shows as a gap between the two instead of biasing the ratio.
            deploy(args, 1)
            print(f"startup_s: {time.perf_counter() - t0:.1f}", flush=True)
            before = http_phase("http_unbatched_before", url, opts.method, body, opts.clients, opts.duration)
            h_unbatched = handle_load_phase("handle_unbatched", opts.method, body, opts.clients, opts.duration)
            deploy(args, 32)
            handle_phase("handle_seq", opts.method, body, opts.duration)
            http_seq = http_phase("http_seq", url, opts.method, body, 1, opts.duration)
            floor = noop_floor(url, body, opts.duration)
            h_batched = handle_load_phase("handle_batched", opts.method, body, opts.clients, opts.duration)
            batched = http_phase("http_batched", url, opts.method, body, opts.clients, opts.duration)
            deploy(args, 32, coalesce=False)
            per_image = http_phase("http_batched_per_image", url, opts.method, body, opts.clients, opts.duration)
            deploy(args, 1)
            after = http_phase("http_unbatched_after", url, opts.method, body, opts.clients, opts.duration)
        finally:
            serve.shutdown()
            ray.shutdown()
        unbatched = {"rps": (before["rps"] + after["rps"]) / 2}
        print(f"http_unbatched_before_after_rps: {before['rps']:.2f} / {after['rps']:.2f}")
        print(f"batched_vs_unbatched_rps: {batched['rps'] / max(unbatched['rps'], 1e-9):.2f}x (goal >= 4; "
              "unbatched = the mean of before and after)")
        print(f"batched_per_image_vs_unbatched_rps: {per_image['rps'] / max(unbatched['rps'], 1e-9):.2f}x "
              "(the Explainer batches, the Ingress sends one call per image)")
        print(f"handle_batched_vs_unbatched_rps: {h_batched['rps'] / max(h_unbatched['rps'], 1e-9):.2f}x "
              "(the Explainer alone, without the HTTP front)")
        print(f"http_added_p50_ms: {http_seq['p50_ms'] - seq['p50_ms']:.2f} (goal <= 3)")
        print(f"serve_http_floor_p50_ms: {floor['p50_ms']:.2f} (a do-nothing deployment behind the same proxy)")


if __name__ == "__main__":
    main()
