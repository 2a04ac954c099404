"""What Ray Serve itself costs per request on this machine, before any application code: the floor under
``benchmarks.serve_load``'s latencies.

    python -m benchmarks.serve_floor [--requests 300]

One sequential client (keep-alive, 127.0.0.1) against do-nothing deployments on one local Ray, measured side by
side in one run:

  plain_http        proxy → a plain deployment that answers at once;
  fastapi_http      proxy → a FastAPI ingress that answers itself;
  fastapi_hop_http  proxy → a FastAPI ingress → one handle call to a second deployment (the Ingress → Explainer
                    shape of the explanation service);
  driver_handle     the driver → the second deployment through a DeploymentHandle (no HTTP).

Prints ``name.p50_ms`` / ``name.p99_ms`` lines and the hop's share (fastapi_hop − fastapi). Takes the test suite's
machine-wide lock (``--no-lock`` to skip).
"""

from __future__ import annotations

import argparse
import http.client
import os
import time
from typing import Any, Callable

from benchmarks.serve_common import machine_lock, summarise


def timed(call: Callable[[], None], n: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return summarise(samples, 0, time.perf_counter() - start)


def http_get(port: int, path: str) -> Callable[[], None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call() -> None:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")

    return call


def build_apps():
    """The do-nothing deployments (defined here, not at import: no side effects)."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0})
    class Echo:
        def __call__(self, x: int) -> int:
            return x

    @serve.deployment(name="FloorIngress", ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class FloorIngress:
        def __init__(self, echo):
            self.echo = echo

        @api.get("/direct")
        async def direct(self) -> dict:
            return {"ok": 1}

        @api.get("/hop")
        async def hop(self) -> dict:
            return {"ok": await self.echo.remote(1)}

    return FloorIngress.bind(Echo.bind()), plain_app()


def plain_app(read_body: bool = False):
    """A plain deployment that answers at once; with ``read_body`` it first receives the request body, as any
    application taking an upload must (in Serve that is one more exchange with the proxy)."""
    from ray import serve

    @serve.deployment(name="Plain", ray_actor_options={"num_cpus": 0})
    class Plain:
        async def __call__(self, request: Any) -> str:
            if read_body:
                await request.body()
            return "ok"

    return Plain.bind()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--port", type=int, default=8131)
    p.add_argument("--no-lock", dest="lock", action="store_false")
    opts = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import ray
    from ray import serve

    with machine_lock(opts.lock):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
        try:
            ingress, plain = build_apps()
            serve.run(ingress, name="floor", route_prefix="/floor")
            serve.run(plain, name="plain", route_prefix="/plain")
            results = {
                "plain_http": timed(http_get(opts.port, "/plain"), opts.requests),
                "fastapi_http": timed(http_get(opts.port, "/floor/direct"), opts.requests),
                "fastapi_hop_http": timed(http_get(opts.port, "/floor/hop"), opts.requests),
            }
            echo = serve.get_deployment_handle("Echo", app_name="floor")
            results["driver_handle"] = timed(lambda: echo.remote(1).result(), opts.requests)
        finally:
            serve.shutdown()
            ray.shutdown()
    for name, r in results.items():
        print(f"{name}.p50_ms: {r['p50_ms']:.2f}")
        print(f"{name}.p99_ms: {r['p99_ms']:.2f}")
    hop = results["fastapi_hop_http"]["p50_ms"] - results["fastapi_http"]["p50_ms"]
    print(f"handle_hop_in_ingress_p50_ms: {hop:.2f}")


if __name__ == "__main__":
    main()
