"""The explanation service as a Ray Serve application (``import_path: serving.app:app``).

    interp-ray serve                             # serve run serving/serve_config.yaml, its local Ray on 127.0.0.1
    serve deploy serving/serve_config.yaml       # a running cluster

An ``Explainer`` deployment (``serving.deployments``) runs the methods; an ``Ingress`` deployment serves the HTTP API
(``serving.api``) and forwards images to it. The routes are listed in ``serving.api``.
"""

from __future__ import annotations

from typing import Any

from interp_ray.errors import UserError
from serving.deployments import ExplainerDeployment, IngressDeployment, jobs_actor_config
from serving.service import load_args


def build_app(args: dict[str, Any] | None = None, *, ingress_options: dict[str, Any] | None = None,
              explainer_options: dict[str, Any] | None = None) -> Any:
    """The Serve application: an ``Explainer`` and an ``Ingress`` deployment.

    ``args`` are ``ServeArgs`` (serve_config.yaml's ``args:``); a bad one fails the deploy with its name.
    ``*_options`` override deployment options in code (tests, benchmarks); a config file's ``deployments:`` entries
    override them again.
    """
    try:
        cfg = load_args(args)
    except UserError as e:
        raise ValueError(str(e)) from None
    explainer = ExplainerDeployment.options(**(explainer_options or {})).bind(cfg.model_dump())
    ingress = IngressDeployment.options(deployment_actors=[jobs_actor_config(cfg)], **(ingress_options or {}))
    return ingress.bind(explainer, cfg.model_dump())


def app(args: dict[str, Any]) -> Any:
    """``import_path: serving.app:app``: Serve calls a builder with the config's ``args:`` (exactly one parameter)."""
    return build_app(args)
