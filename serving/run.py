"""Serve the explanation service on a local Ray bound to 127.0.0.1 (Ray Serve's own ``serve run``; the jobs keep their
local Ray there too: ``jobs.common.init_ray``).

    interp-ray serve                                      # serving/serve_config.yaml on a local Ray, loopback only
    interp-ray serve serving/serve_config.yaml --address 127.0.0.1:6379   # on a running cluster: its addresses

A plain ``serve run`` with no ``--address`` and no ``RAY_ADDRESS`` starts a local Ray whose GCS, raylet and workers
bind the machine's network address (eth0), not loopback: Ray 2.60 rewrites ``127.0.0.1`` to that address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which it reads once, when ``ray`` is first imported. So this sets it before
importing Ray, only when Serve is about to start a local Ray; a given address (a cluster the user chose) is left as
it is. Everything else, options included, is ``serve run``'s (``serve run --help``).
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping, Sequence

DEFAULT_CONFIG = "serving/serve_config.yaml"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
LOCAL_ADDRESSES = ("", "local")                      # what makes ray.init start a Ray of its own


def given_address(argv: Sequence[str], environ: MutableMapping[str, str]) -> str:
    """The address ``serve run`` would pass to ``ray.init``: ``--address``/``-a``, else ``$RAY_ADDRESS``, else ''."""
    for i, arg in enumerate(argv):
        if arg in ("--address", "-a") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--address="):
            return arg.split("=", 1)[1]
    return environ.get("RAY_ADDRESS", "")


def prepare(argv: Sequence[str], environ: MutableMapping[str, str]) -> list[str]:
    """``serve`` CLI arguments for ``argv`` (the default config when none is named), with ``environ`` set so that a
    local Ray binds 127.0.0.1. Must run before ``ray`` is imported in this process."""
    args = list(argv)
    if not args or args[0].startswith("-"):
        args.insert(0, DEFAULT_CONFIG)
    if given_address(args, environ) in LOCAL_ADDRESSES:
        if "ray" in sys.modules and environ is os.environ and LOOPBACK_ENV not in environ:
            # Ray read the variable at its import; setting it now would silently do nothing.
            raise RuntimeError("serving.run.prepare must run before `import ray`")
        environ.setdefault(LOOPBACK_ENV, "0")   # the user's own setting (1: bind eth0) wins, as in the jobs
    return ["run", *args]


def main(argv: Sequence[str] | None = None) -> int:
    args = prepare(sys.argv[1:] if argv is None else argv, os.environ)
    from ray.serve.scripts import cli

    return int(cli.main(args=args, prog_name="interp-ray serve", standalone_mode=True) or 0)


if __name__ == "__main__":
    sys.exit(main())
