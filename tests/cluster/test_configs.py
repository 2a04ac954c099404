"""Checks of cluster/: the cluster-launcher configs, the KubeRay manifests and the image they run.

No cloud, no network, no Ray cluster. What validates what:

* cluster/aws.yaml, cluster/gcp.yaml: Ray's own JSON schema (ray/autoscaler/ray-schema.json, via jsonschema)
  on the file as written, then ``prepare_config`` + ``validate_config`` from ``ray.autoscaler._private.util``,
  the steps ``ray up`` runs before it calls the cloud. Ray's autoscaler scheduler (``get_nodes_for``) is asked
  which node type it would launch for a GPU or CPU demand.
* cluster/kuberay/*.yaml: no KubeRay CRD OpenAPI schema is available offline, so the fields are checked against
  the field lists below, written down from the KubeRay ray.io/v1 API reference (KubeRay v1.5.1+, which added
  ``authOptions``). Unknown keys fail, because the API server would silently prune them. Each cluster spec is also
  fed to Ray's own KubeRay translation (``_derive_autoscaling_config_from_ray_cr``, what the in-tree autoscaler
  runs, ending in ``validate_config``), and serveConfigV2 to Ray Serve's ``ServeDeploySchema``.

Each property is a ``check_*`` function over the parsed document, so the tests at the bottom can remove a
required field from a copy and show that the check then fails.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")

from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary  # noqa: E402
from ray.autoscaler._private.resource_demand_scheduler import (  # noqa: E402
    _default_utilization_scorer,
    get_nodes_for,
)
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = {
    "RayCluster": CLUSTER / "kuberay" / "raycluster.yaml",
    "RayJob": CLUSTER / "kuberay" / "rayjob.yaml",
    "RayService": CLUSTER / "kuberay" / "rayservice.yaml",
}
GCP_FIREWALL = CLUSTER / "gcp-firewall.sh"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"

RAY_VERSION = ray.__version__
# Dashboard/Jobs API, Serve HTTP, GCS, Ray Client: none of them may be reachable from an IP range.
PRIVATE_PORTS = (8265, 8000, 6379, 10001)
BUCKET_SCHEMES = ("s3://", "gs://")
AUTH_TOKEN_REMOTE = "~/.ray/auth_token"
PIPELINE_CMD = "python -m jobs.pipeline --config configs/pipeline.yaml"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def gpu_count(resources: dict) -> float:
    return float(resources.get("GPU", 0))


# --------------------------------------------------------------------------- cluster launcher (ray up)


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_launcher_ray_validation(cfg: dict) -> dict:
    """What `ray up` checks before touching the cloud. Returns the prepared (defaults-filled) config."""
    # The file as written: Ray's schema forbids unknown top-level and node-type keys (a typo such as
    # `min_worker` fails here, not after defaults are merged in).
    jsonschema.validate(cfg, ray_schema())
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def node_types(cfg: dict) -> dict[str, dict]:
    return cfg["available_node_types"]


def worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in node_types(cfg).items() if k != cfg["head_node_type"]}


def is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    sched = node_config.get("scheduling", {})
    if isinstance(sched, list):  # Ray's older examples write a list of one-key dicts
        sched = {k: v for item in sched for k, v in item.items()}
    return sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True


def check_launcher_node_types(cfg: dict, provider: str) -> None:
    head = node_types(cfg)[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU 0 so no task lands on it"
    assert gpu_count(head["resources"]) == 0, "the head is a CPU node"
    workers = worker_types(cfg)
    for name, nt in workers.items():
        assert "min_workers" in nt and "max_workers" in nt, f"{name}: set min_workers/max_workers explicitly"
    gpu = {k: v for k, v in workers.items() if gpu_count(v["resources"]) >= 1}
    cpu = {k: v for k, v in workers.items() if gpu_count(v["resources"]) == 0}
    assert gpu, "no GPU worker type"
    for name, nt in gpu.items():
        assert nt["min_workers"] == 0, f"{name}: GPU workers must scale from zero"
        assert nt["max_workers"] >= 1, f"{name}: GPU workers must be able to scale up"
    assert any(nt["resources"].get("CPU", 0) >= 1 for nt in cpu.values()), "no CPU worker type for Ray Data"
    spot = [k for k, v in gpu.items() if is_spot(provider, v["node_config"])]
    on_demand = [k for k, v in gpu.items() if not is_spot(provider, v["node_config"])]
    assert spot, "no spot/preemptible GPU worker type"
    assert on_demand, "no on-demand GPU fallback type"
    idle = cfg.get("idle_timeout_minutes")
    assert isinstance(idle, (int, float)) and idle > 0, "set idle_timeout_minutes so idle nodes go away"


def check_spot_before_on_demand(prepared: dict, provider: str) -> None:
    """Ask Ray's autoscaler scheduler (Ray 2.60, autoscaler v1) which node type it would launch."""
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    scorer = functools.partial(
        _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary(node_availabilities={})
    )
    gpu_types = {k for k, v in types.items() if gpu_count(v["resources"]) >= 1}
    spot = {k for k in gpu_types if is_spot(provider, types[k]["node_config"])}

    def launch(existing: dict[str, int], demand: dict) -> dict[str, int]:
        to_add, _ = get_nodes_for(types, {head: 1, **existing}, head, 10, [demand], scorer)
        return dict(to_add)

    first = launch({}, {"GPU": 1})
    assert set(first) <= spot and sum(first.values()) == 1, f"a GPU demand should launch a spot node, got {first}"
    full = {k: types[k]["max_workers"] for k in spot}
    fallback = launch(full, {"GPU": 1})
    assert fallback and set(fallback) <= gpu_types - spot, f"with spot at max, expected on-demand, got {fallback}"
    cpu_only = launch({}, {"CPU": 1})
    assert cpu_only and not set(cpu_only) & gpu_types and head not in cpu_only, f"CPU work launched {cpu_only}"


