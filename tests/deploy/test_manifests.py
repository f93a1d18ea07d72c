"""Static checks that the deployment files agree with the service and with each other.

They read the files only (no Docker, no cluster): probes hit real routes, ports line up, every
ConfigMap/Secret/Service the Deployment or ServiceMonitor names exists, the dashboard queries only
metrics the service exports, and the compose stack mounts the files it refers to.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "aim.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"

SERVING_PORT = 8000
LIVENESS_ROUTE = "/healthz"
READINESS_ROUTE = "/readyz"
METRICS_ROUTE = "/metrics"
CONFIG_PATH = "/etc/aim/config.yaml"
KEYS_PATH = "/etc/aim/keys.yaml"

# The service's metric families (DESIGN.md "Metrics"), by Prometheus type.
COUNTERS = {"aim_requests_total", "aim_tokens_generated_total", "aim_shed_total"}
GAUGES = {"aim_queue_depth", "aim_admission_waiting", "aim_tier_sigma"}
HISTOGRAMS = {
    "aim_request_duration_seconds",
    "aim_queue_wait_seconds",
    "aim_batch_size",
    "aim_forward_seconds",
    "aim_modulation_seconds",
    "aim_time_to_first_token_seconds",
    "aim_inter_token_latency_seconds",
}
METRIC_LABELS = {"tier", "route", "status"}
# The series names a query may use: histograms are read through their _bucket/_sum/_count series.
SERIES = (
    COUNTERS
    | GAUGES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# Words of PromQL that are not series names: aggregations, functions, keywords, label names.
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "clamp_min", "clamp_max", "abs", "vector", "scalar", "time", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "label_replace", "le", "instance", "job",
}  # fmt: skip
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_yaml_documents(path)
    ]


def k8s_object(kind: str, app: str = "aim-serving") -> dict[str, Any]:
    """The one object of `kind` belonging to `app` (label app.kubernetes.io/name)."""
    found = [
        obj
        for obj in k8s_objects()
        if obj["kind"] == kind
        and obj["metadata"].get("labels", {}).get("app.kubernetes.io/name", "aim-serving") == app
    ]
    assert len(found) == 1, f"expected one {kind} of {app} in deploy/k8s, found {len(found)}"
    return found[0]


def aim_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Deployment runs one container"
    return containers[0]


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe or Service port, given by number or by the container port's name."""
    if isinstance(port, int):
        return port
    names = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in names, f"port name {port!r} is not a container port ({sorted(names)})"
    return names[port]


def with_defaults(value: str) -> str:
    """Compose `${VAR:-default}` interpolation with every variable unset."""
    return VAR.sub(lambda m: m.group(2) or "", value)


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small lexer, enough for the dashboard)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


# --- Kubernetes ---------------------------------------------------------------------------------


def test_every_k8s_manifest_parses_and_has_kind_and_name() -> None:
    objects = k8s_objects()
    kinds = {obj["kind"] for obj in objects}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "ConfigMap",
        "Secret",
    } <= kinds
    for obj in objects:
        assert obj.get("apiVersion"), obj
        assert obj["metadata"]["name"], obj


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml_documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_probes_hit_the_health_routes_on_the_serving_port() -> None:
    container = aim_container(k8s_object("Deployment"))
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == READINESS_ROUTE
    assert liveness["path"] == LIVENESS_ROUTE
    assert resolve_port(readiness["port"], container) == SERVING_PORT
    assert resolve_port(liveness["port"], container) == SERVING_PORT
    if "startupProbe" in container:
        startup = container["startupProbe"]["httpGet"]
        assert startup["path"] in {LIVENESS_ROUTE, READINESS_ROUTE}
        assert resolve_port(startup["port"], container) == SERVING_PORT


def test_container_port_service_target_port_and_annotations_agree() -> None:
    deployment = k8s_object("Deployment")
    container = aim_container(deployment)
    service = k8s_object("Service")
    assert [p["containerPort"] for p in container["ports"]] == [SERVING_PORT]
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http"
    assert resolve_port(port["targetPort"], container) == SERVING_PORT
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(SERVING_PORT)
    assert annotations["prometheus.io/path"] == METRICS_ROUTE


def test_service_selects_the_deployment_pods() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert k8s_object("Service")["spec"]["selector"].items() <= pod_labels.items()


