"""Code shared by the file and microphone clients of the speech-to-text WebSocket API.

The protocol: the client connects to ``{uri}?sample_rate=N[&model=NAME]``, sends binary
frames of 16-bit little-endian mono PCM and then the text frame ``{"type": "eof"}``.
The server answers with JSON text frames: ``ready``, one ``final`` per speech segment,
``error``, and ``done`` once every result was sent, after which it closes with 1000.
Unknown event types are ignored; a bare ``{"text": ...}`` (older servers) is a final.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

SAMPLE_RATES = (8000, 16000, 32000, 48000)
CHUNK_DURATIONS_MS = (10, 20, 30)
EOF_MESSAGE = json.dumps({"type": "eof"})

EXIT_OK = 0
EXIT_FAILURE = 1  # the server refused, failed or could not be reached
EXIT_USAGE = 2  # bad arguments, bad input file, no usable audio device
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "exit status: 0 done, 1 connection or server failure, 2 bad arguments or audio input, 130 interrupted"
)

OPEN_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 1 << 20

AudioSender = Callable[[ClientConnection], Awaitable[None]]


def websocket_uri(value: str) -> str:
    """Argparse type: a ws:// or wss:// URI, possibly with a path and a query."""
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a ws:// or wss:// URI")
    return value


def positive_seconds(value: str) -> float:
    """Argparse type: a number of seconds greater than zero."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not greater than 0")
    return seconds


def readable_file(value: str) -> str:
    """Argparse type: a file that exists."""
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a file")
    return value


def add_stream_arguments(parser: argparse.ArgumentParser, *, timeout_s: float) -> None:
    """Add the options both clients share."""
    parser.add_argument(
        "--uri",
        type=websocket_uri,
        default="ws://localhost:8000",
        help="server address, ws:// or wss:// (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-duration",
        type=int,
        choices=CHUNK_DURATIONS_MS,
        default=20,
        help="milliseconds of audio per WebSocket frame (default: %(default)s)",
    )
    parser.add_argument("--model", help="model name to ask the server for (default: the server's)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every server event as one JSON line instead of text",
    )
    parser.add_argument(
        "--partials",
        action="store_true",
        help="ask for partial transcripts while a segment is spoken; shown in place on one line",
    )
    parser.add_argument(
        "--words",
        action="store_true",
        help="ask for each word's start, end and confidence on every final (costs model time)",
    )
    parser.add_argument(
        "--prompt",
        help="words to expect (names, products, jargon), given to the model as its initial prompt",
    )
    parser.add_argument(
        "--ca-file",
        type=readable_file,
        help="PEM certificate(s) to trust for a wss:// URI: a private CA, or the server's self-signed one",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=timeout_s,
        help="seconds to wait for the server's 'done' after the end of the audio (default: %(default)g)",
    )


def build_url(
    uri: str,
    sample_rate: int,
    model: str | None,
    *,
    partials: bool = False,
    channels: int = 1,
    roles: str | None = None,
    words: bool = False,
    prompt: str | None = None,
) -> str:
    """The session URL: ``uri`` with ``sample_rate`` (and ``model``, ``partials``, ``channels``,
    ``roles``, ``words``, ``prompt``) in its query."""
    parts = urlsplit(uri)
    ours = ("sample_rate", "model", "partials", "channels", "roles", "words", "prompt")
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key not in ours]
    query.append(("sample_rate", str(sample_rate)))
    if model:
        query.append(("model", model))
    if partials:
        query.append(("partials", "1"))
    if channels != 1:
        query.append(("channels", str(channels)))
    if roles:
        query.append(("roles", roles))
    if words:
        query.append(("words", "1"))
    if prompt:
        query.append(("prompt", prompt))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def parse_event(message: str | bytes) -> dict[str, object] | None:
    """A server event, or None for anything that is not a JSON object in a text frame."""
    if isinstance(message, bytes):
        return None
    try:
        event = json.loads(message)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def speaker(event: Mapping[str, object], channels: int) -> str | None:
    """Who said it: the channel's role, or ``channel N`` when the session has several."""
    role = event.get("role")
    if isinstance(role, str):
        return role
    channel = event.get("channel")
    return f"channel {channel}" if channels > 1 and isinstance(channel, int) else None


def format_final(event: Mapping[str, object], channels: int = 1) -> str:
    """``[  1.23 →   3.40] agent: text  (0.81 s)``; times, speaker and latency when present."""
    line = str(event.get("text", "")).strip()
    who = speaker(event, channels)
    if who is not None:
        line = f"{who}: {line}"
    start, end = _number(event.get("start")), _number(event.get("end"))
    if start is not None and end is not None:
        line = f"[{start:6.2f} → {end:6.2f}] {line}"
    latency = _number(event.get("latency"))
    if latency is not None:
        line = f"{line}  ({latency:.2f} s)"
    return line


CLEAR_LINE = "\r\x1b[K"


