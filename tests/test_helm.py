"""The Helm chart (deploy/helm/stt): linted by a real helm, rendered with each values file kept in
the chart, every object validated against the Kubernetes JSON schemas (kubernetes-validate) and
KEDA's objects against KEDA's CRD schema (@kubernetes-models/keda, in Node). Nothing is applied:
no Kubernetes API server runs here, so these check what the chart renders, not a cluster."""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services import keys
from services.redis_url import parse_sentinel
from services.stack import ROOT

CHART = ROOT / "deploy" / "helm" / "stt"
TOOLS = ROOT / ".cache" / "k8s"
HELM = TOOLS / "helm"
KUBERNETES = "1.32.0"
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")
RENDERINGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "gpu": ("-f", str(CHART / "values-gpu.yaml")),
    "sentinel": ("-f", str(CHART / "values-sentinel.yaml")),
    "external": (
        "--set",
        "redis.url=redis://:pw@redis.example:6379/0",
        "--set",
        "ingest.ingress.enabled=true",
    ),
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert os.access(HELM, os.X_OK), "helm is missing: deploy/install-k8s-tools.sh (make test runs it)"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


@cache
def render(which: str) -> tuple[dict[str, Any], ...]:
    done = helm("template", "rel", str(CHART), *RENDERINGS[which])
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def named(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<secret>") for e in container(deployment)["env"]}


def test_helm_lints_the_chart() -> None:
    done = helm("lint", str(CHART))
    assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("which", RENDERINGS)
def test_every_rendered_object_matches_its_schema(which: str) -> None:
    docs = render(which)
    for doc in docs:
        if doc["kind"] not in KEDA_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    keda = [json.dumps(doc) for doc in docs if doc["kind"] in KEDA_KINDS]
    assert keda, "no KEDA objects rendered"
    node_env = {"NODE_PATH": str(TOOLS / "node_modules"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "keda_validate.js")],
        input="\n".join(keda),
        capture_output=True,
        text=True,
        env=node_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_checks_catch_a_broken_object() -> None:
    """Not vacuous: a Deployment with a string replica count and a ScaledObject without its target fail."""
    docs = render("default")
    deployment = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    scaled = json.loads(json.dumps(next(d for d in docs if d["kind"] == "ScaledObject")))
    del scaled["spec"]["scaleTargetRef"]
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "keda_validate.js")],
        input=json.dumps(scaled),
        capture_output=True,
        text=True,
        env={"NODE_PATH": str(TOOLS / "node_modules"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        timeout=60,
    )
    assert done.returncode == 1 and "scaleTargetRef" in done.stdout


def test_keda_scales_each_pool_on_its_streams_backlog() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (values["keys"]["prefix"], values["keys"]["group"]) == (keys.PREFIX, keys.GROUP)
    for which, trigger_type in (("default", "redis-streams"), ("sentinel", "redis-sentinel-streams")):
        scaled = named(render(which), "ScaledObject")
        deployments = named(render(which), "Deployment")
        for pool in values["pools"]:
            obj = scaled[f"rel-transcriber-{pool['name']}"]
            assert obj["spec"]["scaleTargetRef"]["name"] in deployments
            assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"]) == (
                pool["minReplicas"],
                pool["maxReplicas"],
            )
            (trigger,) = obj["spec"]["triggers"]
            assert trigger["type"] == trigger_type
            meta = trigger["metadata"]
            assert meta["stream"] == keys.segment_stream(pool["name"]) and meta["consumerGroup"] == keys.GROUP
            assert meta["lagCount"] == str(pool["lagPerReplica"]) and "pendingEntriesCount" not in meta
            if which == "sentinel":
                assert meta["sentinelMaster"] == "stt" and len(meta["addresses"].split(",")) == 3


def test_gpu_values_give_transcribers_a_gpu_each_and_the_ingest_none() -> None:
    for which in ("default", "gpu"):
        deployments = named(render(which), "Deployment")
        for name, deployment in deployments.items():
            limits = container(deployment).get("resources", {}).get("limits", {})
            gpu = which == "gpu" and "transcriber" in name
            assert ("nvidia.com/gpu" in limits) == gpu, (which, name)
            if gpu:
                assert limits["nvidia.com/gpu"] == 1
                spec = deployment["spec"]["template"]["spec"]
                assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
                assert env(deployment)["DEVICE"] == "cuda" and env(deployment)["BACKEND"] == "transformers"


def test_probes_hit_the_services_real_endpoints_and_the_drain_fits_the_grace_period() -> None:
    deployments = named(render("default"), "Deployment")
    ingest = deployments["rel-ingest"]
    port = {p["name"]: p["containerPort"] for p in container(ingest)["ports"]}
    assert port["ws"] == int(env(ingest)["PORT"]) and port["metrics"] == int(env(ingest)["METRICS_PORT"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container(ingest)[probe]["httpGet"] == {"path": "/healthz", "port": "ws"}
    grace = ingest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container(ingest)["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace > int(env(ingest)["DRAIN_TIMEOUT"]) + pre_stop
    swift = deployments["rel-transcriber-swift"]
    assert container(swift)["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    metrics_port = {p["name"]: p["containerPort"] for p in container(swift)["ports"]}["metrics"]
    assert metrics_port == int(env(swift)["METRICS_PORT"])
    assert env(swift)["SERVE_AS"] == "swift"
    annotations = swift["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(
        metrics_port
    )
    pdb = named(render("default"), "PodDisruptionBudget")["rel-ingest"]
    assert pdb["spec"]["minAvailable"] >= 1


def test_the_redis_url_the_services_get_matches_the_redis_rendered() -> None:
    url = named(render("sentinel"), "Secret")["rel-stt"]["stringData"]["REDIS_URL"]
    sentinel = parse_sentinel(url)
    assert sentinel is not None and len(sentinel.hosts) == 3 and sentinel.password == "change-me"
    sets = named(render("sentinel"), "StatefulSet")
    assert sets["rel-redis"]["spec"]["replicas"] == 3 and sets["rel-sentinel"]["spec"]["replicas"] == 3
    assert named(render("default"), "Secret")["rel-stt"]["stringData"]["REDIS_URL"].startswith("redis://")
    external = render("external")
    assert not named(external, "StatefulSet")  # an external Redis: nothing bundled
    assert (
        named(external, "Secret")["rel-stt"]["stringData"]["REDIS_URL"] == "redis://:pw@redis.example:6379/0"
    )
    (trigger,) = named(external, "ScaledObject")["rel-transcriber-swift"]["spec"]["triggers"]
    assert trigger["metadata"]["address"] == "redis.example:6379"


def test_the_ingress_keeps_websockets_open_and_the_dashboard_is_the_repositorys() -> None:
    ingress = named(render("external"), "Ingress")["rel-ingest"]
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    dashboards = named(render("default"), "ConfigMap")["rel-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (ROOT / "deploy" / "grafana" / "dashboards" / "stt.json").read_text()
    assert dashboards["data"]["stt.json"] == shipped  # the chart's copy is the repository's dashboard
