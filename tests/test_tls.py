"""TLS on the ingest's port, with self-signed certificates made here by openssl: a session from the
file client (wss:// with --ca-file), a telephony stream, the page over https:// in Chromium, and a
certificate renewed under a running ingest."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import connect

from services.ingest.edge.tls import Certificates
from services.stack import CT2_DIR, POOL, Proc, Stack, start_ingest, wait_until
from tests.helpers import finals, run_client
from tests.platforms import call_frames, encode
from tests.test_calls import texts_by_track, two_speakers, with_call_id
from tests.test_web import mic_browser, playwright, wait_on_page  # noqa: F401 - fixtures used here
from tools.speech import Speech, wer

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_ingest(
    base_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Path]]:
    """An ingest serving wss:// and https:// from cert files it watches; (its URI, cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    first, first_key = make_certificate(folder / "made", "first")
    cert, key = folder / "serving.pem", folder / "serving.key"
    shutil.copy(first, cert)
    shutil.copy(first_key, key)
    uri, ingest = start_ingest(
        base_stack.redis_url, POOL, "--tls-cert", str(cert), "--tls-key", str(key), logs=folder
    )
    yield uri, cert, key
    ingest.stop()


def test_a_session_over_wss_with_the_servers_certificate_trusted(
    tls_ingest: tuple[str, Path, Path], speech: Speech
) -> None:
    uri, cert, _ = tls_ingest
    assert uri.startswith("wss://")
    stream = speech.stream(16000, (1,))
    code, events, stderr = run_client(uri, stream.path, "--fast", "--ca-file", str(cert))
    assert code == 0, stderr
    assert wer(stream.texts[0], " ".join(f["text"] for f in finals(events))) < 0.3
    code, _, stderr = run_client(uri, stream.path, "--fast")  # the system's CAs do not know it
    assert code == 1 and "cannot verify" in stderr and "--ca-file" in stderr


def test_a_two_track_twilio_call_over_wss_gives_each_tracks_timed_words(
    tls_ingest: tuple[str, Path, Path], ct2_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    """The whole way a contact centre would run it: Twilio's messages over wss://, 8 kHz mu-law
    from a real encoder, two voices on two tracks, word timings asked for in the stream URL, every
    track's words read back live from /calls/<id>/events over wss:// (CTranslate2 times words)."""
    _, cert, key = tls_ingest
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    uri, ingest = start_ingest(ct2_stack.redis_url, CT2_DIR.name, *tls, logs=tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        outbound, inbound, said_by_agent, said_by_customer = two_speakers(speech, tmp_path)
        call = f"CA{uuid.uuid4().hex}"
        tracks = {"inbound": encode(inbound, "mulaw", 8000), "outbound": encode(outbound, "mulaw", 8000)}
        frames = call_frames("twilio", tracks, 160, start=with_call_id("twilio", call))
        with connect(f"{uri}/twilio?words=1", ssl=trust, open_timeout=10) as ws:
            for frame in frames:
                ws.send(frame)
        events: list[dict[str, Any]] = []
        with connect(f"{uri}/calls/{call}/events", ssl=trust, open_timeout=10) as ws:
            events += [json.loads(message) for message in ws]
    finally:
        ingest.stop()
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    by_track = texts_by_track(events)
    wer_in, wer_out = wer(said_by_customer, by_track["inbound"]), wer(said_by_agent, by_track["outbound"])
    print(f"over wss://, WER inbound (customer) {wer_in:.3f}, outbound (agent) {wer_out:.3f}")
    assert wer_in < 0.3 and wer_out < 0.3, by_track
    for final in (e for e in events if e["type"] == "final"):
        assert final["track"] in ("inbound", "outbound") and final["words"], final
        for word in final["words"]:
            assert final["start"] - 0.01 <= word["start"] <= word["end"] <= final["end"] + 0.01
            assert 0 < word["confidence"] <= 1


def test_the_page_over_https(tls_ingest: tuple[str, Path, Path], mic_browser: Browser) -> None:  # noqa: F811
    uri, _, _ = tls_ingest
    context = mic_browser.new_context(ignore_https_errors=True)  # a self-signed certificate
    page = context.new_page()
    try:
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(uri.replace("wss://", "https://", 1) + "/")
        page.click("#start")
        finals = page.locator("#transcript li[data-testid=final] .text")
        wait_on_page(
            page, lambda: any("breakfast" in t.lower() for t in finals.all_inner_texts()), 60, "a final"
        )
        assert sockets and sockets[0].startswith("wss://"), sockets  # the page follows its origin
    finally:
        context.close()


def served_certificate(uri: str) -> str:
    """The subject the ingest presents now to a new connection."""
    host, port = uri.removeprefix("wss://").split(":")
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "localhost"],
        input=b"", capture_output=True, timeout=20,
    )  # fmt: skip
    subject = next(line for line in done.stdout.decode().splitlines() if line.startswith("subject="))
    return subject


