"""deploy/kserve: the InferenceService validates offline against the schema of KServe's own
released Python SDK (the `kserve` package's models and the `kubernetes` client models they
reference, turned into a JSON Schema by kserve_sdk_schema.py), and agrees with the service and
with deploy/k8s.

The schema refuses unknown fields, as `kubernetes-validate --strict` does for deploy/k8s, so that
a misspelt field cannot pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kserve.models
import kubernetes.client
import pytest
import yaml

from .kserve_sdk_schema import inference_service_schema, sdk_version
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
OIP_READINESS_ROUTE = "/v2/health/ready"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return inference_service_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


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


def test_the_schema_is_the_sdks(schema: dict[str, Any]) -> None:
    """Built from the installed SDK's models: KServe's own, and Kubernetes' where KServe refers to
    them, each field under its JSON name."""
    assert sdk_version() in schema["title"]
    defs = schema["$defs"]
    assert schema["$ref"] == "#/$defs/V1beta1InferenceService"
    assert set(defs["V1beta1PredictorSpec"]["properties"]) == set(
        kserve.models.V1beta1PredictorSpec.attribute_map.values()
    )
    assert set(defs["V1Container"]["properties"]) == set(
        kubernetes.client.V1Container.attribute_map.values()
    )
    assert defs["V1beta1InferenceServiceSpec"]["required"] == ["predictor"]
    assert defs["V1Container"]["required"] == ["name"]


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
    yield (
        "an unknown field in a container",
        "spec/predictor/containers/0",
        variant(lambda o: predictor_container(o).__setitem__("readinesProbe", {})),
    )
    yield (
        "a secret key reference without its required key",
        "spec/predictor/containers/0/env/0/valueFrom/secretKeyRef",
        variant(lambda o: predictor_container(o)["env"][0]["valueFrom"]["secretKeyRef"].pop("key")),
    )
    yield (
        "an annotation of the wrong type",
        "metadata/annotations/serving.kserve.io/targetUtilizationPercentage",
        variant(
            lambda o: o["metadata"]["annotations"].__setitem__(
                "serving.kserve.io/targetUtilizationPercentage", 70
            )
        ),
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


def set_probe_port_by_name(isvc: dict[str, Any]) -> None:
    container = predictor_container(isvc)
    container["ports"][0]["name"] = "http"
    container["readinessProbe"]["httpGet"]["port"] = "http"


ACCEPTED: dict[str, Callable[[dict[str, Any]], None]] = {
    # Quantities are strings or numbers (`cpu: 2`), though the client types them as strings.
    "a quantity as a number": lambda o: predictor_container(o)["resources"]["requests"].__setitem__(
        "cpu", 2
    ),
    # IntOrString: a probe's port by number or by name.
    "a probe's port by name": set_probe_port_by_name,
}


@pytest.mark.parametrize("what", list(ACCEPTED))
def test_what_kubernetes_accepts_in_another_form_passes(
    validator: jsonschema.protocols.Validator, what: str
) -> None:
    isvc = inference_service()
    ACCEPTED[what](isvc)
    assert errors(validator, isvc) == []


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
