"""The standalone clients, run as real processes against a small fake server on port 0."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
FILE_CLIENT = CLIENTS / "client_file.py"
MIC_CLIENT = CLIENTS / "client_mic.py"
CLIENT_ENV = {**os.environ, "PYTHONUTF8": "1"}
DEADLINE_S = 10.0

FINALS = [
    {"type": "final", "text": "namaste duniya", "segment": 0, "start": 0.1, "end": 0.4, "latency": 0.25},
    {"type": "final", "text": "aap kaise ho", "segment": 1, "start": 1.5, "end": 3.25, "latency": 0.5},
]


@dataclass
class Seen:
    """What the fake server saw of one connection."""

    path: str = ""
    chunks: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    eof: bool = False
    close_code: int | None = None
    audio_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[[ServerConnection, Seen], Awaitable[None]]


def write_wav(path: Path, frames: bytes, *, rate: int = 16000, channels: int = 1, width: int = 2) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)


def pcm(samples: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-3000, 3000, samples, dtype=np.int16).astype("<i2").tobytes()


async def run_client(script: Path, *args: str, env: dict[str, str] = CLIENT_ENV) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def receive_audio(ws: ServerConnection, seen: Seen) -> None:
    """Record binary frames until the client's EOF (or its close)."""
    loop = asyncio.get_running_loop()
    async for message in ws:
        if isinstance(message, bytes):
            seen.chunks.append(message)
            seen.arrivals.append(loop.time())
            seen.audio_arrived.set()
        elif json.loads(message) == {"type": "eof"}:
            seen.eof = True
            return


async def speak_protocol(ws: ServerConnection, seen: Seen) -> None:
    await ws.send(json.dumps({"type": "ready", "session": "s1", "model": "fake", "sample_rate": 16000}))
    await receive_audio(ws, seen)
    if seen.eof:
        await ws.send(json.dumps(FINALS[0]))
        await ws.send(json.dumps({"type": "progress", "note": "a type this client does not know"}))
        await ws.send(json.dumps(FINALS[1]))
        await ws.send(json.dumps({"type": "done"}))


async def try_again_later(ws: ServerConnection, seen: Seen) -> None:
    await ws.close(1013, "try again later")


async def fail_after_eof(ws: ServerConnection, seen: Seen) -> None:
    await ws.send(json.dumps({"type": "ready", "session": "s1", "model": "fake", "sample_rate": 16000}))
    await receive_audio(ws, seen)
    await ws.send(json.dumps({"type": "error", "code": "model_failed", "message": "out of memory"}))
    await ws.close(1011, "transcriber failed")


async def never_done(ws: ServerConnection, seen: Seen) -> None:
    await receive_audio(ws, seen)
    await ws.wait_closed()


async def oriserve_style(ws: ServerConnection, seen: Seen) -> None:
    """Older servers: no ready, no done, just {"text": ...}, then a normal close."""
    await receive_audio(ws, seen)
    await ws.send(json.dumps({"text": "purana server"}))


async def with_server(
    handler: Handler, scenario: Callable[[str, Seen], Awaitable[None]], *, refuse: bool = False
) -> Seen:
    """Serve ``handler`` on a free port and run ``scenario(uri, seen)`` against it."""
    seen = Seen()

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.path = ws.request.path
        try:
            await handler(ws, seen)
        finally:
            await ws.close()
            seen.close_code = ws.close_code
            seen.closed.set()

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if refuse:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "all transcribers busy\n")
        return None

    # max_queue=None: a handler that closes without reading must still read the client's close
    # frame behind the audio it did not consume, or the close handshake waits out close_timeout.
    async with serve(handle, "127.0.0.1", 0, process_request=process_request, max_queue=None) as server:
        port = server.sockets[0].getsockname()[1]
        await scenario(f"ws://127.0.0.1:{port}", seen)
    return seen


def file_client_against(
    handler: Handler, *args: str, refuse: bool = False, uri_path: str = ""
) -> tuple[Seen, tuple[int, str, str]]:
    """Run the file client with ``args`` against ``handler`` (``--uri``: its server, plus
    ``uri_path``): what the server saw, and the client's (exit status, stdout, stderr)."""
    result: list[tuple[int, str, str]] = []

    async def scenario(uri: str, seen: Seen) -> None:
        result.append(await run_client(FILE_CLIENT, "--uri", uri + uri_path, *args))

    seen = asyncio.run(with_server(handler, scenario, refuse=refuse))
    return seen, result[0]


@pytest.fixture
def speech_wav(tmp_path: Path) -> tuple[Path, bytes]:
    """0.5 s plus 5 samples at 16 kHz: fifty 10 ms chunks and a short last one."""
    frames = pcm(8005)
    path = tmp_path / "speech.wav"
    write_wav(path, frames)
    return path, frames


# --- bad input files ------------------------------------------------------------------------


def make_stereo(path: Path) -> None:
    write_wav(path, pcm(3200), channels=2)


def make_24_bit(path: Path) -> None:
    write_wav(path, bytes(4800), width=3)