# Ray 2.60's ray.autoscaler._private.aws.config._create_default_inbound_rules, used when boto3 is not installed:
# the security group Ray creates allows everything from its own members and SSH from anywhere, then appends
# provider.security_group.IpPermissions.
def _ray_aws_inbound_rules(extra: list[dict]) -> list[dict]:
    try:
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules
    except ImportError:  # boto3 missing: the module asserts on it at import
        base = [
            {"FromPort": -1, "ToPort": -1, "IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-self"}]},
            {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ]
        return base + list(extra)
    return _create_default_inbound_rules({"sg-self"}, extra)


def _aws_rule_covers(rule: dict, port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    return lo == -1 or lo <= port <= hi


def check_aws_ingress(cfg: dict) -> None:
    provider = cfg["provider"]
    for name, nt in node_types(cfg).items():
        assert "SecurityGroupIds" not in nt["node_config"], (
            f"{name}: a user security group is outside what this test can see; use provider.security_group"
        )
    rules = _ray_aws_inbound_rules(provider.get("security_group", {}).get("IpPermissions", []))
    for rule in rules:
        from_ip_range = rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds")
        if not from_ip_range:
            continue  # from the cluster's own security group
        for port in PRIVATE_PORTS:
            assert not _aws_rule_covers(rule, port), f"security group opens port {port} to {from_ip_range}"
        assert rule.get("FromPort") == rule.get("ToPort") == 22 and rule.get("IpProtocol") == "tcp", (
            f"only SSH may be open to an IP range, got {rule}"
        )


def firewall_rules(script: str) -> list[dict[str, str]]:
    """The `gcloud compute firewall-rules create` calls of cluster/gcp-firewall.sh, variables expanded."""
    text = re.sub(r"\\\n\s*", " ", script)
    defaults = {m[0]: m[1] for m in re.findall(r'^(\w+)="\$\{\1:-([^}]*)\}"', text, re.M)}
    defaults.update(re.findall(r"^(\w+)=([\w./-]+)$", text, re.M))
    rules = []
    for line in text.splitlines():
        if "gcloud compute firewall-rules create" not in line:
            continue
        args = {}
        for tok in shlex.split(line):
            if tok.startswith("--") and "=" in tok:
                key, val = tok[2:].split("=", 1)
                args[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], "UNSET"), val)
        rules.append(args)
    return rules


def check_gcp_ingress(cfg: dict, script: str) -> None:
    rules = firewall_rules(script)
    assert rules, "cluster/gcp-firewall.sh creates no firewall rule"
    tags = set()
    for r in rules:
        assert r.get("direction", "INGRESS") == "INGRESS"
        assert r.get("target-tags"), f"rule without target-tags applies to every VM in the network: {r}"
        tags.add(r["target-tags"])
        internal = "source-tags" in r and "source-ranges" not in r
        if not internal:  # GCP's default source for an ingress rule with neither is 0.0.0.0/0
            assert r.get("allow") == "tcp:22", f"only SSH may be open to an IP range, got {r}"
    assert len(tags) == 1, tags
    (tag,) = tags
    for name, nt in node_types(cfg).items():
        assert tag in nt["node_config"].get("tags", {}).get("items", []), (
            f"{name} lacks network tag {tag!r}: the firewall rules would not apply to it"
        )


