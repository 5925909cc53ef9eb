"""The benches' clients for the systems we compare with, paced and timed like ours (bench/common.py).

- ``SeedSession``: the seed's design (``bench/seed_server.py``): 16-bit PCM in, one
  ``{"text", "start", "end"}`` message per segment out (the seed sends only ``text``; our
  re-creation adds where the segment lay, for matching; the seed's clients ignore it). It never
  says it is done: a session is done once it has ``expected`` finals.
- ``WhisperLiveSession``: WhisperLive 0.10's protocol: a JSON options message, ``SERVER_READY``,
  float32 16 kHz frames, ``END_OF_AUDIO``; it answers with ``segments`` (the last few, each with
  ``start``, ``end``, ``text`` and ``completed``) and closes the connection once it has
  finalised the stream. A segment counts as final when it first arrives ``completed``.

Both record finals as ``Received`` events shaped like ours (``type`` final, ``text``, ``start``,
``end``), so ``match_finals`` and the latency arithmetic are the same for every system.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import ClientConnection

from bench.common import Received, Session


@dataclass
class SeedSession(Session):
    expected: int = 0  # finals after which the session is done

    closed_is_done = True

    def url(self) -> str:
        return f"{self.uri}/?sample_rate={self.rate}"

    def take(self, message: str | bytes, at: float) -> bool:
        reply = json.loads(message)
        event = {"type": "final", "text": reply["text"], "start": reply["start"], "end": reply["end"]}
        self.events.append(Received(event, at))
        return len(self.finals) >= self.expected


@dataclass
class WhisperLiveSession(Session):
    model_dir: str = ""
    completed: set[tuple[str, str]] = field(default_factory=set, repr=False)

    closed_is_done = True

    def url(self) -> str:
        return self.uri

    async def open(self, ws: ClientConnection) -> None:
        options = {"uid": uuid.uuid4().hex, "language": "en", "task": "transcribe", "model": self.model_dir}
        await ws.send(json.dumps(options | {"use_vad": True}))
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("message") == "SERVER_READY":
                return
            if reply.get("status") in ("WAIT", "ERROR"):
                raise ConnectionError(f"WhisperLive refused the session: {reply}")

    def frame(self, chunk: bytes | memoryview) -> bytes:
        return (np.frombuffer(chunk, "<i2").astype(np.float32) / 32768).tobytes()

    def end_of_audio(self) -> bytes:
        return b"END_OF_AUDIO"

    def take(self, message: str | bytes, at: float) -> bool:
        reply = json.loads(message)
        for segment in reply.get("segments", []):
            key = (segment["start"], segment["end"])
            if segment.get("completed") and key not in self.completed:
                self.completed.add(key)
                start, end = float(segment["start"]), float(segment["end"])
                event = {"type": "final", "text": segment["text"], "start": start, "end": end}
                self.events.append(Received(event, at))
        return bool(reply.get("message") == "DISCONNECT")