def make_44k(path: Path) -> None:
    write_wav(path, pcm(4410), rate=44100)


def make_float(path: Path) -> None:
    soundfile.write(str(path), np.zeros(1600, dtype=np.float32), 16000, subtype="FLOAT")


def make_text(path: Path) -> None:
    path.write_text("this is not audio\n")


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (make_stereo, "2 channels, need mono"),
        (make_24_bit, "24-bit samples, need 16-bit PCM"),
        (make_44k, "44100 Hz, need one of 8000, 16000, 32000, 48000 Hz"),
        (make_float, "unsupported WAV encoding"),
        (make_text, "not a WAV file"),
    ],
)
def test_file_client_rejects_unsupported_wav(
    tmp_path: Path, make: Callable[[Path], None], complaint: str
) -> None:
    bad = tmp_path / "bad.wav"
    make(bad)
    status, out, err = asyncio.run(
        run_client(FILE_CLIENT, "--uri", "ws://127.0.0.1:1", "--wav-path", str(bad))
    )
    assert status == 2
    assert out == ""
    assert complaint in err
    assert "ffmpeg -i " in err and "-ac 1 -ar 16000 -sample_fmt s16" in err
    assert "Traceback" not in err


def test_file_client_reports_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    status, _, err = asyncio.run(run_client(FILE_CLIENT, "--wav-path", str(missing)))
    assert status == 2
    assert "No such file" in err and "Traceback" not in err


# --- against a fake server ------------------------------------------------------------------


def test_file_client_streams_pcm_and_prints_finals(speech_wav: tuple[Path, bytes]) -> None:
    path, frames = speech_wav
    seen, (status, out, err) = file_client_against(
        speak_protocol,
        *("--wav-path", str(path), "--chunk-duration", "10", "--model", "swift", "--fast"),
        uri_path="/asr?token=abc",
    )
    assert status == 0, err
    assert seen.path == "/asr?token=abc&sample_rate=16000&model=swift"
    assert b"".join(seen.chunks) == frames
    assert [len(chunk) for chunk in seen.chunks] == [320] * 50 + [10]
    assert seen.eof and seen.close_code == 1000
    assert out.splitlines() == [
        "[  0.10 →   0.40] namaste duniya  (0.25 s)",
        "[  1.50 →   3.25] aap kaise ho  (0.50 s)",
    ]
    assert "session s1" in err


