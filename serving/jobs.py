"""Asynchronous explanation jobs: a request is accepted at once (202 with an id), runs in the background, and is
polled by id until it has a result.

``JobRunner`` is plain asyncio. In the Serve application it runs as a deployment-scoped actor of the ``Ingress``
deployment (one per application, shared by every Ingress replica and outliving any of them, so a poll may land on
any replica and a downscaled replica does not take running jobs with it); it reaches the ``Explainer`` deployment
through a handle. Without a cluster (local testing mode, unit tests) it runs in-process around any backend.
Jobs live in memory: bounded in number (``max_jobs``) and age (``ttl_s``); a restart of the runner forgets them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from serving.errors import JobsFull
from serving.service import Outcome, Row

ACTIVE = ("queued", "running")
BUSY_RETRIES = 30


@dataclass
class Job:
    id: str
    method: str
    total: int
    status: str = "queued"
    done: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    outcomes: list[Outcome] | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task | None = None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "status": self.status, "images": self.total,
                "done": self.done, "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "error": self.error}


class JobRunner:
    """Runs jobs in chunks of ``concurrency`` images through ``backend.explain`` (batched by the Explainer)."""

    def __init__(self, *, max_jobs: int = 256, ttl_s: float = 3600.0, concurrency: int = 16,
                 backend: Any = None, backend_factory: Callable[[], Any] | None = None):
        self.max_jobs, self.ttl_s, self.concurrency = int(max_jobs), float(ttl_s), int(concurrency)
        self._backend = backend
        if backend is None and backend_factory is None:
            raise ValueError("JobRunner needs a backend or a backend_factory")
        self._backend_factory = backend_factory
        self._jobs: dict[str, Job] = {}

    def backend(self) -> Any:
        if self._backend is None:
            self._backend = self._backend_factory()
        return self._backend

    async def submit(self, method: str, rows: list[Row]) -> dict[str, Any]:
        self._evict()
        if len(self._jobs) >= self.max_jobs:
            raise JobsFull(f"{len(self._jobs)} jobs are running; retry later")
        job = Job(id=uuid.uuid4().hex, method=method, total=len(rows))
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, rows))
        return job.summary()

    async def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's summary; ``outcomes`` (a list of Outcome) is added once it has succeeded."""
        self._evict()
        job = self._jobs.get(job_id)
        if job is None:
            return None
        out = job.summary()
        if job.status == "succeeded":
            out["outcomes"] = job.outcomes
        return out

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status in ACTIVE and job.task is not None:
            job.task.cancel()
            job.status, job.finished_at = "cancelled", time.time()
        return job.summary()

    async def _run(self, job: Job, rows: list[Row]) -> None:
        job.status, job.started_at = "running", time.time()
        outcomes: list[Outcome] = []
        try:
            for lo in range(0, len(rows), self.concurrency):
                chunk = await self._explain_chunk(job.method, rows[lo:lo + self.concurrency])
                bad = next((i for i, o in enumerate(chunk) if not o.ok), None)
                if bad is not None:
                    o = chunk[bad]
                    job.error = {"status": o.status, "message": f"image {lo + bad}: {o.error}"}
                    job.status = "failed"
                    return
                outcomes.extend(chunk)
                job.done = len(outcomes)
            job.outcomes, job.status = outcomes, "succeeded"
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        except Exception as e:  # the job fails, the runner goes on
            status = getattr(e, "status", 500)
            job.error = {"status": status, "message": str(e) if status < 500 else f"{type(e).__name__}: {e}"}
            job.status = "failed"
        finally:
            job.finished_at = time.time()

    async def _explain_chunk(self, method: str, rows: list[Row]) -> list[Outcome]:
        """A job waits out backpressure (an error with ``retry_after_s``) instead of failing, a bounded number of
        times: it has no client waiting on the other end to retry for it."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return await self.backend().explain(method, rows)
            except Exception as e:
                wait = getattr(e, "retry_after_s", None)
                if wait is None or attempt == BUSY_RETRIES:
                    raise
                await asyncio.sleep(float(wait))
        raise AssertionError("unreachable")

    def _evict(self) -> None:
        """Drop finished jobs past their TTL, then the oldest finished ones while over ``max_jobs``."""
        now = time.time()
        for jid in [j.id for j in self._jobs.values()
                    if j.status not in ACTIVE and j.finished_at and now - j.finished_at > self.ttl_s]:
            del self._jobs[jid]
        finished = [j.id for j in self._jobs.values() if j.status not in ACTIVE]
        while len(self._jobs) >= self.max_jobs and finished:
            del self._jobs[finished.pop(0)]
