"""`interp-ray serve` (serving/run.py): Ray Serve's `serve run`, whose local Ray binds 127.0.0.1 unless an address is
given. What Ray would bind is asked of Ray itself in a fresh interpreter (no Ray is started, nothing is bound)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.run import DEFAULT_CONFIG, LOOPBACK_ENV, prepare

REPO = Path(__file__).resolve().parents[2]

# The address Ray 2.60's node would take: what ray.init / serve run give the GCS, raylet and workers.
PROBE = """
import os, sys
sys.argv = ["interp-ray"] + sys.argv[1:]
from serving.run import prepare
if sys.argv[1:] != ["--unprepared"]:
    prepare(sys.argv[1:], os.environ)
from ray._private.services import get_node_ip_address
print(get_node_ip_address())
"""


def node_ip(*argv: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in (LOOPBACK_ENV, "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env={**environ, **env}, cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def test_a_local_ray_binds_loopback():
    assert node_ip() == "127.0.0.1"
    assert node_ip(DEFAULT_CONFIG, "--address", "local") == "127.0.0.1"


def test_plain_serve_run_would_not():
    """Why the wrapper exists: Ray's own default is the machine's network address (unless this machine has none)."""
    ip = node_ip("--unprepared")
    if ip == "127.0.0.1":
        pytest.skip("this machine has no network address other than loopback")
    assert ip != "127.0.0.1"


@pytest.mark.parametrize("argv,env", [
    (["--address", "127.0.0.1:6379"], {}),
    ([DEFAULT_CONFIG, "-a", "auto"], {}),
    ([DEFAULT_CONFIG, "--address=ray://10.0.0.5:10001"], {}),
    ([DEFAULT_CONFIG], {"RAY_ADDRESS": "auto"}),
])
def test_a_given_cluster_is_left_alone(argv, env):
    environ = dict(env)
    args = prepare(argv, environ)
    assert LOOPBACK_ENV not in environ
    assert args == ["run", *(argv if argv[0] == DEFAULT_CONFIG else [DEFAULT_CONFIG, *argv])]


def test_arguments_are_serve_runs():
    environ: dict[str, str] = {}
    assert prepare([], environ) == ["run", DEFAULT_CONFIG] and environ == {LOOPBACK_ENV: "0"}
    assert prepare(["--non-blocking"], {}) == ["run", DEFAULT_CONFIG, "--non-blocking"]
    assert prepare(["my.yaml", "--reload"], {}) == ["run", "my.yaml", "--reload"]
    # The user's own choice of binding wins, as with the jobs.
    environ = {LOOPBACK_ENV: "1"}
    prepare([], environ)
    assert environ == {LOOPBACK_ENV: "1"}


def test_the_cli_names_the_command():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert any(line.split()[:1] == ["serve"] and "127.0.0.1" in line for line in out.stdout.splitlines()), out.stdout
