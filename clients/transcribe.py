"""Transcribe audio files over the server's OpenAI API and write their transcripts.

python clients/transcribe.py --uri http://localhost:8000 audio.wav talk.mp3 --output srt --out-dir subs/

Each file is sent whole as one ``POST /v1/audio/transcriptions`` (multipart, the way OpenAI's
SDK sends it) with ``stream=true``: the server answers with one ``transcript.text.delta`` event
per speech segment, which carries the segment's ``start`` and ``end`` (this server's extension),
and a ``transcript.text.done``. The deltas move a progress bar on stderr (a terminal only) and
give the cues of SubRip, WebVTT and JSON output; nothing is asked twice.
"""

from __future__ import annotations

import argparse
import http.client
import json
import mimetypes
import os
import ssl
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import soundfile
import subtitles
from common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    positive_seconds,
    readable_file,
)
from tqdm import tqdm  # type: ignore[import-untyped]

PATH = "/v1/audio/transcriptions"
OUTPUTS = ("txt", "srt", "vtt", "json")
API_KEY_ENV = "STT_API_KEY"
CHUNK_BYTES = 1 << 16  # of the file, read as it is sent
MAX_LINE_BYTES = 1 << 20  # of one line of the event stream
MAX_ERROR_BYTES = 1 << 16  # of an error response's body


class Failed(Exception):
    """One file could not be transcribed: the line that says why."""


@dataclass
class Transcript:
    """What the stream told of one file."""

    segments: list[dict[str, Any]] = field(default_factory=list)  # start, end, text (, words)
    text: str = ""
    duration: float | None = None


def http_uri(value: str) -> str:
    """Argparse type: an http:// or https:// URI, the server's root."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URI")
    return value.rstrip("/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Transcribe audio files (any format the server decodes: WAV, FLAC, MP3, OGG ...) "
        "over its OpenAI API (POST /v1/audio/transcriptions) and write one transcript per file.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="the audio files")
    parser.add_argument(
        "--uri",
        type=http_uri,
        default="http://localhost:8000",
        help="the server, http:// or https:// (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV, ""),
        help=f"API key, sent as 'Authorization: Bearer KEY' (default: none) [env {API_KEY_ENV}]",
    )
    parser.add_argument(
        "--model",
        default="whisper-1",
        help="OpenAI's model names are the server's default model; a pool's name (swift, prime ...) "
        "chooses that one (default: %(default)s)",
    )
    parser.add_argument(
        "--language", choices=("hi", "en"), help="the audio's language (default: the server's)"
    )
    parser.add_argument(
        "--prompt", help="words to expect (names, products, jargon), given to the model as its prompt"
    )
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="txt",
        help="txt (the text), srt or vtt (subtitles), json (text, duration, segments) (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="write each transcript to DIR/NAME.EXT (NAME: the file's, EXT: --output's) instead of stdout",
    )
    parser.add_argument(
        "--words",
        action="store_true",
        help="also each word's start and end in the json output (costs model time)",
    )
    parser.add_argument(
        "--ca-file",
        type=readable_file,
        metavar="CA.pem",
        help="PEM certificate(s) to trust for an https:// URI instead of the system's",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="S",
        default=300.0,
        help="seconds to wait for the server at any one point of a file (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    if args.words and args.output != "json":
        parser.error("--words: only --output json carries words")
    return args


def request_fields(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The form's fields besides the file, named as OpenAI's SDK names them."""
    fields = [("model", args.model), ("response_format", "json"), ("stream", "true")]
    if args.language:
        fields.append(("language", args.language))
    if args.prompt:
        fields.append(("prompt", args.prompt))
    if args.words:
        fields.append(("timestamp_granularities[]", "word"))
    return fields


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def multipart(fields: Iterable[tuple[str, str]], path: Path, boundary: str) -> tuple[bytes, bytes, int]:
    """A multipart/form-data body around the file: the bytes before it and after it, and the
    whole body's length (the file is read as it is sent)."""
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quoted(path.name)}"\r\n'
        f"Content-Type: {kind}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, len(head) + path.stat().st_size + len(tail)


def _body(head: bytes, path: Path, tail: bytes) -> Iterator[bytes]:
    yield head
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
    yield tail