def check_launcher_ports_private(cfg: dict) -> None:
    start = " ".join(cfg["head_start_ray_commands"])
    host = re.search(r"--dashboard-host[= ](\S+)", start)
    assert host is None or host[1] == "127.0.0.1", "the dashboard/Jobs API must listen on 127.0.0.1"
    options = " ".join(cfg.get("docker", {}).get("run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)(\s|=)", options), "no published container ports"


def check_launcher_token_auth(cfg: dict) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts, key
        for cmd in starts:
            assert "RAY_AUTH_MODE=token ray start" in cmd, f"{key}: `ray start` without RAY_AUTH_MODE=token"
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"], "containers need RAY_AUTH_MODE=token"
    assert cfg["file_mounts"].get(AUTH_TOKEN_REMOTE) == "~/.ray/auth_token", "the token must reach every node"


def check_launcher_storage(cfg: dict, scheme: str) -> None:
    env = dict(
        opt.split(" ", 1)[1].split("=", 1) for opt in cfg["docker"]["run_options"] if opt.startswith("--env ")
    )
    assert env.get("INTERP_RAY_STORAGE", "").startswith(scheme), "INTERP_RAY_STORAGE must be a bucket URI"


def check_launcher_sync_and_install(cfg: dict) -> None:
    """file_mounts carry what `pip install -e ~/interp-ray` needs: pyproject.toml, its readme, its packages."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    readme = pyproject["project"].get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    includes = pyproject.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", [])
    needed = {"pyproject.toml", *([readme] if readme else []), *(p.rstrip("*.") for p in includes)}
    mounts = {remote: local for remote, local in cfg["file_mounts"].items() if remote != AUTH_TOKEN_REMOTE}
    synced = {}
    for remote, local in mounts.items():
        assert remote.startswith("~/interp-ray/"), remote
        assert not local.startswith(("/", "~")), f"{local}: sync from the repository, by relative path"
        synced[remote.removeprefix("~/interp-ray/")] = Path(local).as_posix()
    assert needed <= set(synced), f"file_mounts miss {sorted(needed - set(synced))}"
    missing = [local for local in synced.values() if not (REPO / local).exists()]
    assert not missing, f"`ray up` would stop: {missing} missing from the repository (pyproject.toml needs them)"
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and "interp-ray" in c]
    assert installs and all("$HOME/interp-ray" in c for c in installs), cfg["setup_commands"]


def check_launcher(cfg: dict, provider: str) -> None:
    prepared = check_launcher_ray_validation(cfg)
    check_launcher_node_types(cfg, provider)
    check_spot_before_on_demand(prepared, provider)
    check_launcher_ports_private(cfg)
    check_launcher_token_auth(cfg)
    check_launcher_storage(cfg, "s3://" if provider == "aws" else "gs://")
    if provider == "aws":
        check_aws_ingress(cfg)
    else:
        check_gcp_ingress(cfg, GCP_FIREWALL.read_text())


# --------------------------------------------------------------------------- KubeRay manifests

# Field lists of the KubeRay ray.io/v1 API (docs/reference/api.md of KubeRay; authOptions since v1.5.1).
# Written down here because no CRD OpenAPI schema is available offline.
RAYCLUSTER_SPEC_FIELDS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
    "template", "scaleStrategy", "numOfHosts",
}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
    "env", "envFrom", "volumeMounts",
}
AUTH_OPTIONS_FIELDS = {"mode", "secretName"}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId",
    "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYSERVICE_SPEC_FIELDS = {
    "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold", "serveService", "upgradeStrategy",
    "serveConfigV2", "rayClusterConfig", "excludeHeadPodFromServeSvc",
}
# Required by the CRD (json tags without omitempty) or by this project.
HEAD_GROUP_REQUIRED = {"template", "rayStartParams"}
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"}
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def known_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)} (the API server would prune them)"


def cluster_spec(doc: dict) -> dict:
    kind = doc["kind"]
    if kind == "RayCluster":
        return doc["spec"]
    return doc["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]


def check_manifest_header(doc: dict, kind: str) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert doc["metadata"]["name"]


def pod_containers(group: dict, where: str) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, f"{where}: no container"
    return containers


def check_container(c: dict, where: str, gpu: bool) -> None:
    assert c.get("name") and c.get("image"), where
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: set {kind} for cpu and memory"
    if gpu:
        assert int(res["limits"].get("nvidia.com/gpu", 0)) >= 1, f"{where}: GPU group without nvidia.com/gpu limit"
    else:
        assert "nvidia.com/gpu" not in res.get("limits", {}), f"{where}: GPU on a CPU group"
    for port in c.get("ports", []):
        assert "hostPort" not in port, f"{where}: hostPort exposes the pod on the node's address"
    for env in c.get("env", []):
        assert not (env.get("name") == "RAY_AUTH_MODE" and env.get("value") != "token"), f"{where}: auth off"


def check_cluster_spec(spec: dict, where: str) -> None:
    known_keys(spec, RAYCLUSTER_SPEC_FIELDS, where)
    assert spec.get("rayVersion") == RAY_VERSION, f"{where}: rayVersion must be {RAY_VERSION}"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: enableInTreeAutoscaling must be true"
    known_keys(spec.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS_FIELDS, f"{where}.autoscalerOptions")
    known_keys(spec["authOptions"], AUTH_OPTIONS_FIELDS, f"{where}.authOptions")
    assert spec["authOptions"]["mode"] == "token", f"{where}: token auth must stay on"

    head = spec["headGroupSpec"]
    known_keys(head, HEAD_GROUP_FIELDS, f"{where}.headGroupSpec")
    assert HEAD_GROUP_REQUIRED <= set(head), f"{where}.headGroupSpec needs {HEAD_GROUP_REQUIRED}"
    assert str(head["rayStartParams"].get("num-cpus")) == "0", f"{where}: the head must run no Ray tasks"
    assert head.get("serviceType", "ClusterIP") not in EXPOSED_SERVICE_TYPES, f"{where}: head service exposed"
    assert head.get("headService", {}).get("spec", {}).get("type") not in EXPOSED_SERVICE_TYPES
    assert not head.get("enableIngress"), f"{where}: no Ingress to the head"
    for c in pod_containers(head, f"{where}.headGroupSpec"):
        check_container(c, f"{where}.headGroupSpec", gpu=False)

    groups = spec["workerGroupSpecs"]
    names = [g.get("groupName") for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate groupName"
    gpu_groups, cpu_groups = [], []
    for g in groups:
        gw = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        known_keys(g, WORKER_GROUP_FIELDS, gw)
        assert WORKER_GROUP_REQUIRED <= set(g), f"{gw} needs {sorted(WORKER_GROUP_REQUIRED - set(g))}"
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], gw
        first = pod_containers(g, gw)[0]
        is_gpu = "nvidia.com/gpu" in first.get("resources", {}).get("limits", {}) or g["groupName"] == "gpu"
        (gpu_groups if is_gpu else cpu_groups).append(g)
        for c in pod_containers(g, gw):
            check_container(c, gw, gpu=is_gpu and c is first)
    assert gpu_groups, f"{where}: no GPU worker group"
    for g in gpu_groups:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, f"{where}: GPU group must scale from zero"
    assert cpu_groups, f"{where}: no CPU worker group for Ray Data"


def check_ray_autoscaler_reads(spec: dict, name: str) -> dict:
    """Ray's own translation of a RayCluster spec into autoscaler node types (it ends in validate_config)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": name, "namespace": "default"}, "spec": copy.deepcopy(spec)}
    )
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    gpu = [t for k, t in types.items() if gpu_count(t["resources"]) >= 1]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    assert any(gpu_count(t["resources"]) == 0 and t["resources"].get("CPU", 0) >= 1 for t in types.values())
    return config


