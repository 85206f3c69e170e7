"""deploy/: the compose stack, the Dockerfile, the Kubernetes manifests, Grafana provisioning
and the dashboards parse and hang together (names, ports, paths, settings, metric names).

Docker and a cluster are not available to the tests: these are static checks. That every
dashboard and alert expression returns data is proved against a real Prometheus in
test_dashboards_query_real_prometheus.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load_config
from app.settings import DEFAULT_CONFIG, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S = DEPLOY / "k8s"
SETTING_NAMES = {f"CRM_PULSE_{name.upper()}" for name in Settings.model_fields}
WORKER_PORT = 6066
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- docker compose ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")


def host_path(volume: str) -> Path:
    """The host side of a ``./relative:/container[:ro]`` bind mount."""
    return (DEPLOY / volume.split(":")[0]).resolve()


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_kafka_runs_in_kraft_mode_without_zookeeper(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "zookeeper" not in json.dumps(compose).lower()
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node, voter = str(env["KAFKA_NODE_ID"]), env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voter.startswith(f"{node}@kafka:")
    assert f"CONTROLLER://:{voter.rsplit(':', 1)[1]}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # The cluster id is a base64url-encoded UUID: 16 bytes, 22 characters.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"  # a single node


def test_workers_reach_kafka_and_redis_and_report_readiness(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    env = worker["environment"]
    assert env["CRM_PULSE_KAFKA"] == "kafka://kafka:9092"
    assert env["CRM_PULSE_REDIS"].startswith("redis://redis:6379")
    assert env["CRM_PULSE_WEB_HOST"] == "0.0.0.0"
    assert env["CRM_PULSE_WEB_PORT"] == str(WORKER_PORT)
    assert worker["deploy"]["replicas"] >= 2
    assert f"127.0.0.1:{WORKER_PORT}/readyz" in " ".join(worker["healthcheck"]["test"])
    for dependency in ("kafka", "redis"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert (DEPLOY / worker["build"]["context"]).resolve() == ROOT  # the build sees the repo
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_compose_settings_are_real_settings(compose: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("CRM_PULSE_"):
                assert variable in SETTING_NAMES, f"{name}: {variable} is no setting"
    for variable, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(variable, str(value))
    settings = Settings(_env_file=None)
    assert settings.kafka == "kafka://kafka:9092" and settings.partitions == 8


def test_prometheus_and_grafana_mount_the_files_of_this_folder(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: host_path(v) for v in prometheus["volumes"] if v.startswith(".")}
    assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == DEPLOY / "prometheus" / "alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: host_path(v) for v in grafana["volumes"] if v.startswith(".")}
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/crm-pulse.yml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_path] == DASHBOARDS
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_path}/office-wall.json"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_the_dockerfile_builds_and_runs_a_worker(compose: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \. ", dockerfile, re.M)
    assert 'ENTRYPOINT ["crm-pulse"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    assert "/readyz" in dockerfile and re.search(r"^USER \d+$", dockerfile, re.M)
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
    sources = [source for line in copied for source in line.split()]
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies a missing {source}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[(.*)\]', pyproject)
    assert packages, "pyproject.toml: [tool.setuptools.packages.find] include"
    for package in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert package in sources, f"the image would miss the {package} package"


# -- Kubernetes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every object of deploy/k8s by ``Kind/name``."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            key = f"{document['kind']}/{document['metadata']['name']}"
            assert key not in objects, f"{key} twice"
            objects[key] = document
    return objects


def test_k8s_manifests_have_the_expected_objects(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {
        "ConfigMap/crm-pulse-env", "ConfigMap/crm-pulse-model", "Secret/crm-pulse-secrets",
        "Deployment/crm-pulse-worker", "Service/crm-pulse",
        "PodDisruptionBudget/crm-pulse-worker"}
    for key, document in manifests.items():
        assert "namespace" not in document["metadata"], f"{key}: namespace-agnostic please"
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert "namespace" not in kustomization
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.yaml" not in kustomization["resources"], "placeholders must not be applied"


def worker_pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return manifests["Deployment/crm-pulse-worker"]["spec"]["template"]


def test_the_worker_deployment_probes_and_limits(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment/crm-pulse-worker"]
    assert deployment["spec"]["replicas"] == 3
    pod = worker_pod(manifests)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"][
        "labels"].items()
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(WORKER_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_deployment_takes_its_settings_from_the_configmap_and_secret(
    manifests: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = worker_pod(manifests)
    (container,) = pod["spec"]["containers"]
    sources = {("ConfigMap" if "configMapRef" in s else "Secret",
                (s.get("configMapRef") or s.get("secretRef"))["name"])
               for s in container["envFrom"]}
    assert sources == {("ConfigMap", "crm-pulse-env"), ("Secret", "crm-pulse-secrets")}
    env = {item["name"]: item["value"] for item in container["env"]}
    env |= manifests["ConfigMap/crm-pulse-env"]["data"]
    env |= manifests["Secret/crm-pulse-secrets"]["stringData"]
    for variable in env:
        assert variable in SETTING_NAMES, f"{variable} is not a setting of app/settings.py"
    assert env["CRM_PULSE_WEB_HOST"] == "0.0.0.0"
    assert env["CRM_PULSE_WEB_PORT"] == str(WORKER_PORT)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = Settings(_env_file=None)  # types and non-empty secrets validate
    assert settings.generic_webhook_secret is not None and settings.hubspot_client_secret
    secret_keys = set(manifests["Secret/crm-pulse-secrets"]["stringData"])
    assert {"CRM_PULSE_GENERIC_WEBHOOK_SECRET", "CRM_PULSE_HUBSPOT_CLIENT_SECRET",
            "CRM_PULSE_DYNAMICS365_WEBHOOK_KEY", "CRM_PULSE_SALESFORCE_SECRET",
            "CRM_PULSE_PIPEDRIVE_PASSWORD", "CRM_PULSE_PSEUDONYM_KEY"} <= secret_keys
    assert not set(manifests["ConfigMap/crm-pulse-env"]["data"]) & secret_keys


def test_the_kpi_model_is_mounted_where_crm_pulse_config_points(
    manifests: dict[str, dict[str, Any]]
) -> None:
    pod = worker_pod(manifests)
    (container,) = pod["spec"]["containers"]
    config_path = Path(next(e["value"] for e in container["env"]
                            if e["name"] == "CRM_PULSE_CONFIG"))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"]
                 if Path(m["mountPath"]) == config_path.parent)
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == "crm-pulse-model"
    assert {"key": "pulse.yaml", "path": config_path.name} in source["items"]
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes


def test_the_configmap_model_is_the_default_and_valid(
    manifests: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    model = manifests["ConfigMap/crm-pulse-model"]["data"]["pulse.yaml"]
    assert yaml.safe_load(model) == load_yaml(DEFAULT_CONFIG), (
        "deploy/k8s/configmap-model.yaml differs from app/defaults/pulse.yaml: copy the "
        "default into it again (indented by 4 spaces under `pulse.yaml: |`)")
    path = tmp_path / "pulse.yaml"
    path.write_text(model)
    assert load_config(path).kpis  # the real loader accepts it


def test_service_and_pdb_select_the_worker_pods(manifests: dict[str, dict[str, Any]]) -> None:
    labels = worker_pod(manifests)["metadata"]["labels"]
    service = manifests["Service/crm-pulse"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"] == [{"name": "http", "port": WORKER_PORT, "targetPort": "http",
                                 "protocol": "TCP"}]
    pdb = manifests["PodDisruptionBudget/crm-pulse-worker"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


# -- Grafana -----------------------------------------------------------------------------


def test_grafana_datasource_is_the_prometheus_of_the_stack() -> None:
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[
        "datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    scrape = load_yaml(DEPLOY / "prometheus/prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape  # $__rate_interval needs it


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    boards = {path.name: json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")}
    assert set(boards) == {"office-wall.json", "adoption-insights.json", "operations.json"}
    return boards


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboards_are_provisionable(dashboards: dict[str, dict[str, Any]]) -> None:
    uids = [board["uid"] for board in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in dashboards.items():
        assert board["schemaVersion"] >= 36, name
        assert board["title"].startswith("CRM Pulse"), name
        assert "id" not in board or board["id"] is None, f"{name}: no database id in files"
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
        for panel in panels(board):
            where = f"{name} panel {panel['id']} {panel['title']!r}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
            targets = panel["targets"]
            assert targets, f"{where}: no targets"
            refs = [target["refId"] for target in targets]
            assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
            for target in targets:
                assert target.get("expr", "").strip(), f"{where} {target['refId']}: no expr"
                assert target["datasource"]["uid"] == "prometheus", where


def test_dashboard_variables_are_defined(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, board in dashboards.items():
        defined = {v["name"] for v in board["templating"]["list"]}
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "prometheus"
                assert variable["definition"].startswith("label_values(")
        texts = [panel["title"] for panel in panels(board)]
        texts += [t["expr"] for panel in panels(board) for t in panel.get("targets", [])]
        for text in texts:
            for used in re.findall(r"\$\{?(\w+)", text):
                assert used in defined | GRAFANA_BUILTINS, f"{name}: ${used} is not defined"


def test_the_office_wall_suits_a_tv(dashboards: dict[str, dict[str, Any]]) -> None:
    wall = dashboards["office-wall.json"]
    assert wall["refresh"] == "10s" and wall["style"] == "dark"
    kinds = {panel["type"] for panel in panels(wall)}
    assert kinds <= {"stat", "bargauge"}, f"big numbers only on the TV: {kinds}"
    text = json.dumps(wall)
    assert "crm_pulse_user_kpi_value" not in text and "crm_pulse_alerts_total" not in text, (
        "no per-person or below-target figures on the public wall")


def metric_contract() -> set[str]:
    """The metric names of docs/metrics.md's table."""
    table = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(crm_pulse_\w+)` \|", table, re.M))


def base_name(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def test_every_metric_used_is_in_the_metrics_contract(
    dashboards: dict[str, dict[str, Any]]
) -> None:
    contract = metric_contract()
    assert "crm_pulse_events_total" in contract
    exprs = [t["expr"] for board in dashboards.values() for panel in panels(board)
             for t in panel.get("targets", [])]
    exprs += [v["definition"] for board in dashboards.values()
              for v in board["templating"]["list"] if v["type"] == "query"]
    exprs += [rule["expr"] for group in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
              for rule in group["rules"]]
    used = {base_name(name) for expr in exprs for name in re.findall(r"\bcrm_pulse_\w+", expr)}
    assert used - contract == set(), "metrics missing from docs/metrics.md"
    unused = contract - used - {"crm_pulse_user_kpi_value"}  # opt-in per person: not shown
    assert unused == set(), f"metrics of the contract on no dashboard: {unused}"
