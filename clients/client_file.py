"""Stream a WAV file to the speech-to-text WebSocket server and print the transcript.

python clients/client_file.py --uri ws://localhost:8000 --wav-path audio.wav
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import wave
from pathlib import Path

import subtitles
from common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    SAMPLE_RATES,
    add_stream_arguments,
    run_session,
)
from websockets.asyncio.client import ClientConnection

SAMPLE_WIDTH_BYTES = 2


class UnsupportedWav(Exception):
    """The file is not a 16-bit PCM WAV with the channels asked for, at a rate the server accepts."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stream a 16-bit PCM WAV file (8, 16, 32 or 48 kHz; mono, or stereo with "
        "--channels 2) to the speech-to-text WebSocket server and print one line per speech segment.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--wav-path", type=Path, required=True, help="the WAV file")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="send as fast as the server accepts instead of at real-time pace",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: a stereo WAV, each channel transcribed on its own (e.g. agent and customer)",
    )
    parser.add_argument("--roles", help="names for the channels, comma-separated, e.g. agent,customer")
    parser.add_argument(
        "--output",
        type=subtitle_path,
        help="also write the transcript with its times to this .srt, .vtt or .jsonl file",
    )
    add_stream_arguments(parser, timeout_s=60.0)
    return parser.parse_args(argv)


def open_wav(path: Path, channels: int = 1) -> wave.Wave_read:
    """Open ``path`` for reading; UnsupportedWav says what is wrong with its format."""
    with path.open("rb") as file:
        header = file.read(12)
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise UnsupportedWav("not a WAV file (no RIFF/WAVE header)")
    try:
        wav = wave.open(str(path), "rb")  # noqa: SIM115 - the caller closes it
    except (wave.Error, EOFError) as exc:
        raise UnsupportedWav(f"unsupported WAV encoding ({exc}); need 16-bit PCM") from None
    problems = []
    if wav.getnchannels() != channels:
        have = wav.getnchannels()
        hint = ", or pass --channels 2 to send both" if have == 2 else ""
        problems.append(f"{have} channels, need {'mono' if channels == 1 else f'{channels}'}{hint}")
    if wav.getsampwidth() != SAMPLE_WIDTH_BYTES:
        problems.append(f"{8 * wav.getsampwidth()}-bit samples, need 16-bit PCM")
    if wav.getframerate() not in SAMPLE_RATES:
        rates = ", ".join(str(rate) for rate in SAMPLE_RATES)
        problems.append(f"{wav.getframerate()} Hz, need one of {rates} Hz")
    if problems:
        wav.close()
        raise UnsupportedWav("; ".join(problems))
    return wav


def conversion_hint(path: Path) -> str:
    """The ffmpeg command that turns ``path`` into a file this client accepts."""
    output = path.with_name(f"{path.stem}_16k_mono.wav")
    others = ", ".join(str(rate) for rate in SAMPLE_RATES if rate != 16000)
    return (
        f"convert it with: ffmpeg -i {shlex.quote(str(path))} -ac 1 -ar 16000 "
        f"-sample_fmt s16 {shlex.quote(str(output))}   (-ar may also be {others})"
    )


async def send_wav(ws: ClientConnection, wav: wave.Wave_read, *, chunk_ms: int, paced: bool) -> None:
    """Send the PCM in ``chunk_ms`` frames; paced: each one when its audio would have ended."""
    rate, frame_bytes = wav.getframerate(), SAMPLE_WIDTH_BYTES * wav.getnchannels()
    chunk_frames = rate * chunk_ms // 1000
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames_sent = 0
    while chunk := wav.readframes(chunk_frames):  # all channels, interleaved
        frames_sent += len(chunk) // frame_bytes
        if paced:
            # Against the wall clock, so the time spent sending never adds up to drift.
            delay = started + frames_sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(chunk)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        wav = open_wav(args.wav_path, args.channels)
    except OSError as exc:
        print(f"{args.wav_path}: cannot read it: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnsupportedWav as exc:
        print(f"{args.wav_path}: {exc}", file=sys.stderr)
        print(conversion_hint(args.wav_path), file=sys.stderr)
        return EXIT_USAGE
    with wav:

        async def send_audio(ws: ClientConnection) -> None:
            await send_wav(ws, wav, chunk_ms=args.chunk_duration, paced=not args.fast)

        session = run_session(args, wav.getframerate(), send_audio, channels=args.channels, roles=args.roles)
        try:
            status, display = asyncio.run(session)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.output is not None:
        args.output.write_text(subtitles.render(display.finals, args.output.suffix.lower()), encoding="utf-8")
    return status


def subtitle_path(value: str) -> Path:
    try:
        return subtitles.output_path(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
