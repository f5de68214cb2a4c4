"""The `ray up` configs and KubeRay manifests under cluster/, checked offline.

What is checked for every cluster/*.yaml (no cloud call is made):
  1. the raw file against Ray's own JSON schema (ray/autoscaler/ray-schema.json, draft-07);
  2. Ray's config preparation as `ray up` runs it before it talks to a cloud:
     `prepare_config` (merge with the provider's defaults.yaml, on-prem node type, setup-command
     merge, docker checks, per-type worker bounds) then `validate_config` (schema again, head
     type, sum of min_workers <= max_workers). `ray up` goes on with
     `fillout_available_node_types_resources` and `bootstrap_config`, which call AWS/GCP APIs:
     those are not run, so node_config contents (instance types, images, IAM) are not checked;
  3. trm-ray's rules: the dashboard on 127.0.0.1, token auth forced on, no secret in the file,
     trm-ray + torch installed on every node, shared storage named, bounded autoscaling, the
     Ray version of images equal to the installed one.
The KubeRay manifests parse and carry image, head and worker groups, GPU resources, token auth.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_UP_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))

# Things that look like credentials; a config may name where a secret lives, never hold one.
SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",                               # AWS access key id
    r"aws_secret_access_key\s*[:=]",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"\bRAY_AUTH_TOKEN\s*[:=]\s*[^\s$]",              # a token value ($(...) lookups are fine)
    r"\bWANDB_API_KEY\s*=\s*[^\s$]",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\"private_key\"",
]


def _ray_version() -> str:
    import ray

    return ray.__version__


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(_load(path)))
    validate_config(config)
    return config


def test_every_provider_has_a_config():
    providers = {p.name: _load(p)["provider"]["type"] for p in RAY_UP_CONFIGS}
    assert {"aws-p5-h100.yaml", "aws-g6-1gpu.yaml", "gcp-a100.yaml", "onprem-ssh.yaml"} <= set(providers)
    assert sorted(set(providers.values())) == ["aws", "gcp", "local"]


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=lambda p: p.name)
def test_ray_up_config_matches_rays_schema(path):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load(path), schema)  # the file as written, before any default is merged


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=lambda p: p.name)
def test_ray_up_config_survives_rays_preparation(path):
    config = _prepared(path)
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    workers = {name: t for name, t in node_types.items() if name != config["head_node_type"]}
    if config["provider"]["type"] == "local":
        # On-prem: one node type; bounds come from max_workers and the listed machines.
        assert config["max_workers"] <= len(config["provider"]["worker_ips"])
        return
    # Bounded autoscaling: every worker type says both bounds; workers are the GPU nodes.
    raw_types = _load(path)["available_node_types"]
    assert 0 < config["max_workers"] <= 16
    for name, node_type in workers.items():
        assert {"min_workers", "max_workers"} <= set(raw_types[name]), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} has no GPU"
    assert node_types[config["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=lambda p: p.name)
def test_ray_up_config_keeps_dashboard_local_and_token_auth_on(path):
    config = _prepared(path)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start)
    assert "0.0.0.0" not in path.read_text()
    # RAY_AUTH_MODE=token on every `ray start`: a node without the token fails to start rather
    # than silently running an open cluster.
    for start in (head_start, worker_start):
        assert "ray start" in start and "RAY_AUTH_MODE=token ray start" in start
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", path.read_text(), re.I)
    # The token reaches nodes as a file synced from the user's ~/.ray, never as text in here.
    assert config["file_mounts"].get("~/trm-ray-auth") == "~/.ray"
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        assert any("~/.ray/auth_token" in c and "install -m 600" in c for c in commands)


@pytest.mark.parametrize("path", RAY_UP_CONFIGS + KUBERAY_MANIFESTS + [CLUSTER / "Dockerfile"], ids=lambda p: p.name)
def test_no_secret_in_cluster_files(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), f"{path.name} matches {pattern}"


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=lambda p: p.name)
def test_ray_up_config_installs_trm_ray_on_every_node_and_names_storage(path):
    config = _prepared(path)
    assert config["file_mounts"].get("~/trm-ray") == "."  # the checkout `ray up` runs from
    for excluded in ("/data/", "/runs/", ".git/", ".venv/"):
        assert excluded in config["rsync_exclude"]
    scheme = {"aws": "s3://", "gcp": "gs://", "local": "s3://"}[config["provider"]["type"]]
    # prepare_config merged setup_commands into both lists: what each node kind really runs.
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        text = "\n".join(commands)
        assert re.search(r"pip install .*torch", text)
        assert re.search(rf"pip install .*~/trm-ray .*ray\[default,train,tune,data\]=={re.escape(_ray_version())}", text)
        assert re.search(rf"export TRM_RAY_STORAGE={scheme}\S+", text)
    if "docker" in config and config["docker"].get("image"):
        assert config["docker"]["image"].startswith(f"rayproject/ray:{_ray_version()}-")
        assert config["docker"]["image"].endswith("-gpu")


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for path in KUBERAY_MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == "ray.io/v1", path.name
            if doc["kind"] == "RayCluster":
                specs.append((path.name, doc["spec"]))
            elif doc["kind"] == "RayJob":
                assert doc["spec"]["entrypoint"].startswith("trm-ray ")
                assert doc["spec"]["shutdownAfterJobFinishes"] is True
                specs.append((path.name, doc["spec"]["rayClusterSpec"]))
            else:
                raise AssertionError(f"{path.name}: unexpected kind {doc['kind']}")
    return specs


def test_kuberay_manifests_have_both_kinds():
    kinds = [doc["kind"] for p in KUBERAY_MANIFESTS for doc in yaml.safe_load_all(p.read_text())]
    assert sorted(kinds) == ["RayCluster", "RayJob"]


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_cluster_spec_has_image_groups_resources_and_token_auth(name, spec):
    assert spec["rayVersion"] == _ray_version()
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    (head_container,) = _containers(head["template"])
    assert head_container["image"].endswith("/trm-ray:0.1.0")
    assert {"cpu", "memory"} <= set(head_container["resources"]["limits"])
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    env = {e["name"]: e for e in head_container["env"]}
    assert env["TRM_RAY_STORAGE"]["value"].startswith(("s3://", "gs://"))
    assert "valueFrom" in env["WANDB_API_KEY"]  # from a Secret, never a literal
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = _containers(group["template"])
        assert container["image"] == head_container["image"]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and "cpu" in limits and "memory" in limits
        assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]


def test_dockerfile_uses_the_installed_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_version()}-" in text
    assert f"ray[default,train,tune,data]=={_ray_version()}" in text
    # Every path it copies exists in the checkout (the build context).
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item

