"""deploy/kserve: the InferenceService validates offline against KServe's own CRD schema
(deploy/kserve/schema, from a KServe release), and agrees with the service and with deploy/k8s.

The CRD schema, like the API server, accepts unknown fields (it prunes them); `strict` also
refuses them wherever the schema lists the properties and does not preserve unknown ones, as
`kubernetes-validate --strict` does for deploy/k8s, so that a misspelt field cannot pass.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .test_manifests import (
    CONFIG_PATH,
    KEYS_PATH,
    LIVENESS_ROUTE,
    SERVING_PORT,
    k8s_object,
    k8s_objects,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
SCHEMA = KSERVE / "schema" / "inferenceservice-v1beta1.json"
OIP_READINESS_ROUTE = "/v2/health/ready"


def strict(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that lists its properties
    and neither preserves unknown fields nor says what else it takes."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            out[key] = strict(value)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(strict(schema))


def errors(validator: jsonschema.protocols.Validator, obj: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def inference_service() -> dict[str, Any]:
    (obj,) = [
        d
        for d in yaml.safe_load_all((KSERVE / "inferenceservice.yaml").read_text("utf-8"))
        if d is not None
    ]
    return obj  # type: ignore[no-any-return]


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return container  # type: ignore[no-any-return]


def test_the_schema_is_kserves_and_ships_with_its_licence() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["properties"]["spec"]["required"] == ["predictor"]
    assert "containers" in schema["properties"]["spec"]["properties"]["predictor"]["properties"]
    licence = (KSERVE / "schema" / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence


def test_the_shipped_inference_service_is_valid(validator: jsonschema.protocols.Validator) -> None:
    isvc = inference_service()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert errors(validator, isvc) == []


def broken_copies() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(what is wrong, where the error is, the broken InferenceService)."""
    isvc = inference_service()

    def variant(change: Any) -> dict[str, Any]:
        obj = copy.deepcopy(isvc)
        change(obj)
        return obj

    yield (
        "minReplicas of the wrong type",
        "spec/predictor/minReplicas",
        variant(lambda o: o["spec"]["predictor"].__setitem__("minReplicas", "two")),
    )
    yield (
        "a container port of the wrong type",
        "spec/predictor/containers/0/ports/0/containerPort",
        variant(lambda o: predictor_container(o)["ports"][0].__setitem__("containerPort", "8000")),
    )
    yield (
        "containers not a list",
        "spec/predictor/containers",
        variant(lambda o: o["spec"]["predictor"].__setitem__("containers", {"name": "x"})),
    )
    yield (
        "the required predictor missing",
        "spec",
        variant(lambda o: o["spec"].pop("predictor")),
    )
    yield (
        "a container without its required name",
        "spec/predictor/containers/0",
        variant(lambda o: predictor_container(o).pop("name")),
    )
    yield (
        "an environment variable without its required name",
        "spec/predictor/containers/0/env/1",
        variant(lambda o: predictor_container(o)["env"][1].pop("name")),
    )
    yield (
        "a misspelt field",
        "spec/predictor",
        variant(lambda o: o["spec"]["predictor"].__setitem__("minReplica", 2)),
    )


@pytest.mark.parametrize(
    ("what", "where", "isvc"), list(broken_copies()), ids=[w for w, _, _ in broken_copies()]
)
def test_a_broken_inference_service_is_rejected(
    validator: jsonschema.protocols.Validator, what: str, where: str, isvc: dict[str, Any]
) -> None:
    found = errors(validator, isvc)
    assert found, f"{what}: accepted"
    assert any(e.startswith(f"{where}:") for e in found), found


def test_the_predictor_probes_the_protocols_readiness_and_the_liveness_route() -> None:
    container = predictor_container(inference_service())
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [SERVING_PORT]
    assert container["readinessProbe"]["httpGet"] == {
        "path": OIP_READINESS_ROUTE,
        "port": SERVING_PORT,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": LIVENESS_ROUTE, "port": SERVING_PORT}
    assert container["startupProbe"]["httpGet"]["path"] == LIVENESS_ROUTE


def test_the_probed_routes_are_served() -> None:
    from service.api.routes import info, v2

    paths = {route.path for router in (info.router, v2.router) for route in router.routes}  # type: ignore[attr-defined]
    assert {OIP_READINESS_ROUTE, LIVENESS_ROUTE, "/v2/models/{name}/infer"} <= paths


def test_the_predictor_mounts_config_keys_and_secret_and_shares_redis() -> None:
    """The same ConfigMap, Secret and Redis Service as deploy/k8s, with the keys they define."""
    isvc = inference_service()
    predictor = isvc["spec"]["predictor"]
    container = predictor_container(isvc)
    volumes = {v["name"]: v for v in predictor["volumes"]}
    defined = {
        (obj["kind"], obj["metadata"]["name"]): {**obj.get("data", {}), **obj.get("stringData", {})}
        for obj in k8s_objects()
        if obj["kind"] in {"ConfigMap", "Secret"}
    }
    mounted: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if field in source:
                    for item in source[field]["items"]:
                        assert item["key"] in defined[kind, source[field]["name"]]
                        mounted[f"{mount['mountPath']}/{item['path']}"] = kind
    assert mounted.get(CONFIG_PATH) == "ConfigMap"
    assert mounted.get(KEYS_PATH) == "Secret"
    env = {e["name"]: e for e in container["env"]}
    secret_ref = env["AIM_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret_ref["key"] in defined["Secret", secret_ref["name"]]
    redis = k8s_object("Service", app="aim-redis")
    port = redis["spec"]["ports"][0]["port"]
    assert env["AIM_REDIS_URL"]["value"] == f"redis://{redis['metadata']['name']}:{port}/0"
    assert predictor["minReplicas"] >= 2  # several replicas: the reason Redis is shared


def test_the_predictor_runs_as_the_images_non_root_user() -> None:
    predictor = inference_service()["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["runAsUser"] == 10001
    container = predictor_container(inference_service())
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_kustomization_lists_the_inference_service() -> None:
    (kustomization,) = [
        d for d in yaml.safe_load_all((KSERVE / "kustomization.yaml").read_text("utf-8")) if d
    ]
    assert kustomization["resources"] == ["inferenceservice.yaml"]
