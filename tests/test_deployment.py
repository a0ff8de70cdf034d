"""The deployment files are checked where no container engine runs: the KubeRay manifests against KubeRay's own
ray.io/v1 CRD schemas and Kubernetes' resource schemas, the compose file against the Compose specification's
schema; and each carries this release's replicas, metrics ports and secret handling."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).parent / "data" / "schemas"
KUBERNETES = "1.33.0"
SECRET_SETTINGS = {"FACEGRID_S3_ACCESS_KEY", "FACEGRID_S3_SECRET_KEY", "FACEGRID_SERVING__CREDENTIAL_KEY"}


def _crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load(gzip.decompress((SCHEMAS / name).read_bytes()))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """Unknown fields refused, as `kubectl apply --validate=strict` refuses them (the API server would silently
    drop a misspelt field, and with it the setting), except where the schema keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def _load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def _errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize(
    ("path", "crd"),
    [
        ("infra/kuberay/raycluster.yaml", "ray.io_rayclusters.yaml.gz"),
        ("infra/kuberay/rayjob-index.yaml", "ray.io_rayjobs.yaml.gz"),
    ],
)
def test_kuberay_manifests_match_kuberays_crds(path: str, crd: str) -> None:
    document = _load(path)
    assert document["apiVersion"] == "ray.io/v1"
    assert not _errors(_crd_schema(crd), document)


def test_a_misspelt_field_is_caught() -> None:
    document = _load("infra/kuberay/raycluster.yaml")
    document["spec"]["headGroupSpec"]["rayStartParms"] = document["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParms" in e for e in _errors(_crd_schema("ray.io_rayclusters.yaml.gz"), document))


def test_the_api_deployment_matches_kubernetes_schema() -> None:
    import kubernetes_validate

    document = _load("infra/kuberay/api-deployment.yaml")
    kubernetes_validate.validate(document, KUBERNETES, strict=True)  # raises on any problem
    broken = json.loads(json.dumps(document))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    assert not _errors(schema, _load("infra/compose.yaml"))


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document["spec"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])] if "headGroupSpec" in spec else [spec]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_every_file_carries_replicas_metrics_and_secrets_as_files() -> None:
    cluster, api = _load("infra/kuberay/raycluster.yaml"), _load("infra/kuberay/api-deployment.yaml")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    assert all(g["rayStartParams"].get("metrics-export-port") == "8080" for g in groups)
    shard_nodes = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "shards")
    for container in [*_containers(cluster), *_containers(api)]:
        env = _env(container)
        assert env["FACEGRID_SECRETS_DIR"] and int(env["FACEGRID_SERVING__REPLICAS"]) == shard_nodes["minReplicas"]
        assert not SECRET_SETTINGS & set(env), "secrets belong in files, not env"
        assert "envFrom" not in container
        assert any(m["mountPath"] == env["FACEGRID_SECRETS_DIR"] for m in container["volumeMounts"])
    job = _load("infra/kuberay/rayjob-index.yaml")
    assert not any(n in job["spec"]["runtimeEnvYAML"] for n in SECRET_SETTINGS) and job["spec"][
        "entrypoint"
    ].startswith("python -m jobs.cli")
    compose = _load("infra/compose.yaml")
    for name in ("ray-head", "ray-gpu-worker", "api"):
        service = compose["services"][name]
        assert set(service["secrets"]) == set(compose["secrets"])
        assert not SECRET_SETTINGS & set(service["environment"]) and service["environment"]["FACEGRID_SECRETS_DIR"]
        assert all(p.startswith("127.0.0.1:") for p in service.get("ports", []))
    assert "--metrics-export-port 8080" in compose["services"]["ray-head"]["command"]
