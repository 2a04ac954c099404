"""The service's own exceptions, which the routes (``serving.api``) turn into 503s and the deployments and the job
runner raise: a leaf module, so that neither has to import the other."""

from __future__ import annotations


class ServiceUnavailable(Exception):
    """The service cannot take the request now (backpressure, no replica, job slots full): 503 + Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0, code: str = "unavailable"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code   # the JSON error body's code: "unavailable", or one naming a cause a client can act on


class JobsFull(Exception):
    """Every job slot holds a job still running: the client should retry later (503)."""
