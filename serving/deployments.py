"""The Serve deployments: thin wrappers around ``ExplainerService`` (the same explainer objects the jobs use).

``Explainer``: one per replica loads the classifier once and builds every servable method; each method has its own
batch queue (``serving.batching.Batcher``, made per replica at start-up from the registry, so a new method is
batched with no code here), and predictions have one too. Batches run on one worker thread: the replica's event
loop keeps accepting requests (so the next batch forms while one computes), and two methods never hook the same
model at once.

``Ingress``: the FastAPI app (``serving.api.make_api``), built per replica around a ``HandleBackend`` to the
Explainer, which groups the images waiting for a method into one Explainer call (``forwarding`` in the args);
asynchronous jobs go to a deployment-scoped ``JobRunner`` actor shared by every Ingress replica.
Metrics go through ``ray.serve.metrics`` (exported for Prometheus by Ray's metrics agent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ray import serve

from serving.api import make_api
from serving.batching import Batcher
from serving.errors import JobsFull, ServiceUnavailable
from serving.jobs import JobRunner
from serving.service import PREDICT, Outcome, Row, ServeArgs, checked_info, load_args, open_service

log = logging.getLogger("interp_ray.serving")

EXPLAINER = "Explainer"
INGRESS = "Ingress"
JOBS_ACTOR = "jobs"
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


# --------------------------------------------------------------------------- metrics


class RequestMetrics:
    """Per-route, per-method request latency and counts, and errors by status (Ingress)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        tags = ("route", "method", "status")
        self.latency = metrics.Histogram("interp_ray_request_latency_ms", description="HTTP request latency",
                                         boundaries=LATENCY_BOUNDARIES_MS, tag_keys=tags)
        self.requests = metrics.Counter("interp_ray_requests_total", description="HTTP requests", tag_keys=tags)
        self.errors = metrics.Counter("interp_ray_request_errors_total", description="HTTP requests answered 4xx/5xx",
                                      tag_keys=tags)

    def observe(self, route: str, method: str, status: int, ms: float) -> None:
        tags = {"route": route, "method": method or "-", "status": str(status)}
        self.latency.observe(ms, tags=tags)
        self.requests.inc(1, tags=tags)
        if status >= 400:
            self.errors.inc(1, tags=tags)