def test_servicemonitor_scrapes_the_named_service_port_at_metrics() -> None:
    monitor = k8s_object("ServiceMonitor")
    service = k8s_object("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == METRICS_ROUTE


def test_hpa_targets_the_deployment() -> None:
    hpa = k8s_object("HorizontalPodAutoscaler")
    deployment = k8s_object("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":
            # Utilization targets need requests on the container.
            name = metric["resource"]["name"]
            assert name in aim_container(deployment)["resources"]["requests"]


def test_deployment_requests_a_gpu_and_runs_as_non_root() -> None:
    deployment = k8s_object("Deployment")
    container = aim_container(deployment)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0


def test_deployment_references_existing_configmaps_and_secrets() -> None:
    """Every ConfigMap/Secret the pod names exists, with the key it reads."""
    objects = k8s_objects()
    data = {
        (obj["kind"], obj["metadata"]["name"]): {**obj.get("data", {}), **obj.get("stringData", {})}
        for obj in objects
        if obj["kind"] in {"ConfigMap", "Secret"}
    }
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    refs: list[tuple[str, str, list[str]]] = []
    for volume in pod.get("volumes", []):
        sources = volume.get("projected", {}).get("sources", [volume])
        for source in sources:
            for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if field in source:
                    ref = source[field]
                    name = ref.get("name") or ref.get("secretName")
                    refs.append((kind, name, [item["key"] for item in ref.get("items", [])]))
    for container in pod["containers"]:
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in value_from:
                    ref = value_from[field]
                    refs.append((kind, ref["name"], [ref["key"]]))
    assert refs, "the Deployment should read its config and keys from a ConfigMap and a Secret"
    for kind, name, keys in refs:
        assert (kind, name) in data, f"{kind} {name!r} is referenced but not defined"
        for key in keys:
            assert key in data[kind, name], f"{kind} {name!r} has no key {key!r}"


def test_config_and_keys_are_mounted_where_the_entrypoint_reads_them() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = aim_container(k8s_object("Deployment"))
    mounted: dict[str, str] = {}  # file path in the container -> ConfigMap/Secret kind
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        sources = volume.get("projected", {}).get("sources", [volume])
        for source in sources:
            for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if field not in source:
                    continue
                if "subPath" in mount:
                    mounted[mount["mountPath"]] = kind
                for item in source[field].get("items", []):
                    mounted[f"{mount['mountPath']}/{item['path']}"] = kind
    assert mounted.get(CONFIG_PATH) == "ConfigMap"
    assert mounted.get(KEYS_PATH) == "Secret"
    assert any(e["name"] == "AIM_SECRET" for e in container["env"])


def test_configmap_matches_the_compose_config() -> None:
    configmap = k8s_object("ConfigMap")
    in_cluster = yaml.safe_load(configmap["data"]["config.yaml"])
    compose = yaml.safe_load((ROOT / "deploy" / "config" / "config.yaml").read_text())
    assert in_cluster == compose
    assert list(compose["tiers"])  # tiers listed, highest first


def test_example_keys_file_has_the_keys_file_shape() -> None:
    (keys,) = load_yaml_documents(ROOT / "deploy" / "config" / "keys.example.yaml")
    tiers = yaml.safe_load((ROOT / "deploy" / "config" / "config.yaml").read_text())["tiers"]
    for entry in keys["keys"]:
        assert {"id", "account", "tier", "sha256"} <= set(entry) <= {
            "id", "account", "tier", "sha256", "created"
        }  # fmt: skip
        assert entry["tier"] in tiers
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


def test_shipped_config_and_demo_keys_load_with_the_service() -> None:
    from service.access.keys import KeyStore
    from service.config import ServiceConfig

    config = ServiceConfig.load(ROOT / "deploy" / "config" / "config.yaml")
    tiers = {tier.name for tier in config.tiers}
    keys = KeyStore.load(ROOT / "deploy" / "config" / "keys.example.yaml", tiers)
    # The demo plaintexts documented in the file (and docs/DEPLOY.md) match their hashes.
    for tier in tiers:
        record = keys.lookup(f"aim-demo-{tier}-key")
        assert record is not None and record.tier == tier


# --- Grafana and Prometheus ---------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return panels


def test_dashboard_panels_query_only_service_metrics() -> None:
    panels = dashboard_panels()
    assert panels
    for panel in panels:
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        assert exprs, f"panel {panel['title']!r} has no PromQL expr"
        for expr in exprs:
            names = series_names(expr)
            assert names, f"{panel['title']!r}: {expr!r} reads no metric"
            unknown = names - SERIES
            assert not unknown, f"{panel['title']!r}: {expr!r} uses unknown names {unknown}"
            for label in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                used = {name.strip() for name in label.split(",")}
                assert used <= METRIC_LABELS | {"le", "instance", "job"}, expr


def test_dashboard_covers_the_required_views() -> None:
    exprs = " ".join(t["expr"] for p in dashboard_panels() for t in p["targets"])
    assert "sum by (tier) (rate(aim_requests_total[1m]))" in exprs
    assert 'sum by (status) (rate(aim_requests_total{status!~"2.."}[1m]))' in exprs
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (tier, le) " in exprs
    for series in (
        "aim_request_duration_seconds_bucket",
        "aim_queue_depth",
        "aim_batch_size_sum",
        "aim_batch_size_bucket",
        "aim_forward_seconds_bucket",
        "aim_modulation_seconds_bucket",
        "aim_tier_sigma",
        "aim_tokens_generated_total",
    ):
        assert series in exprs, series


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    datasources = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    (provisioning,) = load_yaml_documents(datasources)
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    uid = datasource["uid"]
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid


def test_grafana_dashboard_provider_reads_the_mounted_dashboards() -> None:
    (provider_file,) = load_yaml_documents(GRAFANA / "provisioning" / "dashboards" / "aim.yml")
    (provider,) = provider_file["providers"]
    grafana = compose_services(COMPOSE)["grafana"]
    mounts = dict(volume_mounts(grafana))
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_prometheus_scrapes_every_aim_replica() -> None:
    """Through DNS discovery of `aim` (an address per replica), not one static `aim:8000`
    target, which would scrape whichever replica the name resolves to."""
    (config,) = load_yaml_documents(PROMETHEUS_CONFIG)
    jobs = [
        job
        for job in config["scrape_configs"]
        if any(
            sd.get("names") == ["aim"] and sd.get("type") == "A" and sd["port"] == SERVING_PORT
            for sd in job.get("dns_sd_configs", [])
        )
    ]
    assert len(jobs) == 1, "one scrape job discovering the aim replicas"
    assert jobs[0].get("metrics_path", "/metrics") == METRICS_ROUTE
    interval = jobs[0].get("scrape_interval", config["global"]["scrape_interval"])
    assert interval == "5s"


# --- Compose ------------------------------------------------------------------------------------


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    (compose,) = load_yaml_documents(path)
    return compose["services"]


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(container path, host source with defaults applied) for each short-syntax volume."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = with_defaults(volume).split(":")[:2]
        mounts.append((target, source))
    return mounts


def test_compose_services_images_and_mounts() -> None:
    (compose,) = load_yaml_documents(COMPOSE)
    services = compose["services"]
    assert {"aim", "redis", "nginx", "prometheus", "grafana"} <= set(services)
    assert services["aim"]["image"] == "${AIM_IMAGE:-aim-serving:local}"
    assert services["prometheus"]["image"] == "${PROMETHEUS_IMAGE:-prom/prometheus:latest}"
    assert services["grafana"]["image"] == "${GRAFANA_IMAGE:-grafana/grafana:latest}"
    assert services["aim"]["build"]["context"] == "."
    assert "BASE_IMAGE" in services["aim"]["build"]["args"]

    # Every host file a service mounts exists (variables at their defaults).
    for name, service in services.items():
        for _target, source in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    for name, secret in compose.get("secrets", {}).items():
        assert (ROOT / with_defaults(secret["file"])).is_file(), f"secret {name}"

    prometheus_mounts = dict(volume_mounts(services["prometheus"]))
    config = prometheus_mounts["/etc/prometheus/prometheus.yml"]
    assert config == "./deploy/prometheus/prometheus.yml"


def test_compose_aim_gets_config_keys_and_secret_where_the_entrypoint_reads_them() -> None:
    (compose,) = load_yaml_documents(COMPOSE)
    aim = compose["services"]["aim"]
    assert dict(volume_mounts(aim))[CONFIG_PATH] == "./deploy/config/config.yaml"
    secret_targets = {}
    for secret in aim["secrets"]:
        target = secret["target"]
        secret_targets[target if target.startswith("/") else f"/run/secrets/{target}"] = secret
    assert KEYS_PATH in secret_targets
    assert aim["environment"]["AIM_SECRET_FILE"] in secret_targets
    assert READINESS_ROUTE in " ".join(aim["healthcheck"]["test"])


def test_compose_scales_aim_behind_nginx_with_shared_redis() -> None:
    services = compose_services(COMPOSE)
    aim, nginx, redis = services["aim"], services["nginx"], services["redis"]
    assert aim["deploy"]["replicas"] >= 2
    # Replicas publish no host port (two could not share one); nginx publishes the serving port.
    assert "ports" not in aim
    assert [p for p in nginx["ports"] if with_defaults(p).endswith(f":{SERVING_PORT}")]
    assert aim["environment"]["AIM_REDIS_URL"] == "redis://redis:6379/0"
    assert aim["depends_on"]["redis"]["condition"] == "service_healthy"
    assert nginx["depends_on"]["aim"]["condition"] == "service_healthy"
    conf = (ROOT / dict(volume_mounts(nginx))["/etc/nginx/nginx.conf"]).read_text()
    assert re.search(rf"server aim:{SERVING_PORT}\b", conf)
    assert re.search(rf"listen {SERVING_PORT};", conf)
    assert "/data" in dict(volume_mounts(redis))
    for service in (nginx, redis):  # built from Debian's packages, no registry needed
        build = service["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_compose_publishes_every_port_on_loopback_by_default() -> None:
    """The defaults serve the demo keys and secret from this repository: reachable from this
    machine only, until AIM_BIND says otherwise (docs/DEPLOY.md)."""
    published = 0
    for name, service in compose_services(COMPOSE).items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("${AIM_BIND:-127.0.0.1}:"), name
            host, _host_port, _container_port = with_defaults(port).split(":")
            assert host == "127.0.0.1", name
            published += 1
    assert published >= 3  # nginx, prometheus, grafana


def test_k8s_replicas_share_the_redis_service() -> None:
    container = aim_container(k8s_object("Deployment"))
    env = {e["name"]: e for e in container["env"]}
    redis_service = k8s_object("Service", app="aim-redis")
    url = (
        f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    )
    assert env["AIM_REDIS_URL"]["value"] == url
    redis = k8s_object("StatefulSet", app="aim-redis")
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= pod_labels.items()
    assert k8s_object("Deployment")["spec"]["replicas"] >= 2


@pytest.mark.parametrize(
    "path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_k8s_manifests_match_the_kubernetes_schemas(path: str) -> None:
    """Offline, against the schemas kubernetes-validate ships (strict: no unknown fields)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for obj in load_yaml_documents(K8S / path):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD (Prometheus Operator): no schema in the Kubernetes set
        kubernetes_validate.validate(obj, version, strict=True)


def test_compose_gpu_override_reserves_an_nvidia_gpu() -> None:
    aim = compose_services(COMPOSE_GPU)["aim"]
    (device,) = aim["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    # docker-compose 1.29 accepts only an int or "all" here (no interpolation).
    assert device["count"] == "all" or isinstance(device["count"], int)
    assert "cuda" in aim["command"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_docker_compose_accepts_the_files(files: list[Path]) -> None:
    args = [arg for f in files for arg in ("-f", str(f))]
    result = subprocess.run(
        ["docker-compose", *args, "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # line continuations
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_base_image_is_a_build_arg() -> None:
    instructions = dockerfile_instructions()
    first_from = next(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    args = [rest for k, rest in instructions[:first_from] if k == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") for a in args), args
    froms = [rest for k, rest in instructions if k == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(rest.startswith("${BASE_IMAGE}") for rest in froms)


def test_dockerfile_runs_as_non_root() -> None:
    users = [rest for k, rest in final_stage(dockerfile_instructions()) if k == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_port_and_entrypoint() -> None:
    stage = final_stage(dockerfile_instructions())
    (healthcheck,) = [rest for k, rest in stage if k == "HEALTHCHECK"]
    assert READINESS_ROUTE in healthcheck
    assert "urllib" in healthcheck
    assert f":{SERVING_PORT}" in healthcheck
    assert ("EXPOSE", str(SERVING_PORT)) in stage
    (entrypoint,) = [rest for k, rest in stage if k == "ENTRYPOINT"]
    argv = json.loads(entrypoint)
    assert argv[:2] == ["aim", "serve"]
    assert argv[argv.index("--config") + 1] == CONFIG_PATH
    assert argv[argv.index("--keys-file") + 1] == KEYS_PATH
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
