"""What every job shares: argument parsing, Ray start-up, and turning user errors into exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from interp_ray.errors import UserError
from interp_ray.progress import ENV as PROGRESS_ENV
from jobs.terminal import ENV_RAY_LOGS as RAY_LOGS_ENV
from jobs.terminal import quiet_ray, ray_init_options

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
    p.add_argument("--quiet", nargs=0, action=_SetEnv, default=False, env=(PROGRESS_ENV, "off"),
                   help=f"no progress bars or progress lines (the same as {PROGRESS_ENV}=off)")
    p.add_argument("--ray-logs", nargs=0, action=_SetEnv, default=False, env=(RAY_LOGS_ENV, "1"),
                   help="Ray's own output on the terminal as Ray prints it (workers' lines, Ray Data's execution "
                        f"lines); by default they stay in the Ray session's log files ({RAY_LOGS_ENV}=1)")
    return p


class _SetEnv(argparse.Action):
    """A flag that sets an environment variable as it is parsed: the switch then holds for every job this process
    runs (the pipeline runs its stages' jobs in-process) without each job passing it on."""

    def __init__(self, *args, env: tuple[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.env = env

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        os.environ[self.env[0]] = self.env[1]


def init_ray(address: str | None = None, **kwargs) -> None:
    """Connect to the cluster a job was submitted to, or start a local Ray (the embedded default)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A local single-node Ray binds to loopback, not the eth0 address, so nothing it opens is reachable from
        # outside. Ray reads this when it is first imported, hence before `import ray`.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    quiet_ray()   # before ray.init, which logs; also when Ray runs already (a test session's, the pipeline's)
    if ray.is_initialized():
        return
    kwargs = {**ray_init_options(), **kwargs}
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


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """What a model spec needs beyond its name: the builder's options and the input it takes."""
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the model's builder (YAML value), e.g. --option num_classes=10 (repeatable)")
    p.add_argument("--input-size", type=int, help="the square input size in pixels (option image_size)")
    p.add_argument("--channels", type=int, help="input channels (option in_channels; default 3 for a foreign model)")
    p.add_argument("--mean", help="per-channel mean subtracted inside the model, e.g. 0.485,0.456,0.406 or imagenet")
    p.add_argument("--std", help="per-channel std divided inside the model, e.g. 0.229,0.224,0.225 or imagenet")


def model_options(args: argparse.Namespace) -> dict:
    """The options dict ``build_model`` takes, from ``add_model_arguments``' flags (a bad one is a UserError)."""
    import yaml

    options = {}
    for pair in args.options:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--option {pair!r}: the value is not valid YAML") from None
    for flag, key in (("input_size", "image_size"), ("channels", "in_channels")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    for key in ("mean", "std"):
        raw = getattr(args, key)
        if raw is None:
            continue
        try:
            options[key] = [float(v) for v in raw.split(",")] if any(c.isdigit() for c in raw) else raw
        except ValueError:
            raise UserError(f"--{key} {raw!r}: give numbers separated by commas, or imagenet") from None
    return options


def import_from_cwd() -> None:
    """Make the current directory importable, as ``python -m`` does but the ``interp-ray`` console script does not
    (its sys.path starts at the script's folder): ``interp-ray layers my_models:build`` then finds ./my_models.py,
    and so does every command that loads a checkpoint of that model."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