class Display:
    """Prints server events: finals on stdout (partials in place on one line), the rest on
    stderr, or every event as one JSON line. Keeps the finals for subtitle files."""

    def __init__(self, *, as_json: bool, partials: bool = False, channels: int = 1) -> None:
        self.as_json = as_json
        self.partials = partials
        self.channels = channels
        self.finals: list[Mapping[str, object]] = []
        self._partial_on_screen = False

    def show(self, event: Mapping[str, object]) -> None:
        kind = event.get("type")
        if kind == "final" or (kind is None and "text" in event):
            self.finals.append(event)
        if self.as_json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
            return
        if kind == "partial" and self.partials:
            print(f"{CLEAR_LINE}… {event.get('text', '')}", end="", flush=True)
            self._partial_on_screen = True
            return
        if self._partial_on_screen and kind in ("final", "error", "done"):
            print(CLEAR_LINE, end="", flush=True)
            self._partial_on_screen = False
        if kind == "final" or (kind is None and "text" in event):
            print(format_final(event, self.channels), flush=True)
        elif kind == "error":
            segment = event.get("segment")
            where = f" (segment {segment})" if segment is not None else ""
            code, message = event.get("code", "unknown"), event.get("message", "")
            print(f"error {code}: {message}{where}", file=sys.stderr)
        elif kind == "ready":
            session, model, rate = (event.get(k) for k in ("session", "model", "sample_rate"))
            print(f"connected: session {session}, model {model}, {rate} Hz", file=sys.stderr)


async def receive_events(ws: ClientConnection, display: Display) -> None:
    """Show server events until ``done``; ConnectionClosed if the server closes first."""
    while True:
        event = parse_event(await ws.recv())
        if event is None:
            continue
        display.show(event)
        if event.get("type") == "done":
            return


async def _send_then_eof(ws: ClientConnection, send_audio: AudioSender) -> None:
    await send_audio(ws)
    await ws.send(EOF_MESSAGE)


async def _converse(
    ws: ClientConnection, send_audio: AudioSender, display: Display, done_timeout: float
) -> int:
    """Send and receive concurrently; return once ``done`` came, raise on a close."""
    receiver = asyncio.create_task(receive_events(ws, display))
    sender = asyncio.create_task(_send_then_eof(ws, send_audio))
    try:
        await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
        if not receiver.done():
            failure = sender.exception()
            if failure is not None and not isinstance(failure, ConnectionClosed):
                raise failure
            # All audio and the EOF are sent (or the connection is closing, which
            # the receiver reports): only the last results are still to come.
            try:
                async with asyncio.timeout(done_timeout):
                    await receiver
            except TimeoutError:
                print(
                    f"no 'done' from the server within {done_timeout:g} s after the end of the audio",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        receiver.result()
        return EXIT_OK
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)


def _report_close(exc: ConnectionClosed) -> int:
    if exc.rcvd is None:
        print("connection lost: closed without a close frame", file=sys.stderr)
        return EXIT_FAILURE
    if exc.rcvd.code == 1000:
        # Older servers close normally instead of sending "done".
        print(f"server closed the connection before 'done': {exc.rcvd}", file=sys.stderr)
        return EXIT_OK
    print(f"server closed the connection: {exc.rcvd}", file=sys.stderr)
    return EXIT_FAILURE


def _describe_refusal(exc: InvalidStatus) -> str:
    response = exc.response
    detail = bytes(response.body).decode("utf-8", "replace").strip().splitlines()
    reason = f"HTTP {response.status_code} {response.reason_phrase}"
    return f"{reason}: {detail[0][:200]}" if detail else reason


async def stream_session(
    url: str, send_audio: AudioSender, display: Display, done_timeout: float, ca_file: str | None = None
) -> int:
    """Run one session against ``url`` and return the process exit status.

    ``send_audio`` sends the PCM frames; the EOF frame is sent after it returns. ``ca_file``:
    the certificates to trust for wss:// instead of the system's. Connection failures and abnormal
    closes are reported in one line on stderr.
    """
    # wss://: trust the system's CAs, or only ``ca_file``'s certificates when it is given.
    tls = ssl.create_default_context(cafile=ca_file) if url.startswith("wss://") else None
    try:
        ws = await connect(url, open_timeout=OPEN_TIMEOUT_S, max_size=MAX_MESSAGE_BYTES, ssl=tls)
    except InvalidStatus as exc:
        print(f"server refused the connection: {_describe_refusal(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except InvalidHandshake as exc:
        print(f"WebSocket handshake with {url} failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ssl.SSLCertVerificationError as exc:
        print(
            f"cannot verify {url}'s certificate: {exc.verify_message} (--ca-file trusts one)", file=sys.stderr
        )
        return EXIT_FAILURE
    except TimeoutError:
        print(f"timed out connecting to {url}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # asyncio words a refusal "Connect call failed ('127.0.0.1', 8000)".
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else exc.strerror or exc
        print(f"cannot connect to {url}: {why}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return await _converse(ws, send_audio, display, done_timeout)
    except ConnectionClosed as exc:
        return _report_close(exc)
    finally:
        # A normal close, also when interrupted (``async with`` would send 1011).
        await ws.close()


async def run_session(
    args: argparse.Namespace,
    sample_rate: int,
    send_audio: AudioSender,
    *,
    channels: int = 1,
    roles: str | None = None,
) -> tuple[int, Display]:
    """One session as the options of ``add_stream_arguments`` in ``args`` ask for it: the exit
    status, and the display (which keeps the finals)."""
    url = build_url(
        args.uri,
        sample_rate,
        args.model,
        partials=args.partials,
        channels=channels,
        roles=roles,
        words=args.words,
        prompt=args.prompt,
    )
    display = Display(as_json=args.json, partials=args.partials, channels=channels)
    return await stream_session(url, send_audio, display, args.timeout, args.ca_file), display