def check_rayjob(doc: dict) -> None:
    spec = doc["spec"]
    known_keys(spec, RAYJOB_SPEC_FIELDS, "RayJob.spec")
    assert PIPELINE_CMD in " ".join(spec["entrypoint"].split()), "the RayJob must run the pipeline"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and ("working_dir" in runtime_env or "image_uri" in runtime_env)
    from ray.runtime_env import RuntimeEnv

    known_keys(runtime_env, set(RuntimeEnv.known_fields), "RayJob.spec.runtimeEnvYAML")
    RuntimeEnv(env_vars=runtime_env.get("env_vars", {}))  # Ray's validation of env_vars (str -> str)
    if runtime_env.get("working_dir", "").startswith("/"):
        # A local working_dir is uploaded by `ray job submit` in the submitter pod: K8sJobMode only.
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    check_cluster_spec(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")


def serve_config(doc: dict) -> dict:
    cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert isinstance(cfg, dict), "serveConfigV2 must be a YAML mapping"
    return cfg


def check_serve_config(cfg: dict) -> None:
    """Ray Serve's own schema (what `serve deploy` and KubeRay submit), plus the fields this project relies on."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    ServeDeploySchema.model_validate(cfg)
    # Serve's schemas accept unknown keys (forward compatibility): catch typos against their field lists.
    known_keys(cfg, set(ServeDeploySchema.model_fields), "serveConfigV2")
    http = cfg["http_options"]
    known_keys(http, set(HTTPOptionsSchema.model_fields), "serveConfigV2.http_options")
    assert http["request_timeout_s"] > 0
    apps = cfg["applications"]
    assert apps, "no application"
    for app in apps:
        where = f"serveConfigV2.applications[{app.get('name')}]"
        known_keys(app, set(ServeApplicationSchema.model_fields), where)
        assert app["name"] and re.fullmatch(r"[\w.]+:[\w.]+", app["import_path"]), where
        assert app["deployments"], f"{where}: no deployment settings"
        for dep in app["deployments"]:
            dw = f"{where}.deployments[{dep.get('name')}]"
            known_keys(dep, set(DeploymentSchema.model_fields), dw)
            for key in ("name", "autoscaling_config", "max_ongoing_requests", "max_queued_requests"):
                assert key in dep, f"{dw}: missing {key}"
            auto = dep["autoscaling_config"]
            known_keys(auto, set(AutoscalingConfig.model_fields), f"{dw}.autoscaling_config")
            AutoscalingConfig.model_validate(auto)
            if dep["name"] == "Explainer":
                # A replica can only fill a batch while another computes if it admits two batches' worth.
                from serving.service import BatchSettings, ServeArgs

                args = ServeArgs.model_validate(app.get("args") or {})
                largest = max([b.max_batch_size for b in args.batching.values()] or
                              [BatchSettings().max_batch_size])
                assert dep["max_ongoing_requests"] >= 2 * largest, f"{dw}: max_ongoing_requests < 2 × batch {largest}"
            for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
                assert key in auto, f"{dw}.autoscaling_config: missing {key}"
            assert auto["max_replicas"] >= 1


def check_rayservice(doc: dict) -> None:
    spec = doc["spec"]
    known_keys(spec, RAYSERVICE_SPEC_FIELDS, "RayService.spec")
    cfg = serve_config(doc)
    check_serve_config(cfg)
    (app,) = [a for a in cfg["applications"] if a["name"] == "interp_ray"]
    assert app["import_path"] == "serving.app:app"
    assert str(app["args"]["checkpoint_dir"]).startswith(BUCKET_SCHEMES)
    assert spec.get("serveService", {}).get("spec", {}).get("type") not in EXPOSED_SERVICE_TYPES
    check_cluster_spec(spec["rayClusterConfig"], "RayService.spec.rayClusterConfig")


def storage_values(doc: Any) -> list[str]:
    """Every storage location a manifest passes on: env INTERP_RAY_STORAGE, --set output_dir=, checkpoint_dir."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "INTERP_RAY_STORAGE" and "value" in node:
                found.append(node["value"])
            for k, v in node.items():
                if k in ("INTERP_RAY_STORAGE", "checkpoint_dir", "storage_path", "output_dir"):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            found.extend(re.findall(r"(?:storage_path|output_dir)=(\S+)", node))
            if "\n" in node and ":" in node:  # runtimeEnvYAML, serveConfigV2
                try:
                    walk(yaml.safe_load(node))
                except yaml.YAMLError:
                    pass

    walk(doc)
    return found


def check_kuberay(doc: dict, kind: str) -> None:
    check_manifest_header(doc, kind)
    if kind == "RayCluster":
        check_cluster_spec(doc["spec"], "RayCluster.spec")
    elif kind == "RayJob":
        check_rayjob(doc)
    else:
        check_rayservice(doc)
    check_ray_autoscaler_reads(cluster_spec(doc), doc["metadata"]["name"])
    stores = storage_values(doc)
    assert stores and all(str(s).startswith(BUCKET_SCHEMES) for s in stores), \
        f"storage must be s3:// or gs://: {stores}"


# --------------------------------------------------------------------------- tests: the files as they are


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_config_passes_ray_validation(provider):
    check_launcher_ray_validation(load_yaml(LAUNCHER[provider]))


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_gpu_workers_scale_from_zero_spot_first(provider):
    cfg = load_yaml(LAUNCHER[provider])
    check_launcher_node_types(cfg, provider)
    check_spot_before_on_demand(check_launcher_ray_validation(cfg), provider)


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_opens_only_ssh(provider):
    cfg = load_yaml(LAUNCHER[provider])
    check_launcher_ports_private(cfg)
    if provider == "aws":
        check_aws_ingress(cfg)
    else:
        check_gcp_ingress(cfg, GCP_FIREWALL.read_text())


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_token_auth_and_bucket_storage(provider):
    cfg = load_yaml(LAUNCHER[provider])
    check_launcher_token_auth(cfg)
    check_launcher_storage(cfg, "s3://" if provider == "aws" else "gs://")


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_syncs_what_pip_install_needs(provider):
    check_launcher_sync_and_install(load_yaml(LAUNCHER[provider]))


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest(kind):
    docs = list(yaml.safe_load_all(KUBERAY[kind].read_text()))
    assert len(docs) == 1, "one resource per file"
    check_kuberay(docs[0], kind)


def test_rayjob_entrypoint_loads_its_config(monkeypatch):
    """The RayJob's `--config` and `--set` values make a valid pipeline config, as the job itself would load it."""
    argv = shlex.split(load_yaml(KUBERAY["RayJob"])["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.pipeline"]
    config = argv[argv.index("--config") + 1]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert (REPO / config).exists(), f"the RayJob runs {config}"
    monkeypatch.syspath_prepend(str(REPO))  # `jobs` imports from the repository root, as in `python -m jobs.pipeline`
    from interp_ray.config import load_config
    from jobs.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, REPO / config, overrides)
    assert str(cfg.output_dir).startswith(BUCKET_SCHEMES), "the pipeline's output must go to the bucket"


def test_rayservice_matches_the_projects_serve_config():
    """serveConfigV2 embeds serving/serve_config.yaml: same applications, import paths and deployment names."""
    path = REPO / "serving" / "serve_config.yaml"
    ours = serve_config(load_yaml(KUBERAY["RayService"]))
    theirs = load_yaml(path)

    def shape(cfg):
        return {a["name"]: (a["import_path"], sorted(d["name"] for d in a.get("deployments", [])))
                for a in cfg["applications"]}

    assert shape(ours) == shape(theirs)


def test_one_image_everywhere_matching_installed_ray():
    m = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)$", DOCKERFILE.read_text(), re.M)
    assert m, "cluster/Dockerfile must start from an ARG RAY_IMAGE=rayproject/ray:<tag>"
    tag = m[1]
    assert re.fullmatch(rf"{re.escape(RAY_VERSION)}-py3\d+-gpu", tag), \
        f"base image {tag} vs installed ray {RAY_VERSION}"
    for provider, path in LAUNCHER.items():
        assert load_yaml(path)["docker"]["image"] == f"rayproject/ray:{tag}", provider
    images = set()
    for path in KUBERAY.values():
        spec = cluster_spec(load_yaml(path))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers must run one image: {images}"
    assert f"ray{RAY_VERSION}" in images.pop()
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignore)


