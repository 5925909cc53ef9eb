"""The benches' real-time client: one WebSocket session paced by the wall clock, timed to the frame.

Every time here is ``time.monotonic()``: when each frame left, when each event arrived. So the
end-of-speech -> text latency of an utterance is the arrival of its final minus the moment the frame
holding its last sample was sent, whatever lag the client itself had.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.helpers import Stream


@dataclass(frozen=True)
class Received:
    event: dict[str, Any]
    at: float  # monotonic arrival time


@dataclass
class Session:
    """One session's audio and, once ``run`` has gone (or failed) part of the way, what happened."""

    uri: str
    pcm: bytes | memoryview = field(repr=False)
    rate: int
    chunk_ms: int = 20
    interim: bool = False  # ask for partial results (?interim=1)
    started: float = 0.0  # monotonic time the first frame was due
    sent: list[float] = field(default_factory=list, repr=False)  # monotonic time each frame left
    events: list[Received] = field(default_factory=list, repr=False)
    done: bool = False

    @property
    def chunk_bytes(self) -> int:
        return self.rate * self.chunk_ms // 1000 * 2

    @property
    def finals(self) -> list[Received]:
        return [r for r in self.events if r.event["type"] == "final"]

    @property
    def errors(self) -> list[Received]:
        return [r for r in self.events if r.event["type"] == "error"]

    def sent_at(self, seconds: float) -> float:
        """When the frame holding the sample at ``seconds`` into the stream was sent."""
        n = int(seconds * self.rate) * 2 // self.chunk_bytes
        return self.sent[max(0, min(n, len(self.sent) - 1))]

    def lag(self) -> float:
        """The furthest any frame left behind its wall-clock schedule (s)."""
        step = self.chunk_ms / 1000
        return max((t - (self.started + n * step) for n, t in enumerate(self.sent)), default=0.0)

    async def run(self, done_timeout: float = 120.0) -> None:
        """Stream the audio in real time, send end of audio, and take events until done.

        Raises what the connection raises, ``ConnectionError`` when it closes before done, and
        ``TimeoutError`` when done is not there ``done_timeout`` s after end of audio; what
        came before stays recorded either way.
        """
        async with connect(self.url(), max_size=None) as ws:
            await self.open(ws)
            self.started = time.monotonic()
            async with asyncio.timeout(None) as deadline:
                sender = asyncio.create_task(self._send(ws, deadline, done_timeout))
                try:
                    async for message in ws:
                        if self.take(message, time.monotonic()):
                            self.done = True
                            break
                finally:
                    sender.cancel()
                    await asyncio.wait({sender})
                    failed = None if sender.cancelled() else sender.exception()
            if failed is not None:
                raise failed
            if not self.done and not self.closed_is_done:
                raise ConnectionError(f"the server closed the session before done ({ws.close_code})")
            self.done = True

    # --- the protocol: ours here; bench/peers.py has the seed's and WhisperLive's ---------------

    closed_is_done = False  # whether the server closing the connection ends a session normally

    def url(self) -> str:
        return f"{self.uri}/?sample_rate={self.rate}" + ("&interim=1" if self.interim else "")

    async def open(self, ws: ClientConnection) -> None:
        """What happens between the handshake and the first frame."""

    def frame(self, chunk: bytes | memoryview) -> bytes | memoryview:
        return chunk

    def end_of_audio(self) -> str | bytes:
        return json.dumps({"type": "eof"})

    def take(self, message: str | bytes, at: float) -> bool:
        """Record one message from the server; True once the session is done."""
        event = json.loads(message)
        self.events.append(Received(event, at))
        return bool(event["type"] == "done")

    async def _send(self, ws: ClientConnection, deadline: asyncio.Timeout, done_timeout: float) -> None:
        chunk, step = self.chunk_bytes, self.chunk_ms / 1000
        for n, i in enumerate(range(0, len(self.pcm), chunk)):
            await asyncio.sleep(max(0.0, self.started + n * step - time.monotonic()))
            await ws.send(self.frame(self.pcm[i : i + chunk]))
            self.sent.append(time.monotonic())
        await ws.send(self.end_of_audio())
        deadline.reschedule(asyncio.get_running_loop().time() + done_timeout)


async def stream_real_time(uri: str, stream: Stream, chunk_ms: int, interim: bool = False) -> Session:
    """Send ``stream`` paced by the wall clock in ``chunk_ms`` frames; return the finished session."""
    session = Session(uri, stream.pcm, stream.rate, chunk_ms, interim)
    await session.run()
    return session


def match_finals(
    finals: Sequence[Received], utterances: Sequence[tuple[float, float]]
) -> tuple[list[list[Received]], list[Received]]:
    """Give each final to the utterance its [start, end] overlaps most.

    Returns the finals of each utterance (in arrival order) and the finals that overlap none.
    """
    mine: list[list[Received]] = [[] for _ in utterances]
    unmatched: list[Received] = []
    for final in finals:
        start, end = final.event["start"], final.event["end"]
        overlaps = [min(end, e) - max(start, s) for s, e in utterances]
        best = max(range(len(overlaps)), key=overlaps.__getitem__, default=None)
        if best is None or overlaps[best] <= 0:
            unmatched.append(final)
        else:
            mine[best].append(final)
    return mine, unmatched


def write_report(path: Path, report: dict[str, Any]) -> None:
    """A bench's JSON report at ``path``, its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
