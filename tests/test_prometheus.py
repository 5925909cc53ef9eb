"""A real Prometheus scrapes the real ingest and transcriber while real clients stream
real speech; then every dashboard query and every alert rule runs against it.

Prometheus is the Debian binary, started here on a free port with a config written
here: the repo's job names, the repo's alerts.yml, scrape and rule evaluation every
second, storage in a temp folder. Nothing touches a system Prometheus (or port 9090).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from services.stack import ROOT, Proc, Stack, free_port, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
# Grafana fills $__rate_interval in from the scrape interval and the zoom. A window that
# spans the whole run (well under five minutes) stands in for it here.
RATE_INTERVAL = "5m"
# An alert rule is "<signal> <op> <number>" or "absent(<signal>)" (alerts.yml says so).
THRESHOLD = re.compile(r"^(?P<signal>.+?)\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[-+]?\d+)?$", re.DOTALL)
ABSENT = re.compile(r"^absent\((?P<signal>.+)\)$", re.DOTALL)


class PromAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1/"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:  # 400 for a query that does not parse
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        """``/-/ready`` answers 200 once the TSDB is open and the rules are loaded (503 before)."""
        try:
            with urllib.request.urlopen(self.base.replace("api/v1/", "-/ready"), timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:  # refused, or HTTPError 503
            return False


@dataclass
class LiveRun:
    prom: PromAPI
    finals: int
    log: Path


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path, "prometheus is missing: run deploy/install-system-deps.sh (Debian package prometheus)"
    return path


def noise_wav(path: Path) -> Path:
    """Silence, a second of loud white noise, silence: the VAD opens a segment and the
    flatness check drops it (stt_segments_dropped_total{reason="noise"})."""
    silence = np.zeros(16000, np.int16)
    noise = (np.random.default_rng(7).standard_normal(16000) * 8000).clip(-32000, 32000).astype(np.int16)
    sf.write(path, np.concatenate([silence, noise, silence, silence]), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, speech: Speech) -> Iterator[LiveRun]:
    workdir = tmp_path_factory.mktemp("prometheus")
    ingest_port, transcriber_port, prom_port = free_port(), free_port(), free_port()
    config = {  # JSON is YAML; the job names are the repo's (alerts and panels select on them)
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
            {"job_name": "ingest", "static_configs": [{"targets": [f"127.0.0.1:{ingest_port}"]}]},
            {"job_name": "transcriber", "static_configs": [{"targets": [f"127.0.0.1:{transcriber_port}"]}]},
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))
    args = [
        prometheus_binary(),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    # Started first: its first scrapes overlap the transcriber's model load.
    prometheus = Proc("prometheus", args, workdir / "prometheus.log")
    prom = PromAPI(prom_port)
    stack = None
    try:
        wait_until(lambda: prom.ready() or prometheus.popen.poll() is not None, 20, "Prometheus to start")
        assert prometheus.popen.poll() is None, prometheus.log
        stack = Stack.base(
            workdir,
            ingest_flags=("--metrics-port", str(ingest_port)),
            transcriber_flags=("--metrics-port", str(transcriber_port)),
        )
        both_up = 'count(up{job=~"ingest|transcriber"} == 1)'
        wait_until(
            lambda: prom.scalar(both_up) == 2, 30, "Prometheus to scrape the ingest and the transcriber"
        )
        yield LiveRun(prom, traffic(stack.uri, speech, workdir), workdir / "prometheus.log")
    finally:
        if stack:
            stack.stop()
        prometheus.stop()


def traffic(uri: str, speech: Speech, workdir: Path) -> int:
    """Real clients: a refused session, a noise-only stream, then speech from concurrent
    clients in two waves (so batches form and counters rise across several scrapes).
    Returns the number of transcripts the clients printed."""
    code, events, _ = run_client(uri, speech.stream(16000, (0,)).path, "--fast", "--model", "no-such-model")
    assert code == 1 and [e["code"] for e in events if e["type"] == "error"] == ["unknown_model"], events
    code, events, stderr = run_client(uri, noise_wav(workdir / "noise.wav"), "--fast")
    assert code == 0 and not finals(events), stderr
    waves = [
        [speech.stream(16000, (0, 1)).path, speech.stream(8000, (2,)).path],
        [speech.stream(16000, (3, 4)).path, speech.stream(48000, (1,)).path],
    ]
    received = 0
    with ThreadPoolExecutor(2) as pool:
        for wave in waves:
            for code, events, stderr in pool.map(lambda wav: run_client(uri, wav, "--fast"), wave):
                assert code == 0, stderr
                received += len(finals(events))
    assert received >= 4, f"only {received} transcripts came back"
    return received


def grafana_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel target, template variables filled in as Grafana would."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queries.append(
                    (f"{path.name} #{panel['id']} {panel['title']} [{target['refId']}]", target["expr"])
                )
    return queries


def fill(expr: str, model_regex: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$model", model_regex)


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def signal(expr: str) -> str:
    """The quantity an alert compares: the expr less its threshold, or what absent() tests.
    When healthy the alert is correctly empty; its signal must still have data."""
    expr = expr.strip()
    match = ABSENT.match(expr) or THRESHOLD.match(expr)
    assert match, f"alert expr is neither '<signal> <op> <number>' nor 'absent(<signal>)': {expr}"
    return match["signal"]


def test_latency_histograms_count_exactly_the_segments_clients_received(live: LiveRun) -> None:
    prom = live.prom
    queries = {
        "e2e": "sum(stt_e2e_latency_seconds_count)",
        "queue_wait": "sum(stt_queue_wait_seconds_count)",
        "model": "sum(stt_segment_model_seconds_count)",
        "relay": "sum(stt_relay_seconds_count)",
        "vad_hangover": "sum(stt_vad_hangover_seconds_count)",
        "enqueued": "sum(stt_segments_enqueued_total)",
        "answered": "sum(stt_segments_transcribed_total)",
        "dropped_noise": 'sum(stt_segments_dropped_total{reason="noise"})',
        "refused_unknown_model": 'sum(stt_sessions_refused_total{reason="unknown_model"})',
    }
    seen: dict[str, float | None] = {}

    def counted() -> bool:
        seen.update({name: prom.scalar(expr) for name, expr in queries.items()})
        # One observation per transcript a client printed, for the whole and each part
        # measured on delivery; the VAD hangover is measured when a segment is queued,
        # and the transcriber answers each queued segment once (with text, or empty when
        # a guard drops what the model wrote: no event for the client).
        per_transcript = all(seen[name] == live.finals for name in ("e2e", "queue_wait", "model", "relay"))
        per_segment = seen["vad_hangover"] == seen["enqueued"] == seen["answered"]
        return per_transcript and per_segment and seen["dropped_noise"] == seen["refused_unknown_model"] == 1

    # Each target is scraped on its own 1 s clock: wait for the scrapes after the last event.
    try:
        wait_until(counted, 15, "the counts to settle")
    except AssertionError:
        raise AssertionError(f"{live.finals} transcripts printed; Prometheus has {seen}") from None
    assert seen["enqueued"] is not None and seen["enqueued"] >= live.finals
    p95 = prom.scalar(
        f"histogram_quantile(0.95, sum by (le) (rate(stt_e2e_latency_seconds_bucket[{RATE_INTERVAL}])))"
    )
    assert p95 is not None and 0 < p95 < 60


def test_every_dashboard_query_returns_data(live: LiveRun) -> None:
    prom = live.prom
    # The dashboard's $model variable: label_values(stt_segments_enqueued_total, model).
    models = prom.get("label/model/values", **{"match[]": "stt_segments_enqueued_total"})
    assert models, "the $model variable would be empty"
    # As Grafana writes a multi-value selection: (a|b), regex metacharacters escaped
    # with a backslash that is itself escaped inside the PromQL string.
    model_regex = "(" + "|".join(re.sub(r"[\\^$*+?.()|{}\[\]]", r"\\\\\g<0>", m) for m in models) + ")"
    queries = grafana_queries()
    assert len(queries) >= 40
    empty, not_finite = [], []
    for where, expr in queries:
        result = prom.query(fill(expr, model_regex))  # raises with Prometheus' error if it does not parse
        if not result:
            empty.append(where)
        elif not any(math.isfinite(v) for v in values(result)):
            not_finite.append(f"{where}: {values(result)}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)
    assert not not_finite, "dashboard queries with only NaN/Inf:\n" + "\n".join(not_finite)


def test_every_alert_rule_is_evaluated_and_its_signal_has_data(live: LiveRun) -> None:
    prom = live.prom
    file_rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]

    def alerting() -> list[dict[str, Any]]:
        return [r for g in prom.get("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]

    assert sorted(r["name"] for r in alerting()) == sorted(r["alert"] for r in file_rules)

    def evaluated() -> list[dict[str, Any]] | None:
        rules = alerting()
        return rules if all(r["lastEvaluation"] != "0001-01-01T00:00:00Z" for r in rules) else None

    loaded: list[dict[str, Any]] = wait_until(evaluated, 10, "every alert rule to be evaluated")
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        prom.query(rule["query"])  # the whole expr parses and runs
        result = prom.query(signal(rule["query"]))
        assert result and any(math.isfinite(v) for v in values(result)), f"{rule['name']}: {result}"
    # Both services are up, so neither liveness alert may hold.
    for name in ("SttNoTranscriber", "SttIngestDown"):
        (expr,) = [r["query"] for r in loaded if r["name"] == name]
        assert prom.query(expr) == [], name
