"""The seed's design, re-created for comparison: one process, VAD per connection, model in the loop.

Oriserve's ``websocket_server.py`` (the "WebSocket Streaming Guide" this project rewrites) is one
``websockets`` server process: per connection a WebRTC VAD over the incoming PCM, speech buffered
until enough silence follows, then the Whisper model called right there in the connection's
handler, blocking the event loop (every other connection waits), and ``{"text": ...}`` sent back.
This module does the same with the same model code as our transcriber (``WhisperModel``:
whisper-base, fp32, greedy) and the same segmentation parameters as our ingest (VAD mode 3 on
30 ms frames, 500 ms of silence ends a segment, 300 ms of pre-roll, under 250 ms of voiced audio
is dropped, at most 28 s). Speech starts at the first voiced frame and the trailing silence stays
in the segment, as in the seed; ``websockets``' defaults (keepalive pings, compression) are kept.

Only for the benchmark, each transcription appends one JSON line to ``--timings`` (the client's
port, segment number, where in the stream it lay, and when its endpoint was seen, the model
started and ended, and the text was sent); clients see nothing of it.

    .venv/bin/python -m bench.seed_server --model-id models/whisper-base --port 8765 [--timings t.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import torch
import webrtcvad
from websockets.asyncio.server import ServerConnection, serve

from services.audio import pcm16_to_float, resample_pcm16
from services.protocol import MODEL_RATE, RATE_PARAMS
from services.transcriber.interface import Decoding, warm_up
from services.transcriber.model import WhisperModel

FRAME_MS = 30


class SeedServer:
    def __init__(self, model: WhisperModel, args: argparse.Namespace, timings: IO[str] | None) -> None:
        self.model = model
        self.args = args
        self.timings = timings

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        rate = int(next((query[name][0] for name in RATE_PARAMS if name in query), MODEL_RATE))
        args, vad = self.args, webrtcvad.Vad(self.args.vad_mode)
        size = rate * FRAME_MS // 1000 * 2
        pre_roll: deque[bytes] = deque(maxlen=args.pre_roll_ms // FRAME_MS)
        speech: list[bytes] | None = None
        pending = bytearray()
        messages = frames = first = voiced = silent = number = 0
        async for message in ws:
            if isinstance(message, str):
                continue  # audio only
            messages += 1
            pending += message
            while len(pending) >= size:
                frame = bytes(pending[:size])
                del pending[:size]
                frames += 1
                is_speech = vad.is_speech(frame, rate)
                if speech is None:
                    if is_speech:
                        speech, first, voiced, silent = [*pre_roll, frame], frames - len(pre_roll) - 1, 1, 0
                    else:
                        pre_roll.append(frame)
                    continue
                speech.append(frame)
                voiced, silent = (voiced + 1, 0) if is_speech else (voiced, silent + 1)
                if silent * FRAME_MS < args.silence_ms and len(speech) * FRAME_MS < args.max_segment_s * 1000:
                    continue
                if voiced * FRAME_MS >= args.min_speech_ms:
                    span = (first * FRAME_MS / 1000, frames * FRAME_MS / 1000)
                    await self.transcribe(ws, b"".join(speech), rate, number, span, messages)
                    number += 1
                speech = None
                pre_roll.clear()

    async def transcribe(
        self,
        ws: ServerConnection,
        pcm: bytes,
        rate: int,
        number: int,
        span: tuple[float, float],
        message: int,
    ) -> None:
        """The seed's way: the model runs here, on the event loop, and the reply follows."""
        endpoint_at = time.time()
        audio = pcm16_to_float(pcm if rate == MODEL_RATE else resample_pcm16(pcm, rate))
        model_start = time.time()
        text = self.model.transcribe([audio])[0].text
        model_end = time.time()
        # The seed sends {"text"} alone; where the segment lay is added for the benches' matching.
        await ws.send(json.dumps({"text": text, "start": span[0], "end": span[1]}))
        if self.timings is not None:
            port = ws.remote_address[1]
            record = {"port": port, "segment": number, "start": span[0], "end": span[1], "message": message}
            record |= {"endpoint_at": endpoint_at, "model_start": model_start, "model_end": model_end}
            record |= {"sent_at": time.time(), "audio": len(audio) / MODEL_RATE}
            self.timings.write(json.dumps(record) + "\n")
            self.timings.flush()


async def serve_forever(server: SeedServer, host: str, port: int) -> None:
    async with serve(server.handle, host, port) as ws_server:
        print(f"seed server listening on ws://{host}:{port}", flush=True)
        await ws_server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", required=True, help="a transformers Whisper directory or Hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--vad-mode", type=int, default=3)
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--pre-roll-ms", type=int, default=300)
    parser.add_argument("--min-speech-ms", type=int, default=250)
    parser.add_argument("--max-segment-s", type=float, default=28.0)
    parser.add_argument("--timings", type=Path, help="append one JSON line per transcription here")
    args = parser.parse_args()
    model = WhisperModel.load(args.model_id, "cpu", torch.float32, Decoding())
    warm_up(model)
    timings = args.timings.open("a") if args.timings else None
    try:
        asyncio.run(serve_forever(SeedServer(model, args, timings), args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        if timings is not None:
            timings.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