class BatchMetrics:
    """Per-method calls, batch sizes, compute time and failed rows (Explainer)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.size = metrics.Histogram("interp_ray_batch_size", description="rows per batch",
                                      boundaries=BATCH_BOUNDARIES, tag_keys=("method",))
        self.compute = metrics.Histogram("interp_ray_batch_compute_ms", description="compute time of one batch",
                                         boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("method",))
        self.failed = metrics.Counter("interp_ray_failed_rows_total", description="rows answered with an error",
                                      tag_keys=("method", "status"))
        self.calls: dict[str, int] = {}    # also kept locally: stats() reports them (tests, benchmarks)
        self.batches: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    def call(self, method: str) -> None:
        """One call received: one image, or one group from an Ingress."""
        self.calls[method] = self.calls.get(method, 0) + 1

    def observe(self, method: str, outcomes: list[Outcome], ms: float) -> None:
        self.batches[method] = self.batches.get(method, 0) + 1
        self.rows[method] = self.rows.get(method, 0) + len(outcomes)
        self.size.observe(len(outcomes), tags={"method": method})
        self.compute.observe(ms, tags={"method": method})
        for o in outcomes:
            if not o.ok:
                self.failed.inc(1, tags={"method": method, "status": str(o.status)})


# --------------------------------------------------------------------------- the Explainer deployment


@serve.deployment(name=EXPLAINER, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class ExplainerDeployment:
    def __init__(self, args: dict[str, Any]):
        # A classifier whose model code did not reach this replica gives a service that answers why (no crash loop).
        self.service = open_service(args)
        self.args = self.service.args
        # One thread: batches never overlap (Captum methods hook the shared model), the event loop stays free.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interp-ray-batch")
        self._metrics = BatchMetrics()
        self._batchers: dict[str, Callable] = {name: self._batcher(name, self._explain_fn(name))
                                               for name in self.service.sessions}
        self._predict = self._batcher(PREDICT, self._predict_batch)

    def _batcher(self, key: str, fn: Callable) -> Batcher:
        s = self.args.batch_settings(key)
        return Batcher(fn, max_size=s.max_batch_size, wait_s=s.batch_wait_timeout_s)

    def _explain_fn(self, method: str) -> Callable:
        async def explain_batch(rows: list[Row]) -> list[Outcome]:
            return await self._compute(method, self.service.explain_rows, method, rows)

        return explain_batch

    async def _predict_batch(self, rows: list[Row]) -> list[Outcome]:
        return await self._compute(PREDICT, self.service.predict_rows, rows)

    async def _compute(self, key: str, fn: Callable, *args: Any) -> list[Outcome]:
        t0 = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        self._metrics.observe(key, outcomes, (time.perf_counter() - t0) * 1000)
        return outcomes

    async def explain(self, method: str, row: Row) -> Outcome:
        self._metrics.call(method)
        return await self._explain_one(method, row)

    async def predict(self, row: Row) -> Outcome:
        self._metrics.call(PREDICT)
        return await self._predict(row)

    async def explain_many(self, method: str, rows: list[Row]) -> list[Outcome]:
        """Images an Ingress grouped into one call. Each still joins this replica's batch queue, so images from
        several Ingress replicas share batches and ``max_batch_size`` bounds every batch."""
        self._metrics.call(method)
        return list(await asyncio.gather(*(self._explain_one(method, row) for row in rows)))

    async def predict_many(self, rows: list[Row]) -> list[Outcome]:
        self._metrics.call(PREDICT)
        return list(await asyncio.gather(*(self._predict(row) for row in rows)))

    async def _explain_one(self, method: str, row: Row) -> Outcome:
        batcher = self._batchers.get(method)
        if batcher is None:
            return Outcome(status=404, error=self.service.unknown_method(method))
        return await batcher(row)

    async def picture(self, method: str, row: Row) -> Outcome:
        """One image explained and drawn (not batched: drawing costs far more than the explanation)."""
        self._metrics.call(f"{method}.picture")
        if method not in self.service.sessions:
            return Outcome(status=404, error=self.service.unknown_method(method))
        return (await self._compute(f"{method}.picture", self.service.picture_rows, method, [row]))[0]

    def info(self) -> dict[str, Any]:
        return self.service.info()

    def stats(self) -> dict[str, dict[str, int]]:
        """This replica's calls received (one per image, or one per Ingress group), batches and rows per method
        since it started."""
        m = self._metrics
        return {"calls": dict(m.calls), "batches": dict(m.batches), "rows": dict(m.rows)}


# --------------------------------------------------------------------------- calling it


class HandleBackend:
    """The routes' backend over a handle to the Explainer, retried when the replica a call went to died
    (explanations are pure, so a retry is safe).

    With ``args.forwarding.coalesce``, the images waiting for one method go to the Explainer as one call (a
    ``Batcher`` per method: up to the method's ``max_batch_size``, ``max_concurrent`` calls in flight, no waiting), so
    the handle hop is paid per group, not per image. Without ``args`` or with ``coalesce: false``, one call per image.
    """

    def __init__(self, handle: Any, args: ServeArgs | None = None, *, retries: int = 3):
        self.handle = handle
        self.args = args
        self.retries = retries
        self._info: dict[str, Any] | None = None
        self._forwarders: dict[str, Batcher] = {}

    @property
    def coalesce(self) -> bool:
        return self.args is not None and self.args.forwarding.coalesce

    async def info(self, refresh: bool = False) -> dict[str, Any]:
        if self._info is None or refresh:
            self._info = checked_info(await self._call("info"))
        return self._info

    async def explain(self, method: str, rows: list[Row]) -> list[Outcome]:
        if self.coalesce:
            return await self._forward(method, rows, "explain_many", method)
        return list(await asyncio.gather(*(self._call("explain", method, row) for row in rows)))

    async def predict(self, rows: list[Row]) -> list[Outcome]:
        if self.coalesce:
            return await self._forward(PREDICT, rows, "predict_many")
        return list(await asyncio.gather(*(self._call("predict", row) for row in rows)))

    async def picture(self, method: str, row: Row) -> Outcome:
        return await self._call("picture", method, row)

    async def _forward(self, key: str, rows: list[Row], call: str, *lead: Any) -> list[Outcome]:
        forwarder = self._forwarders.get(key)
        if forwarder is None:  # made on first use; the routes pass only served methods
            assert self.args is not None

            async def forward(group: list[Row]) -> list[Outcome]:
                return await self._call(call, *lead, group)

            forwarder = Batcher(forward, max_size=self.args.batch_settings(key).max_batch_size,
                                max_concurrent=self.args.forwarding.max_concurrent)
            self._forwarders[key] = forwarder
        return list(await asyncio.gather(*(forwarder(row) for row in rows)))

    async def _call(self, name: str, *args: Any) -> Any:
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        for attempt in range(self.retries + 1):
            try:
                return await getattr(self.handle, name).remote(*args)
            except BackPressureError as e:
                raise ServiceUnavailable(e.message, e.retry_after_s or 1.0) from None
            except DeploymentUnavailableError as e:
                raise ServiceUnavailable(e.message) from None
            except (RayActorError, ActorUnavailableError):
                if attempt == self.retries:
                    raise ServiceUnavailable("the Explainer replica stopped; retry") from None
                log.warning("Explainer replica unavailable; retrying %s (attempt %d)", name, attempt + 1)
                await asyncio.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")


class ActorJobs:
    """The deployment-scoped job runner, resolved by name again whenever the controller has recreated it."""

    def __init__(self) -> None:
        self._actor: Any = None

    async def submit(self, method: str, rows: list[Row]) -> dict[str, Any]:
        return await self._call("submit", method, rows)

    async def status(self, job_id: str) -> dict[str, Any] | None:
        return await self._call("status", job_id)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        return await self._call("cancel", job_id)

    async def _call(self, name: str, *args: Any) -> Any:
        from ray.exceptions import RayActorError, RayTaskError


        for attempt in range(2):
            try:
                if self._actor is None:
                    self._actor = serve.get_deployment_actor(JOBS_ACTOR)
                return await getattr(self._actor, name).remote(*args)
            except RayTaskError as e:
                if isinstance(e.cause, JobsFull):
                    raise ServiceUnavailable(str(e.cause), 5.0) from None
                raise
            except (RayActorError, ValueError):  # dead, or being recreated under the same name
                self._actor = None
                if attempt:
                    raise ServiceUnavailable("the job runner is restarting; retry") from None
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")


def job_client(args: Any, backend: Any) -> Any:
    """The shared job runner actor on a cluster; an in-process runner without one (local testing mode)."""
    import ray


    if ray.is_initialized():
        try:
            serve.get_deployment_actor(JOBS_ACTOR)
            return ActorJobs()
        except Exception as e:  # no deployment actor configured (e.g. the deployment was bound without one)
            log.warning("no shared job runner (%s); jobs run inside this Ingress replica", e)
    return JobRunner(max_jobs=args.max_jobs, ttl_s=args.job_ttl_s, concurrency=args.job_concurrency, backend=backend)


def jobs_actor_config(args: Any) -> Any:
    """The deployment-scoped actor that runs jobs for every Ingress replica. Its init_kwargs must be plain data:
    Serve lists them in the instance details that the dashboard's Serve API (``serve status``, the Serve page)
    encodes as JSON, and a function among them made every such call fail with a 500."""
    import ray
    from ray.serve.config import DeploymentActorConfig

    return DeploymentActorConfig(
        name=JOBS_ACTOR, actor_class=ray.remote(SharedJobRunner),
        init_kwargs={"max_jobs": args.max_jobs, "ttl_s": args.job_ttl_s, "concurrency": args.job_concurrency},
        actor_options={"num_cpus": 0})


class SharedJobRunner(JobRunner):
    """The JobRunner as the deployment-scoped actor: its backend is this application's Explainer deployment, found
    when the first job runs (the actor starts before the application's handles can be resolved)."""

    def __init__(self, **options: Any):
        super().__init__(backend_factory=explainer_backend, **options)


def explainer_backend() -> Any:
    """Inside the deployment-scoped job actor: a handle backend to this application's Explainer deployment."""
    ctx = serve.get_deployment_actor_context()
    return HandleBackend(serve.get_deployment_handle(EXPLAINER, app_name=ctx.app_name))


# --------------------------------------------------------------------------- the Ingress deployment


@serve.deployment(name=INGRESS, max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class IngressDeployment:
    def __init__(self, explainer: Any, args: dict[str, Any]):
        self.args = load_args(args)
        self.backend = HandleBackend(explainer, self.args)
        self.jobs = job_client(self.args, self.backend)

    def __serve_build_asgi_app__(self) -> Any:
        return make_api(self.backend, self.jobs, self.args, metrics=RequestMetrics())