def readme_commands() -> list[list[str]]:
    """The `ray …` / `serve …` commands in cluster/README.md's code blocks, env assignments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            try:
                argv = shlex.split(line)
            except ValueError:
                continue
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]
            if argv and argv[0] in ("ray", "serve"):
                commands.append(argv)
    return commands


def test_readme_commands_use_real_cli_flags():
    """Every flag cluster/README.md gives `ray` or `serve` exists in the installed Ray's CLI."""
    import click
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    commands = readme_commands()
    assert {"up", "dashboard", "down", "get-auth-token", "job"} <= {c[1] for c in commands if c[0] == "ray"}
    for argv in commands:
        group: click.Command = ray_cli if argv[0] == "ray" else serve_cli
        rest = argv[1:]
        while isinstance(group, click.Group) and rest and not rest[0].startswith("-"):
            assert rest[0] in group.commands, f"`{' '.join(argv)}`: no command {rest[0]!r}"
            group, rest = group.commands[rest[0]], rest[1:]
        assert not isinstance(group, click.Group), f"`{' '.join(argv)}` names no command"
        flags = {o for p in group.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        for tok in rest:
            if tok == "--":
                break  # the job's own entrypoint follows
            if tok.startswith("-"):
                assert tok.split("=", 1)[0] in flags, f"`{' '.join(argv)}`: {tok} is not an option of this command"


def test_no_file_turns_token_auth_off():
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            assert not re.search(r"RAY_AUTH_MODE\W+disabled", path.read_text()), path


def test_every_placeholder_is_documented():
    readme = README.read_text()
    pattern = re.compile(r"\b(?:YOUR[-_][A-Z0-9_-]*[A-Z0-9]|ami-REPLACE[-A-Z]*[A-Z])")
    found = set()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path != README:
            found |= set(pattern.findall(path.read_text()))
    assert found, "expected placeholders such as YOUR-BUCKET"
    undocumented = sorted(p for p in found if p not in readme)
    assert not undocumented, f"cluster/README.md does not explain {undocumented}"


# --------------------------------------------------------------------------- tests: the checks catch removals


def _drop(path: list) -> Callable[[Any], None]:
    def op(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return op


def _set(path: list, value: Any) -> Callable[[Any], None]:
    def op(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return op


def _in_serve_config(op: Callable[[Any], None]) -> Callable[[Any], None]:
    def wrapped(doc):
        cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
        op(cfg)
        doc["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)

    return wrapped


def _remove_run_option(option: str) -> Callable[[Any], None]:
    def op(doc):
        doc["docker"]["run_options"].remove(option)

    return op


def _open_dashboard(doc):
    doc["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )


def _dashboard_on_all_interfaces(doc):
    doc["head_start_ray_commands"] = [c.replace("127.0.0.1", "0.0.0.0") for c in doc["head_start_ray_commands"]]


def _gpu_group(doc):
    return next(g for g in cluster_spec(doc)["workerGroupSpecs"] if g["groupName"] == "gpu")


LAUNCHER_BREAKS = {
    "aws": [
        ("no head_node_type", _drop(["head_node_type"])),
        ("head resources removed", _drop(["available_node_types", "ray.head.cpu", "resources"])),
        ("typo in a node type key", _set(["available_node_types", "ray.worker.cpu", "min_worker"], 0)),
        ("GPU min_workers removed", _drop(["available_node_types", "ray.worker.gpu.spot", "min_workers"])),
        ("GPU min_workers 1", _set(["available_node_types", "ray.worker.gpu.ondemand", "min_workers"], 1)),
        ("spot market removed",
         _drop(["available_node_types", "ray.worker.gpu.spot", "node_config", "InstanceMarketOptions"])),
        ("idle_timeout_minutes removed", _drop(["idle_timeout_minutes"])),
        ("head gets CPUs", _set(["available_node_types", "ray.head.cpu", "resources"], {"CPU": 8})),
        ("8265 opened to 0.0.0.0/0", _open_dashboard),
        ("dashboard on 0.0.0.0", _dashboard_on_all_interfaces),
        ("token env removed", _remove_run_option("--env RAY_AUTH_MODE=token")),
        ("token file mount removed", _drop(["file_mounts", AUTH_TOKEN_REMOTE])),
        ("storage env removed", _remove_run_option("--env INTERP_RAY_STORAGE=s3://YOUR-BUCKET/interp-ray")),
    ],
    "gcp": [
        ("no provider", _drop(["provider"])),
        ("GPU max_workers removed", _drop(["available_node_types", "ray_worker_gpu_spot", "max_workers"])),
        ("Spot scheduling removed",
         _drop(["available_node_types", "ray_worker_gpu_spot", "node_config", "scheduling"])),
        ("network tag removed", _drop(["available_node_types", "ray_worker_cpu", "node_config", "tags"])),
        ("token file mount removed", _drop(["file_mounts", AUTH_TOKEN_REMOTE])),
        ("dashboard on 0.0.0.0", _dashboard_on_all_interfaces),
    ],
}


@pytest.mark.parametrize(
    "provider,label,op",
    [(p, label, op) for p, breaks in LAUNCHER_BREAKS.items() for label, op in breaks],
    ids=[f"{p}:{label}" for p, breaks in LAUNCHER_BREAKS.items() for label, _ in breaks],
)
def test_launcher_checks_fail_when_a_field_is_removed(provider, label, op):
    cfg = load_yaml(LAUNCHER[provider])
    check_launcher(copy.deepcopy(cfg), provider)  # the file itself passes
    op(cfg)
    with pytest.raises((AssertionError, KeyError, ValueError, jsonschema.ValidationError)):
        check_launcher(cfg, provider)


def test_gcp_firewall_check_fails_when_8265_is_opened():
    script = GCP_FIREWALL.read_text() + (
        '\ngcloud compute firewall-rules create oops --network="$NETWORK" --direction=INGRESS'
        ' --allow=tcp:8265 --source-ranges=0.0.0.0/0 --target-tags="$TAG"\n'
    )
    with pytest.raises(AssertionError):
        check_gcp_ingress(load_yaml(LAUNCHER["gcp"]), script)


KUBERAY_BREAKS = [
    ("RayCluster", "enableInTreeAutoscaling removed", _drop(["spec", "enableInTreeAutoscaling"])),
    ("RayCluster", "headGroupSpec removed", _drop(["spec", "headGroupSpec"])),
    ("RayCluster", "GPU minReplicas removed", lambda d: _gpu_group(d).pop("minReplicas")),
    ("RayCluster", "GPU minReplicas 1", lambda d: _gpu_group(d).update(minReplicas=1)),
    ("RayCluster", "nvidia.com/gpu limit removed",
     lambda d: _gpu_group(d)["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu")),
    ("RayCluster", "authOptions removed", _drop(["spec", "authOptions"])),
    ("RayCluster", "head service LoadBalancer", _set(["spec", "headGroupSpec", "serviceType"], "LoadBalancer")),
    ("RayCluster", "head runs tasks", _drop(["spec", "headGroupSpec", "rayStartParams", "num-cpus"])),
    ("RayCluster", "apiVersion v1alpha1", _set(["apiVersion"], "ray.io/v1alpha1")),
    ("RayCluster", "misspelled field", _set(["spec", "enableInTreeAutoScaling"], True)),
    ("RayCluster", "limits removed",
     lambda d: cluster_spec(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")),
    ("RayJob", "entrypoint removed", _drop(["spec", "entrypoint"])),
    ("RayJob", "shutdownAfterJobFinishes removed", _drop(["spec", "shutdownAfterJobFinishes"])),
    ("RayJob", "ttlSecondsAfterFinished removed", _drop(["spec", "ttlSecondsAfterFinished"])),
    ("RayJob", "runtimeEnvYAML removed", _drop(["spec", "runtimeEnvYAML"])),
    ("RayJob", "rayClusterSpec removed", _drop(["spec", "rayClusterSpec"])),
    ("RayJob", "GPU group removed", lambda d: cluster_spec(d).update(
        workerGroupSpecs=[g for g in cluster_spec(d)["workerGroupSpecs"] if g["groupName"] != "gpu"])),
    ("RayJob", "local storage", _set(["spec", "entrypoint"], PIPELINE_CMD + " --set output_dir=outputs/pipeline")),
    ("RayService", "serveConfigV2 removed", _drop(["spec", "serveConfigV2"])),
    ("RayService", "rayClusterConfig removed", _drop(["spec", "rayClusterConfig"])),
    ("RayService", "import_path removed", _in_serve_config(_drop(["applications", 0, "import_path"]))),
    ("RayService", "autoscaling_config removed",
     _in_serve_config(_drop(["applications", 0, "deployments", 1, "autoscaling_config"]))),
    ("RayService", "max_queued_requests removed",
     _in_serve_config(_drop(["applications", 0, "deployments", 0, "max_queued_requests"]))),
    ("RayService", "target_ongoing_requests removed",
     _in_serve_config(_drop(["applications", 0, "deployments", 0, "autoscaling_config", "target_ongoing_requests"]))),
    ("RayService", "request_timeout_s removed", _in_serve_config(_drop(["http_options", "request_timeout_s"]))),
    ("RayService", "min > max replicas",
     _in_serve_config(_set(["applications", 0, "deployments", 1, "autoscaling_config", "min_replicas"], 9))),
    ("RayService", "serveConfigV2 not YAML", _set(["spec", "serveConfigV2"], "applications: [oops")),
]


@pytest.mark.parametrize("kind,label,op", KUBERAY_BREAKS, ids=[f"{k}:{label}" for k, label, _ in KUBERAY_BREAKS])
def test_kuberay_checks_fail_when_a_field_is_removed(kind, label, op):
    doc = load_yaml(KUBERAY[kind])
    check_kuberay(copy.deepcopy(doc), kind)  # the file itself passes
    op(doc)
    with pytest.raises(Exception) as info:
        check_kuberay(doc, kind)
    assert info.type.__name__ in {"AssertionError", "KeyError", "ValueError", "ValidationError", "TypeError",
                                  "ScannerError", "ParserError", "StopIteration"}, info.value