def events(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's ``data:`` lines (``[DONE]`` ends it)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue  # event:, id:, a comment; or a blank line with no data before it
        text, data = "\n".join(data), []
        if text.startswith("[DONE]"):
            return
        try:
            event = json.loads(text)
        except ValueError:
            raise Failed(f"the server sent an event that is not JSON: {text[:80]!r}") from None
        if isinstance(event, dict):
            yield event


def _lines(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while line := response.readline(MAX_LINE_BYTES):
        yield line


def _message(error: object) -> str | None:
    """OpenAI's error object's message."""
    message = error.get("message") if isinstance(error, Mapping) else None
    return message if isinstance(message, str) and message else None


def _error_message(body: bytes) -> str:
    """The message of an error response's body (OpenAI's shape), or its first line."""
    try:
        message = _message(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        message = None
    lines = body.decode("utf-8", "replace").strip().splitlines()
    return message or (lines[0][:200] if lines else "(no body)")


def read_stream(stream: Iterable[dict[str, Any]], progress: Any) -> Transcript:
    """The deltas' segments and the done event's text; the bar moves to each delta's end."""
    transcript = Transcript()
    for event in stream:
        kind = event.get("type")
        if "error" in event:
            raise Failed(f"server error: {_message(event['error']) or 'no message'}")
        if kind == "transcript.text.delta":
            segment = {k: event[k] for k in ("start", "end", "words") if k in event}
            transcript.segments.append(segment | {"text": str(event.get("delta", "")).strip()})
            end = event.get("end")
            if isinstance(end, int | float) and end > progress.n:
                progress.update(end - progress.n)
        elif kind == "transcript.text.done":
            transcript.text = str(event.get("text", ""))
            duration = event.get("duration")
            transcript.duration = float(duration) if isinstance(duration, int | float) else None
            return transcript
    raise Failed("the stream ended before transcript.text.done")


def render(transcript: Transcript, output: str) -> str:
    """The transcript as ``output`` asks: txt, srt, vtt or json."""
    segments = sorted(transcript.segments, key=lambda s: float(s.get("start", 0.0)))
    if output == "txt":
        return transcript.text + "\n"
    if output in ("srt", "vtt"):
        return subtitles.render(segments, f".{output}")
    body = {"text": transcript.text, "duration": transcript.duration, "segments": segments}
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def duration_of(path: Path) -> float | None:
    """The file's seconds, when soundfile reads its header (else the bar has no end)."""
    try:
        return float(soundfile.info(str(path)).duration)
    except (RuntimeError, OSError, ValueError, TypeError):
        return None


def _progress(path: Path) -> Any:
    total = duration_of(path)
    if total is None:
        return tqdm(desc=path.name, bar_format="{desc}: {n:.1f} s [{elapsed}]", disable=None)
    known = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
    return tqdm(total=round(total, 1), desc=path.name, bar_format=known, disable=None)


def transcribe(path: Path, args: argparse.Namespace, tls: ssl.SSLContext | None) -> Transcript:
    """One file through ``POST /v1/audio/transcriptions``; Failed says why it could not be."""
    boundary = uuid.uuid4().hex
    head, tail, length = multipart(request_fields(args), path, boundary)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(length),
        "Accept": "text/event-stream",
    }
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    request = urllib.request.Request(
        args.uri + PATH, data=_body(head, path, tail), headers=headers, method="POST"
    )
    with _progress(path) as progress:
        try:
            with urllib.request.urlopen(request, timeout=args.timeout, context=tls) as response:
                transcript = read_stream(events(_lines(response)), progress)
        except urllib.error.HTTPError as error:
            raise Failed(f"HTTP {error.code}: {_error_message(error.read(MAX_ERROR_BYTES))}") from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise Failed(f"cannot verify {args.uri}'s certificate: {reason.verify_message}") from None
            why = "connection refused" if isinstance(reason, ConnectionRefusedError) else reason
            raise Failed(f"cannot connect to {args.uri}: {why}") from None
        except TimeoutError:
            raise Failed(f"no answer from {args.uri} within {args.timeout:g} s") from None
        except (http.client.HTTPException, ConnectionError) as error:
            raise Failed(f"connection to {args.uri} lost: {error!r}") from None
        if progress.total is not None:
            progress.update(progress.total - progress.n)
    return transcript


def _output_paths(args: argparse.Namespace) -> dict[Path, Path] | None:
    """Where each file's transcript goes with --out-dir (None: stdout)."""
    if args.out_dir is None:
        return None
    paths = {path: args.out_dir / f"{path.stem}.{args.output}" for path in args.files}
    if len(set(paths.values())) < len(paths):
        raise Failed("two files would write the same transcript name in --out-dir")
    return paths


def write(path: Path, text: str, args: argparse.Namespace, outputs: dict[Path, Path] | None) -> None:
    """A file's transcript: to its file in --out-dir, else to stdout (with several files, each
    after a ``==> FILE <==`` line; json as one line per file, its name in ``file``)."""
    if outputs is not None:
        outputs[path].parent.mkdir(parents=True, exist_ok=True)
        outputs[path].write_text(text, encoding="utf-8")
    elif len(args.files) == 1:
        sys.stdout.write(text)
    elif args.output == "json":
        sys.stdout.write(json.dumps({"file": str(path)} | json.loads(text), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(f"==> {path} <==\n{text}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [path for path in args.files if not path.is_file()]
    for path in missing:
        print(f"{path}: no such file", file=sys.stderr)
    try:
        outputs = _output_paths(args)
        tls = ssl.create_default_context(cafile=args.ca_file) if args.uri.startswith("https://") else None
    except (Failed, OSError, ssl.SSLError) as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    if missing:
        return EXIT_USAGE
    status = EXIT_OK
    for path in args.files:
        try:
            write(path, render(transcribe(path, args, tls), args.output), args, outputs)
        except Failed as failure:
            print(f"{path}: {failure}", file=sys.stderr)
            status = EXIT_FAILURE
        except OSError as error:
            print(f"{path}: {error}", file=sys.stderr)
            status = EXIT_FAILURE
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    sys.exit(main())
