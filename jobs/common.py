"""What every job shares: argument parsing, Ray start-up, and turning user errors into exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from interp_ray.errors import UserError

EXIT_USAGE = 2
log = logging.getLogger("interp_ray")


def check_storage_paths(**paths: str | None) -> None:
    """Refuse, before any Ray work, an object-storage path the job could not write (keyword: the config field)."""
    from interp_ray.storage import check_storage

    for what, path in paths.items():
        if path:
            check_storage(path, what=what.replace("__", "."))


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--address", default=None,
                   help="Ray address; default: RAY_ADDRESS, else a local Ray started by ray.init()")
    return p


def init_ray(address: str | None = None, **kwargs) -> None:
    """Connect to the cluster a job was submitted to, or start a local Ray (the embedded default)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A local single-node Ray binds to loopback, not the eth0 address, so nothing it opens is reachable from
        # outside. Ray reads this when it is first imported, hence before `import ray`.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Train V2's placement-group cleaner polls the State API, which lives in the dashboard process.
        kwargs.setdefault("include_dashboard", True)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        ray.init(**kwargs)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a ``UserError`` becomes one line on stderr and exit code 2, nothing half-written."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def exit_with(main: Callable[[Sequence[str] | None], int | None]) -> None:
    sys.exit(run_main(main))
