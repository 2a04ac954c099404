"""A real multi-node Ray cluster on 127.0.0.1, plus an S3 API (moto's server), for tests and for trying things by hand.

Each node is its own ``ray start … --block`` in its own process group (the head: GCS, dashboard, raylet; each worker:
a raylet with node-specific custom resources), every port from the OS, one short temp dir of its own. Stopping kills
exactly those process groups, never another Ray on the machine (``ray stop`` would end them all).

    python scripts/local_cluster.py up [--workers 2] [--cpus 1]   # prints the exports that point a shell at it
    python scripts/local_cluster.py env | status | down

(``scripts/local_cluster.sh`` wraps this.) From Python (the multinode tests)::

    with LocalCluster.started(workers=[Node("w1", 1, {"w1": 1})]) as c:
        c.kill_node("w1")          # SIGKILL that node's raylet: a lost node
        c.add_node(Node("w1b", 1, {"w1": 1}))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATE_FILE = Path(os.environ.get("INTERP_RAY_LOCAL_CLUSTER_STATE",
                                 Path(tempfile.gettempdir()) / f"interp-ray-local-cluster-{os.getuid()}.json"))
# moto accepts any key; fixed ones keep pyarrow from walking the AWS credential chain.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
OBJECT_STORE_BYTES = 200_000_000  # per node: the machine is shared, and the tests move kilobytes


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS says are free now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class Node:
    name: str
    cpus: float = 1
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    pid: int | None = None  # of its `ray start --block`, which leads the node's process group

    def replacement(self) -> "Node":
        """The node that replaces this one once lost: the same CPUs and resources, a new name (a cloud's new VM)."""
        return Node(f"{self.name}b", self.cpus, dict(self.resources))


@dataclasses.dataclass
class LocalCluster:
    root: str                      # temp dir: logs, Ray's session files
    gcs_port: int
    dashboard_port: int
    s3_port: int | None
    env: dict[str, str]            # what every node and driver runs with
    head: Node
    workers: list[Node] = dataclasses.field(default_factory=list)
    s3_pid: int | None = None
    autoscaling_config: str | None = None  # the fake provider's cluster config, when the autoscaler runs

    # --- addresses ---------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str | None:
        return f"http://127.0.0.1:{self.s3_port}" if self.s3_port else None

    def driver_env(self) -> dict[str, str]:
        """The environment a driver (a job's CLI, `ray job submit`) needs to use this cluster and its S3."""
        return {**os.environ, **self.env, "RAY_ADDRESS": self.address}

    # --- lifecycle ---------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, *, head_cpus: float = 1, head_resources: dict[str, float] | None = None,
              workers: list[Node] = (), s3: bool = True, env: dict[str, str] | None = None,
              autoscaler: dict[str, Any] | None = None, timeout: float = 180) -> "LocalCluster":
        """``autoscaler``: run Ray's autoscaler over its fake multi-node provider on the head, which then starts and
        stops worker nodes itself: ``{"node_types": {name: {"resources": …, "min_workers": …, "max_workers": …}},
        "idle_timeout_minutes": …}`` (see ``autoscaler_config``)."""
        root = tempfile.mkdtemp(prefix="rlc", dir="/tmp")  # short: Ray's socket paths have a length limit
        gcs, dash, s3_port = free_ports(3)
        base_env = {
            # 0: the head and every driver default to 127.0.0.1, not eth0. A node joining with 0 is refused
            # ("Multi-node Ray clusters are not supported"), so add_node sets 1 and names 127.0.0.1 itself.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",              # loopback only; cloud configs keep token auth on
            "RAY_TRAIN_ENABLE_V2": "1",
            "RAY_TMPDIR": root, "TMPDIR": root,
            "RAY_USAGE_STATS_ENABLED": "0",
            # A loaded machine (2 shared cores) starts a node's agents slowly.
            "RAY_agent_register_timeout_ms": "300000",
            "PYTHONPATH": str(REPO),                  # workers import this checkout's code
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **({"INTERP_RAY_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}", **S3_CREDENTIALS} if s3 else {}),
            **(env or {}),
        }
        if autoscaler is not None:
            # The fake provider refuses to run without RAY_FAKE_CLUSTER; 1 s: the autoscaler's loop period.
            base_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        c = cls(root, gcs, dash, s3_port if s3 else None, base_env,
                Node("head", head_cpus, dict(head_resources or {"head": 1})))
        if autoscaler is not None:
            c.autoscaling_config = str(Path(root) / "autoscaler.yaml")
            Path(c.autoscaling_config).write_text(json.dumps(autoscaler_config(c, **autoscaler), indent=2))
        try:
            if s3:
                c._start_s3(timeout)
            for attempt in range(1, 4):  # a raylet can abort at start on a loaded machine (see add_node)
                try:
                    c._start_head(timeout)
                    break
                except RuntimeError:
                    if attempt == 3:
                        raise
                    _killpg(c.head.pid, signal.SIGKILL)
                    c.gcs_port, c.dashboard_port = free_ports(2)
            for node in workers:
                c.add_node(node, timeout=timeout)
        except BaseException:
            c.stop()
            if not os.environ.get("INTERP_RAY_KEEP_CLUSTER_LOGS"):
                shutil.rmtree(root, ignore_errors=True)
            raise
        return c

    @classmethod
    @contextmanager
    def started(cls, **kwargs) -> Iterator["LocalCluster"]:
        c = cls.start(**kwargs)
        try:
            yield c
        finally:
            c.stop()
            if not os.environ.get("INTERP_RAY_KEEP_CLUSTER_LOGS"):
                shutil.rmtree(c.root, ignore_errors=True)

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> int:
        log = open(Path(self.root) / f"{log_name}.log", "ab")
        proc = subprocess.Popen(args, env={**os.environ, **self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
        log.close()
        return proc.pid

    def _start_s3(self, timeout: float) -> None:
        self.s3_pid = self._spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)], "moto")
        _wait(lambda: _http_ok(f"{self.s3_endpoint}/moto-api/"), timeout, "moto_server", self.s3_pid)

    def _start_head(self, timeout: float) -> None:
        agent, agent_grpc, metrics, runtime_env, client = free_ports(5)
        self.head.pid = self._spawn(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
             f"--ray-client-server-port={client}", f"--num-cpus={self.head.cpus}",
             f"--resources={json.dumps(self.head.resources)}", f"--object-store-memory={OBJECT_STORE_BYTES}",
             f"--temp-dir={self.root}", "--disable-usage-stats",
             *([f"--autoscaling-config={self.autoscaling_config}"] if self.autoscaling_config else [])], "head")
        _wait(lambda: _http_ok(f"{self.dashboard}/api/version"), timeout, "the head's dashboard", self.head.pid)
        _wait(lambda: len(self.alive_nodes()) >= 1, timeout, "the head node", self.head.pid)

    def add_node(self, node: Node, *, timeout: float = 180, attempts: int = 4) -> Node:
        """Start a worker node and wait until the cluster lists it alive. On a loaded machine a raylet can abort at
        start (it waits a fixed ~15 s for its dashboard agent, whose imports may take longer): then it is retried."""
        for attempt in range(1, attempts + 1):
            agent, agent_grpc, metrics, runtime_env, proxy = free_ports(5)
            before = {n["node_id"] for n in self.alive_nodes()}
            # Not `ray start --address`: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it refuses to join ("Multi-node
            # Ray clusters are not supported"), and with 1 it rewrites 127.0.0.1 to the eth0 address. `node` below
            # starts the same raylet and agents as `ray start --block` does, on 127.0.0.1.
            node.pid = self._spawn(
                [sys.executable, str(Path(__file__).resolve()), "node", f"--address={self.address}",
                 f"--agent-ports={agent},{agent_grpc},{metrics},{runtime_env}", f"--cpus={node.cpus}",
                 f"--resources={json.dumps(node.resources)}", f"--name={node.name}",
                 f"--temp-dir={Path(self.root) / node.name}"], f"node-{node.name}",
                # Every node is 127.0.0.1: a Serve proxy on each would share the head's HTTP port (SO_REUSEPORT),
                # and a client's connection would land on any node's, as no real load balancer sends it. A worker
                # node's proxy gets a port of its own, so clients reach the head's proxy as on a cluster with one
                # entry point.
                env={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(proxy)})
            started, raylet_seen = time.monotonic(), [False]

            def up() -> bool:
                if {n["node_id"] for n in self.alive_nodes()} - before:
                    return True
                # A raylet that started and is gone died at start. None yet may be the node's Python still importing
                # Ray: at load ≈ 27 a 30 s limit here failed 4 tries in a row (most likely so; their logs were gone).
                raylet = any(c == "raylet" for _, c, st in _group_members(node.pid) if st != "Z")
                raylet_seen[0] |= raylet
                if not raylet and (raylet_seen[0] or time.monotonic() - started > 120):
                    raise RuntimeError(f"node {node.name}: its raylet died at start, or none started in 120 s")
                return False

            try:
                _wait(up, timeout, f"node {node.name}", node.pid)
            except (RuntimeError, TimeoutError):
                if attempt == attempts:
                    raise
                _killpg(node.pid, signal.SIGKILL)
                continue
            except BaseException:
                _killpg(node.pid, signal.SIGKILL)
                raise
            break
        self.workers.append(node)
        return node

    def node(self, name: str) -> Node:
        for n in [self.head, *self.workers]:
            if n.name == name:
                return n
        raise KeyError(name)

    def raylet_pid(self, name: str) -> int:
        for pid, comm, _ in _group_members(self.node(name).pid):
            if comm == "raylet":
                return pid
        raise RuntimeError(f"node {name} has no raylet process")

    def kill_node(self, name: str, *, grace: float = 2.0) -> float:
        """Lose a worker node as a crashed machine would: SIGKILL its raylet, then whatever of the node is left.
        Returns the time of the kill (time.time())."""
        node = self.node(name)
        os.kill(self.raylet_pid(name), signal.SIGKILL)
        t = time.time()
        time.sleep(grace)
        _killpg(node.pid, signal.SIGKILL)
        self.workers.remove(node)
        return t

    def stop(self, grace: float = 10) -> None:
        """Stop every node and the S3 server: workers first, the head last. Each node's own process gets SIGTERM
        (its node then stops its raylet before anything else) and ``grace`` seconds; then SIGKILL for whatever of
        it is left. A SIGTERM to a node's whole process group ended the GCS first, and what was left waited out its
        GCS reconnect timeout (the multi-node tests' stop took 34 s)."""
        groups = [n.pid for n in [*self.workers, self.head] if n.pid] + ([self.s3_pid] if self.s3_pid else [])
        for pid in groups:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + grace
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _killpg(pid, signal.SIGKILL)
        for pid in groups:
            _reap(pid)
        # Nodes the autoscaler started are the monitor's children (in the head's process group, as checked); should
        # one have left it, it is still found by this cluster's temp dir in its command line (no other Ray's).
        for pid in _processes_under(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.workers, self.head.pid, self.s3_pid = [], None, None

    # --- what is running ----------------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """The State API's node list (node_id, state, resources_total, labels …)."""
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=1000", timeout=10) as r:
                return json.load(r)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "LocalCluster":
        raw = json.loads(text)
        raw["head"] = Node(**raw["head"])
        raw["workers"] = [Node(**w) for w in raw["workers"]]
        return cls(**raw)


def _http_ok(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except urllib.error.HTTPError:  # the server answered
        return True
    except OSError:
        return False


def _wait(ready, timeout: float, what: str, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if pid is not None and not _group_alive(pid):
            raise RuntimeError(f"{what}: its process {pid} exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not up within {timeout:.0f} s")
        time.sleep(0.5)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _proc_stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it: state, ppid, pgrp, …) of process ``pid`` from /proc (no psutil in the
    venv); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def _group_members(pgid: int) -> list[tuple[int, str, str]]:
    """(pid, command name, state) of every process in group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(entry)) is not None and int(st[1][2]) == pgid:
            out.append((int(entry), st[0], st[1][0]))
    return out


def _processes_under(root: str) -> list[int]:
    """This user's processes whose command line names ``root`` (a cluster's own temp dir)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(re.escape(root) + r"(/|\s|$)", cmdline):
            out.append(int(entry))
    return out


def autoscaler_config(c: LocalCluster, *, node_types: dict[str, dict[str, Any]],
                      idle_timeout_minutes: float = 0.2, max_workers: int = 4) -> dict[str, Any]:
    """A cluster config for Ray's fake multi-node provider (the real autoscaler, nodes started as local raylets).

    ``gcs_address`` must be given: without it the provider points new nodes at ``<eth0 address>:6379``. The head's
    type must be called ``ray.head.default`` (the provider's name for the node it did not start)."""
    head = {"resources": {"CPU": c.head.cpus, **c.head.resources}, "node_config": {}, "max_workers": 0}
    types = {name: {"node_config": {}, "min_workers": 0, **t} for name, t in node_types.items()}
    return {
        "cluster_name": "interp-ray-local", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": c.address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {"ray.head.default": head, **types}, "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    return any(state != "Z" for _, _, state in _group_members(pgid))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` is still running (reaped first when it is this process's child)."""
    _reap(pid)
    st = _proc_stat(pid)
    return st is not None and st[1][0] != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- the command line ------------------------------------------------------------------------------------------------

def exports(c: LocalCluster) -> str:
    keys = ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "INTERP_RAY_S3_ENDPOINT", *S3_CREDENTIALS]
    # RAY_ADDRESS for drivers (a job's CLI), RAY_API_SERVER_ADDRESS for `ray job submit` / `serve deploy`.
    lines = [f"export RAY_ADDRESS={c.address}", f"export RAY_API_SERVER_ADDRESS={c.dashboard}"]
    lines += [f"export {k}={c.env[k]}" for k in keys if k in c.env]
    lines.append(f"# dashboard / Jobs API: {c.dashboard}   logs: {c.root}")
    return "\n".join(lines)


def run_worker_node(args: argparse.Namespace) -> int:
    """One worker node in this process, as `ray start --address … --block` runs it, until SIGTERM."""
    import ray._private.node
    import ray._private.parameter

    agent, agent_grpc, metrics, runtime_env = (int(x) for x in args.agent_ports.split(","))
    params = ray._private.parameter.RayParams(
        node_ip_address="127.0.0.1", node_name=args.name, gcs_address=args.address, num_cpus=args.cpus,
        resources=json.loads(args.resources), object_store_memory=OBJECT_STORE_BYTES,
        dashboard_agent_listen_port=agent, metrics_agent_port=agent_grpc, metrics_export_port=metrics,
        runtime_env_agent_port=runtime_env, include_log_monitor=False,
        # A disk of its own, as a real node has: nodes sharing one session dir unpack a job's working_dir into the
        # same folder, and one node's runtime-env agent replaces the folder another node's driver runs in.
        temp_dir=args.temp_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # atexit then stops the node's processes
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"node {args.name} up: raylet {node.raylet_socket_name}", flush=True)
    while True:
        time.sleep(1)
        if node.dead_processes():  # its raylet was killed: the node is gone, like a crashed machine
            print(f"node {args.name}: processes died: {node.dead_processes()}", flush=True)
            return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("node", help=argparse.SUPPRESS)  # used by add_node
    node.add_argument("--address", required=True)
    node.add_argument("--agent-ports", required=True)
    node.add_argument("--cpus", type=float, required=True)
    node.add_argument("--resources", default="{}")
    node.add_argument("--name", required=True)
    node.add_argument("--temp-dir", required=True)
    up = sub.add_parser("up", help="start the head, the workers and the S3 server; print the exports")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cpus", type=float, default=1, help="logical CPUs per worker node")
    up.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("env", help="print the exports again")
    sub.add_parser("status", help="the nodes the cluster lists")
    args = p.parse_args(argv)

    if args.cmd == "node":
        return run_worker_node(args)
    if args.cmd == "up":
        if STATE_FILE.exists():
            print(f"a local cluster is already up (state in {STATE_FILE}); run `down` first", file=sys.stderr)
            return 2
        workers = [Node(f"w{i}", args.cpus, {f"w{i}": 1}) for i in range(1, args.workers + 1)]
        c = LocalCluster.start(workers=workers)
        STATE_FILE.write_text(c.to_json())
        if c.s3_endpoint:
            for bucket in args.bucket or ["interp-ray"]:
                make_bucket(c.s3_endpoint, bucket)
        print(exports(c))
        return 0
    if not STATE_FILE.exists():
        print(f"no local cluster is up (no {STATE_FILE})", file=sys.stderr)
        return 2 if args.cmd != "down" else 0
    c = LocalCluster.from_json(STATE_FILE.read_text())
    if args.cmd == "down":
        c.stop()
        STATE_FILE.unlink()
        shutil.rmtree(c.root, ignore_errors=True)
        print("stopped")
    elif args.cmd == "env":
        print(exports(c))
    else:
        for n in c.nodes():
            print(n.get("node_id", "?")[:12], n.get("state"), json.dumps(n.get("resources_total", {})))
    return 0


def make_bucket(endpoint: str, bucket: str) -> None:
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http", access_key="testing",
                      secret_key="testing", region="us-east-1", allow_bucket_creation=True).create_dir(bucket)


if __name__ == "__main__":
    sys.exit(main())
