"""The Helm chart (deploy/helm/stt): linted by a real helm, rendered with each values file kept in
the chart, every object validated against the Kubernetes JSON schemas (kubernetes-validate) and
KEDA's objects against KEDA's CRD schema (@kubernetes-models/keda, in Node). Nothing is applied:
no Kubernetes API server runs here, so these check what the chart renders, not a cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from redis.connection import parse_url as redis_py_parse_url

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
    "external-sentinel": (
        "--set-string",
        "redis.url=rediss+sentinel://s1:26379\\,[fd00::1]:26379/m/2,redis.password=p@ss,redis.username=app",
        "--set",
        "modelCache.existingClaim=models,apiKeys={a\\,b,c}",
        "-f",
        str(CHART / "values-gpu.yaml"),
    ),
    "ephemeral-sentinel": (
        "-f",
        str(CHART / "values-sentinel.yaml"),
        "--set",
        "redis.bundled.persistence.enabled=false,keda.enabled=false",
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


def render_with(values: dict[str, Any], *args: str) -> tuple[dict[str, Any], ...]:
    """The chart rendered with ``values`` (a values file: no --set parsing in the way)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        done = helm("template", "rel", str(CHART), *args, "-f", file.name)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def refused(values: dict[str, Any]) -> str:
    """helm's error for ``values`` the chart refuses."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        done = helm("template", "rel", str(CHART), "-f", file.name)
    assert done.returncode != 0, "rendered"
    return done.stderr


def parse_url(url: str) -> dict[str, Any]:
    """What redis-py (the services' client for redis:// and rediss://) reads from ``url``."""
    parts: dict[str, Any] = redis_py_parse_url(url)  # type: ignore[no-untyped-call]
    return parts


def secret(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return named(docs, "Secret")["rel-stt"]["stringData"]  # type: ignore[no-any-return]


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
    if not keda:
        assert "--set" in RENDERINGS[which] and "keda.enabled=false" in " ".join(RENDERINGS[which])
        return
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
    url = secret(render("sentinel"))["REDIS_URL"]
    sentinel = parse_sentinel(url)
    assert sentinel is not None and len(sentinel.hosts) == 3 and sentinel.password == "change-me"
    sets = named(render("sentinel"), "StatefulSet")
    assert sets["rel-redis"]["spec"]["replicas"] == 3 and sets["rel-sentinel"]["spec"]["replicas"] == 3
    assert secret(render("default"))["REDIS_URL"].startswith("redis://")
    external = render("external")
    assert not named(external, "StatefulSet")  # an external Redis: nothing bundled
    assert secret(external)["REDIS_URL"] == "redis://:pw@redis.example:6379/0"
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


def trigger_of(docs: tuple[dict[str, Any], ...], pool: str = "swift") -> dict[str, Any]:
    (trigger,) = named(docs, "ScaledObject")[f"rel-transcriber-{pool}"]["spec"]["triggers"]
    return trigger  # type: ignore[no-any-return]


def keda_auth(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """TriggerAuthentication parameter -> the value KEDA reads from the Secret."""
    auth = named(docs, "TriggerAuthentication").get("rel-redis")
    refs = auth["spec"]["secretTargetRef"] if auth else []
    return {ref["parameter"]: secret(docs)[ref["key"]] for ref in refs}


def test_the_readmes_helm_commands_render() -> None:
    """Defect 7: the README's `--set redis.url=...,...` broke on helm's comma splitting."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Kubernetes") :]
    block = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert len(commands) >= 4 and any("redis.url" in " ".join(c) for c in commands)
    for command in commands:
        assert command[:2] == ["helm", "install"], command
        args = [str(ROOT / a) if a.startswith("deploy/") else a for a in command[3:]]
        done = helm("template", command[2], *args)
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr}"


EXTERNAL = {
    "redis": (
        {"url": "redis://:pw@redis.example:6380/3"},
        {"address": "redis.example:6380", "databaseIndex": "3"},
        {"password": "pw"},
    ),
    "rediss": (
        {"url": "rediss://app:s3cret@[fd00::5]/2?ssl_cert_reqs=none"},
        {"address": "[fd00::5]:6379", "databaseIndex": "2", "enableTLS": "true", "unsafeSsl": "true"},
        {"username": "app", "password": "s3cret"},
    ),
    "sentinel": (
        {
            "url": "redis+sentinel://s1:26379,[fd00::1]:26380/mymaster/5",
            "password": "p@ss/w:rd",
            "sentinelPassword": "sent pw",
        },
        {"addresses": "s1:26379,[fd00::1]:26380", "sentinelMaster": "mymaster", "databaseIndex": "5"},
        {"password": "p@ss/w:rd", "sentinelPassword": "sent pw"},
    ),
    "tls-sentinel": (
        {"url": "rediss+sentinel://s1,s2/m", "username": "app", "password": "pw"},
        {"addresses": "s1:26379,s2:26379", "sentinelMaster": "m", "databaseIndex": "0", "enableTLS": "true"},
        {"username": "app", "password": "pw"},
    ),
}


@pytest.mark.parametrize("which", EXTERNAL)
def test_an_external_url_reaches_keda_and_the_services_whole(which: str) -> None:
    """Defect 7: KEDA got ``address: "redis+sentinel:"`` / ``"rediss:"``, and neither the URL's
    password nor its /db; now host, port, db, TLS, Sentinels and credentials reach both sides."""
    values, metadata, auth = EXTERNAL[which]
    docs = render_with({"redis": values})
    trigger = trigger_of(docs)
    sentinel = "sentinel" in which
    assert trigger["type"] == ("redis-sentinel-streams" if sentinel else "redis-streams")
    for key, value in metadata.items():
        assert trigger["metadata"][key] == value, key
    assert ("enableTLS" in trigger["metadata"]) == ("enableTLS" in metadata)
    assert keda_auth(docs) == auth
    assert ("authenticationRef" in trigger) == bool(auth)
    url = secret(docs)["REDIS_URL"]
    if sentinel:
        parsed = parse_sentinel(url)
        assert parsed is not None
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.hosts)
        assert hosts == metadata["addresses"]
        assert (parsed.service, str(parsed.db), parsed.tls) == (
            metadata["sentinelMaster"],
            metadata["databaseIndex"],
            "enableTLS" in metadata,
        )
        assert (parsed.username, parsed.password) == (auth.get("username"), auth.get("password"))
        assert parsed.sentinel_password == auth.get("sentinelPassword")
    else:
        plain = parse_url(url)
        host = f"[{plain['host']}]" if ":" in plain["host"] else plain["host"]
        assert f"{host}:{plain['port']}" == metadata["address"]
        assert str(plain["db"]) == metadata["databaseIndex"]
        assert (plain.get("username"), plain.get("password")) == (auth.get("username"), auth["password"])
        assert url.startswith("rediss://") == ("enableTLS" in metadata)
    for value in (json.dumps(d) for d in docs if d["kind"] not in ("Secret",)):
        assert "s3cret" not in value and "p@ss" not in value  # credentials stay in the Secret


def test_urls_the_chart_cannot_pass_on_are_refused_with_a_reason() -> None:
    assert "redis.password" in refused({"redis": {"url": "redis://:p%40ss@h:6379/0"}})
    assert "give them once" in refused({"redis": {"url": "redis://:a@h/0", "password": "b"}})
    assert "names its service" in refused({"redis": {"url": "redis+sentinel://s1:26379"}})
    assert "one host" in refused({"redis": {"url": "redis://a:1,b:2/0"}})
    assert "redis.sentinelPassword" in refused(
        {"redis": {"url": "redis+sentinel://s:1/m?sentinel_password=x"}}
    )


@pytest.mark.parametrize("sentinels", [False, True])
def test_a_password_of_any_characters_reaches_the_services_whole(sentinels: bool) -> None:
    """Defect 8 (chart side): redis.password went into the URL unescaped; ``@``, ``/``, ``:``
    broke it."""
    password = 'p@ss/w:rd %+#?&"x\\'
    bundled = {"replicas": 2, "sentinel": {"enabled": True}} if sentinels else {}
    url = secret(render_with({"redis": {"password": password, "bundled": bundled}}))["REDIS_URL"]
    if sentinels:
        parsed = parse_sentinel(url)
        assert parsed is not None and len(parsed.hosts) == 3
        assert (parsed.password, parsed.sentinel_password, parsed.service) == (password, password, "stt")
    else:
        assert parse_url(url)["password"] == password
        assert parse_url(url)["host"] == "rel-redis-0.rel-redis-headless"


def test_keda_sends_a_sentinel_password_exactly_when_the_sentinels_require_one() -> None:
    """Defect 6: KEDA sent sentinelPassword to Sentinels that had no password (a Sentinel then
    answers ``ERR AUTH ... called without any password configured``). Now the bundled Sentinels
    get requirepass from the same Secret key and the services send it too."""
    docs = render("sentinel")
    assert keda_auth(docs) == {"password": "change-me", "sentinelPassword": "change-me"}
    sentinel = named(docs, "StatefulSet")["rel-sentinel"]
    refs = {e["name"]: e["valueFrom"] for e in container(sentinel)["env"] if "valueFrom" in e}
    assert secret(docs)[refs["REDIS_PASSWORD"]["secretKeyRef"]["key"]] == "change-me"
    script = named(docs, "ConfigMap")["rel-redis-scripts"]["data"]["start-sentinel.sh"]
    assert '"requirepass $(quoted "$REDIS_PASSWORD")"' in script
    assert parse_sentinel(secret(docs)["REDIS_URL"]).sentinel_password == "change-me"  # type: ignore[union-attr]
    # Without a password neither side has one; an external Sentinel gets one only if given.
    unprotected = render_with({"redis": {"bundled": {"replicas": 2, "sentinel": {"enabled": True}}}})
    assert keda_auth(unprotected) == {}
    assert parse_sentinel(secret(unprotected)["REDIS_URL"]).sentinel_password is None  # type: ignore[union-attr]
    external = render_with({"redis": {"url": "redis+sentinel://s:26379/m", "password": "pw"}})
    assert keda_auth(external) == {"password": "pw"}


def test_the_bundled_redis_keeps_its_data_and_decides_its_role_at_start() -> None:
    """Defect 5 (what is rendered): an append-only file on a PersistentVolumeClaim per pod, and the
    start script the chart ships (run against real processes in test_redis_url.py)."""
    for which in ("default", "sentinel"):
        docs = render(which)
        redis_set = named(docs, "StatefulSet")["rel-redis"]
        (claim,) = redis_set["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert "app.kubernetes.io/version" not in claim["metadata"]["labels"]  # immutable once installed
        mounts = {m["name"]: m["mountPath"] for m in container(redis_set)["volumeMounts"]}
        assert mounts["data"] == env(redis_set)["DATA_DIR"] == "/data"
        assert container(redis_set)["command"] == ["sh", "/scripts/start-redis.sh"]
        scripts = named(docs, "ConfigMap")["rel-redis-scripts"]["data"]
        for path in (CHART / "files" / "redis").iterdir():
            assert scripts[path.name] == path.read_text()  # the files test_redis_url.py runs
        assert "--appendonly yes" in scripts["start-redis.sh"]
        spec = redis_set["spec"]["template"]["spec"]
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
        headless = named(docs, "Service")["rel-redis-headless"]
        assert headless["spec"]["publishNotReadyAddresses"] is True  # pod 0 resolves before it is ready
    assert secret(render("default"))["REDIS_URL"] == "redis://rel-redis-0.rel-redis-headless:6379/0"
    off = render_with({"redis": {"bundled": {"persistence": {"enabled": False}}}})
    redis_set = named(off, "StatefulSet")["rel-redis"]
    assert "volumeClaimTemplates" not in redis_set["spec"]
    volumes = {v["name"]: v for v in redis_set["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]


def script_settings(script: str) -> set[str]:
    """The environment variables a start script (and the lib it sources) reads."""
    folder = CHART / "files" / "redis"
    text = (folder / script).read_text() + (folder / "lib.sh").read_text()
    names = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))
    return names - {"REDISCLI_AUTH"}


def test_every_setting_the_start_scripts_read_is_rendered() -> None:
    """The same class as defect 6: a value one side reads and the other never sets."""
    sets = named(render("sentinel"), "StatefulSet")
    for name, script in (("rel-redis", "start-redis.sh"), ("rel-sentinel", "start-sentinel.sh")):
        rendered = {e["name"] for e in container(sets[name])["env"]}
        assert script_settings(script) - {"BIND"} <= rendered, script  # BIND: loopback tests only
        assert "BIND" not in rendered
    redis_env = env(sets["rel-redis"])
    sentinel_env = env(sets["rel-sentinel"])
    assert redis_env["SENTINELS"] == sentinel_env["SENTINELS"]
    assert len(redis_env["SENTINELS"].split()) == 3 and sentinel_env["QUORUM"] == "2"
    first = "rel-redis-0.rel-redis-headless 6379"
    assert redis_env["FIRST_PRIMARY"] == sentinel_env["FIRST_PRIMARY"] == first
    assert redis_env["SELF_HOST"] == "$(POD_NAME).rel-redis-headless"
    assert env(named(render("default"), "StatefulSet")["rel-redis"])["SENTINELS"] == ""


def test_keda_owns_the_transcriber_replica_count() -> None:
    """Defect 9: ``replicas`` on a Deployment a ScaledObject manages resets the pool at every
    helm upgrade."""
    for name, deployment in named(render("default"), "Deployment").items():
        assert ("replicas" in deployment["spec"]) == (name == "rel-ingest"), name
    without_keda = named(render_with({"keda": {"enabled": False}}), "Deployment")
    assert without_keda["rel-transcriber-swift"]["spec"]["replicas"] == 1
    assert without_keda["rel-transcriber-prime"]["spec"]["replicas"] == 0


def test_gpu_transcribers_run_the_cuda_image() -> None:
    """Defect 9: values-gpu.yaml switched to CUDA but kept the CPU image."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repository = values["image"]["repository"]
    for which, tag in (("default", values["image"]["tag"]), ("gpu", values["image"]["gpuTag"])):
        deployments = named(render(which), "Deployment")
        assert container(deployments["rel-ingest"])["image"] == f"{repository}:{values['image']['tag']}"
        for pool in ("swift", "prime"):
            assert container(deployments[f"rel-transcriber-{pool}"])["image"] == f"{repository}:{tag}"
    # The build the comment in values.yaml names is docker-compose.gpu.yml's.
    compose = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    base = compose["x-gpu"]["build"]["args"]["BASE"].split(":-", 1)[1].rstrip("}")
    assert f"BASE={base}" in (CHART / "values.yaml").read_text()
    assert f"{repository}:{values['image']['gpuTag']}" in (CHART / "values.yaml").read_text()


def test_transcribers_can_write_a_mounted_model_cache() -> None:
    """Defect 9: uid 10001 without fsGroup cannot write an existingClaim's volume."""
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert user is not None
    docs = render_with({"modelCache": {"existingClaim": "models"}})
    for name in ("rel-transcriber-swift", "rel-transcriber-prime"):
        spec = named(docs, "Deployment")[name]["spec"]["template"]["spec"]
        context = spec["securityContext"]
        uid, gid = map(int, user.groups())
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
        assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"


def test_the_versions_lag_scaling_needs_are_stated_and_bundled() -> None:
    """lagCount reads XINFO GROUPS lag (Redis 7.0); KEDA has it since 2.11 (its CHANGELOG: "Redis
    Scalers: Allow scaling using consumer group lag", v2.11.0)."""
    values_text = (CHART / "values.yaml").read_text()
    readme = (ROOT / "README.md").read_text()
    kubernetes = readme[readme.index("## Kubernetes") :]
    for text in (values_text, kubernetes[: kubernetes.index("\n## ", 5)]):
        assert "Redis >= 7.0" in text or "Redis ≥ 7.0" in text
        assert "KEDA >= 2.11" in text or "KEDA ≥ 2.11" in text
    image = yaml.safe_load(values_text)["redis"]["bundled"]["image"]
    major, *_ = re.split(r"[.-]", image.rpartition(":")[2])
    assert int(major) >= 7, image


def test_api_keys_with_commas_reach_the_ingest_whole(tmp_path: Path) -> None:
    """The same class: API keys were joined with commas into API_KEYS, which the ingest splits on
    commas; now a file, one key a line (--api-keys-file), read here by the ingest's own parser."""
    from services.ingest.config import parse_args

    docs = render_with({"apiKeys": ["k1,with-comma", "k2"]})
    ingest = named(docs, "Deployment")["rel-ingest"]
    path = env(ingest)["API_KEYS_FILE"]
    (mount,) = container(ingest)["volumeMounts"]
    (volume,) = ingest["spec"]["template"]["spec"]["volumes"]
    assert path == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    (tmp_path / "api-keys").write_text(secret(docs)[volume["secret"]["items"][0]["key"]])
    config = parse_args(["--api-keys-file", str(tmp_path / "api-keys")])
    assert config.api_keys == {"k1,with-comma", "k2"}
    assert "API_KEYS_FILE" not in env(named(render("default"), "Deployment")["rel-ingest"])
    assert "starts with no '#'" in refused({"apiKeys": ["#k"]})


def test_the_pod_monitor_reaches_every_pod_that_serves_metrics() -> None:
    """The same class: the ServiceMonitor selected Services, and only the ingest has one, so the
    transcribers' metrics never reached a Prometheus Operator."""
    docs = render_with({"metrics": {"podMonitor": True}})
    (monitor,) = named(docs, "PodMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    serving = {
        name
        for name, deployment in named(docs, "Deployment").items()
        if endpoint["port"] in {p["name"] for p in container(deployment)["ports"]}
    }
    assert serving == {"rel-ingest", "rel-transcriber-swift", "rel-transcriber-prime"}
    for name in serving:
        labels = named(docs, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name


def test_the_ingest_serves_every_pool_of_the_chart_even_at_zero_transcribers() -> None:
    """Defect 4: prime's KEDA minReplicas is 0; the ingest must accept and queue its sessions, so
    that the backlog KEDA reads can start the first transcriber (tests/test_pools.py runs it)."""
    docs = render("default")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pools = [pool["name"] for pool in values["pools"]]
    assert any(pool["minReplicas"] == 0 for pool in values["pools"])
    assert env(named(docs, "Deployment")["rel-ingest"])["POOLS"].split(",") == pools