def test_file_client_json_prints_every_event(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    _, (status, out, err) = file_client_against(speak_protocol, "--wav-path", str(path), "--fast", "--json")
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [event["type"] for event in events] == ["ready", "final", "progress", "final", "done"]
    assert [events[1], events[3]] == FINALS


def test_file_client_paces_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "third.wav"
    write_wav(path, pcm(4800), rate=16000)  # 0.3 s: ten 30 ms chunks
    seen, (status, _, err) = file_client_against(
        speak_protocol, "--wav-path", str(path), "--chunk-duration", "30"
    )
    assert status == 0, err
    assert len(seen.chunks) == 10
    # The first chunk leaves 30 ms in, the last one 300 ms in: 270 ms apart.
    assert 0.2 < seen.arrivals[-1] - seen.arrivals[0] < 1.0


def test_file_client_reports_close_code_and_reason(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    _, (status, out, err) = file_client_against(try_again_later, "--wav-path", str(path), "--fast")
    assert status == 1
    assert out == ""
    assert "1013" in err and "try again later" in err
    assert "Traceback" not in err


def test_file_client_prints_error_event_then_close(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    _, (status, _, err) = file_client_against(fail_after_eof, "--wav-path", str(path), "--fast")
    assert status == 1
    assert "error model_failed: out of memory" in err
    assert "1011" in err and "transcriber failed" in err


def test_file_client_reports_http_refusal(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    _, (status, _, err) = file_client_against(speak_protocol, "--wav-path", str(path), "--fast", refuse=True)
    assert status == 1
    assert "HTTP 503" in err and "all transcribers busy" in err
    assert "Traceback" not in err


def test_file_client_reports_connection_refused(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, _, err = asyncio.run(
        run_client(FILE_CLIENT, "--uri", f"ws://127.0.0.1:{port}", "--wav-path", str(path))
    )
    assert status == 1
    assert f"cannot connect to ws://127.0.0.1:{port}/?sample_rate=16000: connection refused" in err
    assert "Traceback" not in err


def test_file_client_gives_up_waiting_for_done(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    seen, (status, _, err) = file_client_against(
        never_done, "--wav-path", str(path), "--fast", "--timeout", "0.3"
    )
    assert seen.eof
    assert status == 1
    assert "no 'done' from the server within 0.3 s" in err


def test_file_client_accepts_older_servers(speech_wav: tuple[Path, bytes]) -> None:
    path, _ = speech_wav
    _, (status, out, _) = file_client_against(oriserve_style, "--wav-path", str(path), "--fast")
    assert status == 0
    assert out.splitlines() == ["purana server"]


def test_file_client_ctrl_c_closes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    write_wav(path, pcm(16000 * 30))  # 30 s at real-time pace: interrupted long before the end
    result: list[tuple[int | None, str]] = []

    async def scenario(uri: str, seen: Seen) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *(str(FILE_CLIENT), "--uri", uri, "--wav-path", str(path)),
            stderr=asyncio.subprocess.PIPE,
            env=CLIENT_ENV,
            # A shell starts background jobs (`make test &`) with SIGINT ignored, and children
            # inherit that: give the client the terminal's default, as when a user runs it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        async with asyncio.timeout(DEADLINE_S):
            await seen.audio_arrived.wait()
            proc.send_signal(signal.SIGINT)
            _, err = await proc.communicate()
            await seen.closed.wait()
        result.append((proc.returncode, err.decode()))

    seen = asyncio.run(with_server(speak_protocol, scenario))
    status, err = result[0]
    assert status == 130
    assert "interrupted" in err and "Traceback" not in err
    assert not seen.eof
    assert seen.close_code == 1000


# --- microphone client ----------------------------------------------------------------------


def test_mic_client_help() -> None:
    status, out, _ = asyncio.run(run_client(MIC_CLIENT, "--help"))
    assert status == 0
    for option in ("--list-devices", "--device-index", "--sample-rate", "--chunk-duration", "--model"):
        assert option in out


def test_mic_client_lists_devices_or_says_why_not() -> None:
    status, out, err = asyncio.run(run_client(MIC_CLIENT, "--list-devices"))
    assert "Traceback" not in err
    if status == 0:
        assert out.splitlines()[0].startswith("index")
    else:
        assert status == 2
        assert "no audio input device found" in err or "PyAudio is not installed" in err


def test_mic_client_rejects_unknown_device() -> None:
    status, _, err = asyncio.run(
        run_client(MIC_CLIENT, "--uri", "ws://127.0.0.1:1", "--device-index", "9999")
    )
    assert status == 2
    assert "Traceback" not in err
    assert "no audio device 9999" in err or "PyAudio is not installed" in err


@pytest.fixture
def pulse_env() -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a null sink ``fake`` whose monitor is the default source.

    What ``paplay --device=fake`` plays, PortAudio records from its default input: a real
    microphone in real time, without a sound card.
    """
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if not shutil.which(tool)]
    assert not missing, f"{missing} missing: deploy/install-system-deps.sh installs them"
    # A short directory: the server's socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="pulse-") as runtime:
        env = {**CLIENT_ENV, "XDG_RUNTIME_DIR": runtime, "HOME": runtime}
        server = subprocess.Popen(
            [
                *("pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--log-target=stderr"),
                "--load=module-native-protocol-unix auth-anonymous=1",
                "--load=module-null-sink sink_name=fake",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + DEADLINE_S
            while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
                assert server.poll() is None, "pulseaudio exited"
                assert time.monotonic() < deadline, "pulseaudio did not start"
                time.sleep(0.05)
            subprocess.run(["pactl", "set-default-source", "fake.monitor"], env=env, check=True)
            yield env
        finally:
            server.terminate()
            server.wait(DEADLINE_S)


def test_mic_client_streams_a_fake_microphone_until_ctrl_c(tmp_path: Path, pulse_env: dict[str, str]) -> None:
    tone = tmp_path / "tone.wav"
    t = np.arange(8000) / 16000
    write_wav(tone, (16000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
    result: list[tuple[int | None, str, str]] = []

    async def scenario(uri: str, seen: Seen) -> None:
        mic = await asyncio.create_subprocess_exec(
            *(sys.executable, str(MIC_CLIENT), "--uri", uri, "--chunk-duration", "30"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=pulse_env,
        )
        try:
            async with asyncio.timeout(DEADLINE_S):
                await seen.audio_arrived.wait()
                player = await asyncio.create_subprocess_exec(
                    "paplay", "--device=fake", str(tone), env=pulse_env
                )
                await player.wait()
                mic.send_signal(signal.SIGINT)
                out, err = await mic.communicate()
        finally:
            if mic.returncode is None:
                mic.kill()
                await mic.wait()
        result.append((mic.returncode, out.decode(), err.decode()))

    seen = asyncio.run(with_server(speak_protocol, scenario))
    status, out, err = result[0]
    assert status == 0, err
    assert seen.path == "/?sample_rate=16000"
    assert {len(chunk) for chunk in seen.chunks[:-1]} == {960}
    assert seen.eof and seen.close_code == 1000
    recorded = np.frombuffer(b"".join(seen.chunks), dtype="<i2")
    assert np.abs(recorded).max() > 8000  # the tone came through, not just the sink's silence
    assert out.splitlines() == [
        "[  0.10 →   0.40] namaste duniya  (0.25 s)",
        "[  1.50 →   3.25] aap kaise ho  (0.50 s)",
    ]
    assert "stopping" in err and "Traceback" not in err


def test_mic_client_lists_the_fake_microphone(pulse_env: dict[str, str]) -> None:
    status, out, err = asyncio.run(run_client(MIC_CLIENT, "--list-devices", env=pulse_env))
    assert status == 0, err
    assert "(default)" in out
