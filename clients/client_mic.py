"""Stream the microphone to the speech-to-text WebSocket server and print the transcript.

python clients/client_mic.py --uri ws://localhost:8000    (Ctrl-C to stop)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from common import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    SAMPLE_RATES,
    add_stream_arguments,
    run_session,
)
from websockets.asyncio.client import ClientConnection

# Audio waiting to be sent while the connection is slow; beyond this, chunks are dropped.
MAX_BUFFERED_S = 5.0


class NoMicrophone(Exception):
    """PyAudio is missing, or the input device cannot be found or opened."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stream the microphone (16-bit PCM mono) to the speech-to-text WebSocket "
        "server and print one line per speech segment. Ctrl-C stops: the client sends the "
        "end of the audio and waits for the last results; a second Ctrl-C quits at once. "
        "Needs PyAudio (pip install pyaudio; on Debian/Ubuntu apt-get install portaudio19-dev first).",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")
    parser.add_argument(
        "--device-index",
        type=int,
        help="input device index from --list-devices (default: the system's default input)",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=SAMPLE_RATES,
        default=16000,
        help="capture and stream at this rate in Hz (default: %(default)s)",
    )
    add_stream_arguments(parser, timeout_s=30.0)
    return parser.parse_args(argv)


def import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError:
        raise NoMicrophone(
            "PyAudio is not installed: pip install pyaudio "
            "(on Debian/Ubuntu, apt-get install portaudio19-dev first)"
        ) from None
    return pyaudio


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what PortAudio's ALSA and JACK back-ends print to fd 2 while probing devices."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def open_pyaudio(pyaudio: Any) -> Iterator[Any]:
    try:
        with native_stderr_silenced():
            audio = pyaudio.PyAudio()
    except OSError as exc:
        raise NoMicrophone(f"cannot start PortAudio: {exc}") from None
    try:
        yield audio
    finally:
        audio.terminate()


def input_devices(audio: Any) -> list[dict[str, Any]]:
    devices = (audio.get_device_info_by_index(i) for i in range(audio.get_device_count()))
    return [info for info in devices if info["maxInputChannels"] > 0]


def list_devices(audio: Any) -> int:
    devices = input_devices(audio)
    if not devices:
        raise NoMicrophone("no audio input device found")
    try:
        default_index = audio.get_default_input_device_info()["index"]
    except OSError:
        default_index = None
    print("index  channels  default rate  name")
    for info in devices:
        mark = "  (default)" if info["index"] == default_index else ""
        print(
            f"{info['index']:5d}  {info['maxInputChannels']:8d}  "
            f"{info['defaultSampleRate']:9.0f} Hz  {info['name']}{mark}"
        )
    return EXIT_OK


def find_device(audio: Any, index: int | None) -> dict[str, Any]:
    """The input device at ``index``, or the default one."""
    try:
        info: dict[str, Any] = (
            audio.get_default_input_device_info() if index is None else audio.get_device_info_by_index(index)
        )
    except (OSError, ValueError):
        where = "no default audio input device" if index is None else f"no audio device {index}"
        raise NoMicrophone(f"{where} (see --list-devices)") from None
    if info["maxInputChannels"] < 1:
        raise NoMicrophone(f"device {info['index']} ({info['name']}) has no input channels")
    return info


class ChunkQueue:
    """Carries audio chunks from PortAudio's thread to the event loop, at most ``limit``.

    Chunks that arrive while ``limit`` are waiting are dropped (and counted): a slow
    connection must not make the client's memory grow. ``close`` ends the stream.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.dropped = 0

    def put_threadsafe(self, chunk: bytes) -> None:
        self._loop.call_soon_threadsafe(self._put, chunk)

    def _put(self, chunk: bytes) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._limit:
            if not self.dropped:
                print("warning: the connection is too slow, dropping audio", file=sys.stderr)
            self.dropped += 1
            return
        self._queue.put_nowait(chunk)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def send_all(self, ws: ClientConnection) -> None:
        """Send every chunk until ``close``."""
        while (chunk := await self._queue.get()) is not None:
            await ws.send(chunk)


@contextlib.contextmanager
def capture(
    pyaudio: Any, audio: Any, device: dict[str, Any], rate: int, chunk_frames: int, chunks: ChunkQueue
) -> Iterator[None]:
    """Record 16-bit mono from ``device`` into ``chunks`` while the context is open."""

    def on_audio(data: bytes, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        chunks.put_threadsafe(data)
        return None, pyaudio.paContinue

    try:
        with native_stderr_silenced():
            stream = audio.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=rate,
                input=True,
                input_device_index=device["index"],
                frames_per_buffer=chunk_frames,
                stream_callback=on_audio,
            )
    except (OSError, ValueError) as exc:
        raise NoMicrophone(
            f"cannot open device {device['index']} ({device['name']}) at {rate} Hz: {exc}; "
            f"its default rate is {device['defaultSampleRate']:.0f} Hz (try --sample-rate)"
        ) from None
    try:
        yield
    finally:
        stream.stop_stream()
        stream.close()


async def stream_microphone(args: argparse.Namespace, pyaudio: Any, audio: Any) -> int:
    device = find_device(audio, args.device_index)
    loop = asyncio.get_running_loop()
    chunks = ChunkQueue(loop, limit=int(MAX_BUFFERED_S * 1000 / args.chunk_duration))

    def on_interrupt() -> None:
        # First Ctrl-C: end the audio and wait for the last results; the next one
        # gets Python's default handler, so it raises KeyboardInterrupt.
        loop.remove_signal_handler(signal.SIGINT)
        print("stopping: waiting for the last results (Ctrl-C again to quit now)", file=sys.stderr)
        chunks.close()

    chunk_frames = args.sample_rate * args.chunk_duration // 1000
    with capture(pyaudio, audio, device, args.sample_rate, chunk_frames, chunks):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C quits at once
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        print(f"listening on {device['name']} at {args.sample_rate} Hz; Ctrl-C to stop", file=sys.stderr)
        status, _ = await run_session(args, args.sample_rate, chunks.send_all)
    if chunks.dropped:
        print(
            f"warning: dropped {chunks.dropped} audio chunks the connection could not take", file=sys.stderr
        )
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pyaudio = import_pyaudio()
        with open_pyaudio(pyaudio) as audio:
            if args.list_devices:
                return list_devices(audio)
            return asyncio.run(stream_microphone(args, pyaudio, audio))
    except NoMicrophone as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