def test_a_renewed_certificate_is_served_without_a_restart(tls_ingest: tuple[str, Path, Path]) -> None:
    uri, cert, key = tls_ingest
    assert "CN = first" in served_certificate(uri) or "CN=first" in served_certificate(uri)
    trust_first = ssl.create_default_context(cafile=str(cert))
    with connect(f"{uri}/?sample_rate=16000", ssl=trust_first, open_timeout=10) as open_before:
        assert '"ready"' in str(open_before.recv(timeout=10))
        renewed, renewed_key = make_certificate(cert.parent / "made", "second")
        shutil.copy(renewed_key, key)
        shutil.copy(renewed, cert)
        wait_until(lambda: "second" in served_certificate(uri), 20, "the renewed certificate")
        open_before.send(b"\0\0" * 160)  # the session opened before goes on
        open_before.send("EOF")
        assert '"done"' in str(open_before.recv(timeout=30))
    with connect(
        f"{uri}/?sample_rate=16000", ssl=ssl.create_default_context(cafile=str(renewed)), open_timeout=10
    ) as ws:
        assert '"ready"' in str(ws.recv(timeout=10))


def test_mismatched_or_missing_tls_files_stop_the_ingest_at_start(tmp_path: Path, base_stack: Stack) -> None:
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "two")
    base = [
        ".venv/bin/python",
        "-m",
        "services.ingest",
        "--redis-url",
        base_stack.redis_url,
        "--metrics-port",
        "0",
    ]
    for flags, says in [
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "cannot load --tls-cert"),
    ]:
        proc = Proc("ingest", [*base, "--port", "0", *flags], tmp_path / f"ingest-{time.time_ns()}.log")
        assert proc.popen.wait(30) != 0
        assert says in proc.log


async def _served_der(port: int, server_name: str | None) -> bytes:
    """The certificate a TLS server on ``port`` presents to a client that sends ``server_name``
    as SNI (None: none, as a client connecting by IP address)."""
    trust_any = ssl.create_default_context()
    trust_any.check_hostname, trust_any.verify_mode = False, ssl.CERT_NONE
    # An empty server_hostname sends no SNI.
    sni = server_name or ""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust_any, server_hostname=sni)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


def test_a_renewal_that_does_not_load_leaves_the_old_certificate_serving(tmp_path: Path) -> None:
    """A renewal half done (a new certificate beside the old key) must not break TLS: handshakes
    go on with the old pair, and the new one serves once it is whole. Real handshakes on an asyncio
    TLS server, as the ingest's, with and without SNI."""
    first, first_key = make_certificate(tmp_path / "made", "first")
    second, second_key = make_certificate(tmp_path / "made", "second")
    cert, key = tmp_path / "serving.pem", tmp_path / "serving.key"
    shutil.copy(first, cert)
    shutil.copy(first_key, key)

    def der(pem: Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(pem.read_text())

    async def scenario() -> None:
        certificates = Certificates(str(cert), str(key))
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=certificates.context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            for name in (None, "localhost"):
                assert await _served_der(port, name) == der(first)
            shutil.copy(second, cert)  # the new certificate, its key not yet written
            assert not certificates.reload_if_changed()
            for name in (None, "localhost"):
                assert await _served_der(port, name) == der(first)
            shutil.copy(second_key, key)
            assert certificates.reload_if_changed()
            for name in (None, "localhost"):
                assert await _served_der(port, name) == der(second)

    # In a thread of its own: the browser fixtures of this module keep an event loop running here.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, scenario()).result()
