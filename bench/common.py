"""The benches' real-time client: WebSocket sessions paced by the wall clock, timed to the frame.

Every time here is wall time (``time.time()``, the clock the services stamp their timings with):
when each frame left, when each event arrived. So the end-of-speech -> text latency of an
utterance is the arrival of its final minus the moment the frame holding its last sample was
sent, whatever lag the client itself had.

``Session.run`` streams one session; ``fleet`` streams many at once, their frames sent by a few
sender tasks (``pace``) spread over the frame tick, as ``bench.compare`` needs for hundreds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tools.speech import Stream


@dataclass(frozen=True)
class Received:
    event: dict[str, Any]
    at: float  # arrival (wall time)


@dataclass
class Session:
    """One session's audio and, once it has run (or failed) part of the way, what happened."""

    uri: str
    pcm: bytes | memoryview = field(repr=False)
    rate: int
    chunk_ms: int = 20
    partials: bool = False  # ask for partial results (?partials=1)
    started: float = 0.0  # wall time the first frame is due
    sent: list[float] = field(default_factory=list, repr=False)  # wall time each frame left
    events: list[Received] = field(default_factory=list, repr=False)
    done: bool = False
    error: str = ""  # why the connection ended before done ("" if it did not)
    port: int = 0  # the client's local port (the seed's timing log names sessions by it)

    @property
    def chunk_bytes(self) -> int:
        return self.rate * self.chunk_ms // 1000 * 2

    @property
    def frames(self) -> int:
        return -(-len(self.pcm) // self.chunk_bytes)

    @property
    def finals(self) -> list[Received]:
        return [r for r in self.events if r.event["type"] == "final"]

    @property
    def errors(self) -> list[Received]:
        return [r for r in self.events if r.event["type"] == "error"]

    def due(self, frame: int) -> float:
        """When frame ``frame`` is due on the session's real-time schedule."""
        return self.started + frame * self.chunk_ms / 1000

    def frame_of(self, seconds: float) -> int:
        """The frame holding the sample at ``seconds`` into the stream."""
        return int(seconds * self.rate) * 2 // self.chunk_bytes

    def sent_at(self, seconds: float) -> float:
        """When the frame holding the sample at ``seconds`` into the stream was sent."""
        return self.sent[max(0, min(self.frame_of(seconds), len(self.sent) - 1))]

    def lag(self) -> float:
        """The furthest any frame left behind its wall-clock schedule (s)."""
        return max((t - self.due(n) for n, t in enumerate(self.sent)), default=0.0)

    async def run(self, done_timeout: float = 120.0) -> None:
        """Stream the audio in real time, send end of audio, and take events until done.

        Raises what the connection raises, ``ConnectionError`` when it closes before done, and
        ``TimeoutError`` when done is not there ``done_timeout`` s after end of audio; what
        came before stays recorded either way.
        """
        async with connect(self.url(), max_size=None) as ws:
            await self.open(ws)
            self.started = time.time()
            async with asyncio.timeout(None) as deadline:
                sender = asyncio.create_task(pace([(self, ws)]))
                sender.add_done_callback(
                    lambda _: deadline.reschedule(asyncio.get_running_loop().time() + done_timeout)
                )
                try:
                    await self.receive(ws)
                finally:
                    sender.cancel()
                    await asyncio.wait({sender})
            if not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
            if self.error:
                raise ConnectionError(self.error)
            if not self.done:
                raise ConnectionError(f"the server closed the session before done ({ws.close_code})")

    async def receive(self, ws: ClientConnection) -> None:
        """Record the server's messages until done, or until the connection closes."""
        try:
            async for message in ws:
                if self.take(message, time.time()):
                    self.done = True
                    return
        except ConnectionClosed as exc:
            self.error = self.error or f"closed: {exc}"
            return
        self.done = self.done or self.closed_is_done

    # --- the protocol: ours here; bench/peers.py has the seed's and WhisperLive's ---------------

    closed_is_done = False  # whether the server closing the connection ends a session normally

    def url(self) -> str:
        return f"{self.uri}/?sample_rate={self.rate}" + ("&partials=1" if self.partials else "")

    async def open(self, ws: ClientConnection) -> None:
        """What happens between the handshake and the first frame."""

    def frame(self, chunk: bytes | memoryview) -> bytes | memoryview:
        return chunk

    def end_of_audio(self) -> str | bytes | None:
        """The message that ends the audio (None: the protocol has none)."""
        return json.dumps({"type": "eof"})

    def take(self, message: str | bytes, at: float) -> bool:
        """Record one message from the server; True once the session is done."""
        event = json.loads(message)
        self.events.append(Received(event, at))
        return bool(event["type"] == "done")


async def pace(group: Sequence[tuple[Session, ClientConnection]]) -> None:
    """Send a group's frames, each on its session's schedule (one task for the group: few large
    groups are cheaper than a task per session), then each session's end of audio. A session
    whose connection closes is left out from then on, its ``error`` set."""
    for n in range(max(session.frames for session, _ in group)):
        for session, ws in group:
            if n >= session.frames or session.error:
                continue
            await asyncio.sleep(max(0.0, session.due(n) - time.time()))
            chunk = session.chunk_bytes
            try:
                await ws.send(session.frame(session.pcm[n * chunk : (n + 1) * chunk]))
            except ConnectionClosed as exc:
                session.error = session.error or f"closed while sending: {exc}"
                continue
            session.sent.append(time.time())
    for session, ws in group:
        eof = session.end_of_audio()
        if eof is not None and not session.error:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(eof)


@dataclass
class Fleet:
    sessions: list[Session]
    t0: float  # when the first frames were due
    closed: float = 0.0  # when the last session was closed
    gave_up: list[bool] = field(default_factory=list)  # no done before the deadline, per session


async def fleet(
    sessions: Sequence[Session],
    groups: int,
    grace: float,
    during: Callable[[float], Coroutine[Any, Any, None]] | None = None,
) -> Fleet:
    """Every session at once, in ``groups`` sender groups spread over the frame tick, from half a
    second after all are connected (``t0``); each is closed once done, or ``grace`` s after the
    last audio is due. ``during(t0)`` runs alongside (a probe that marks a window)."""
    conns = await asyncio.gather(*(connect(s.url(), open_timeout=60, close_timeout=2) for s in sessions))
    for session, ws in zip(sessions, conns, strict=True):
        session.port = ws.local_address[1]
        await session.open(ws)
    t0 = time.time() + 0.5
    groups = min(groups, len(sessions))
    step = sessions[0].chunk_ms / 1000
    for i, session in enumerate(sessions):
        session.started = t0 + (i % groups) * step / groups
    deadline = max(s.due(s.frames) for s in sessions) + grace
    run = Fleet(list(sessions), t0, gave_up=[False] * len(sessions))

    async def follow(i: int, ws: ClientConnection, sender: asyncio.Task[None]) -> None:
        """Take session ``i``'s events until done or the deadline; close once its audio is out."""
        try:
            await asyncio.wait_for(sessions[i].receive(ws), max(0.0, deadline - time.time()))
        except TimeoutError:
            run.gave_up[i] = True
        await asyncio.wait({sender})
        await ws.close()

    pairs = list(zip(sessions, conns, strict=True))
    async with asyncio.TaskGroup() as tasks:
        if during is not None:
            tasks.create_task(during(t0))
        for g in range(groups):
            sender = tasks.create_task(pace(pairs[g::groups]))
            for i in range(g, len(pairs), groups):
                tasks.create_task(follow(i, pairs[i][1], sender))
    run.closed = time.time()
    return run


async def stream_real_time(uri: str, stream: Stream, chunk_ms: int, partials: bool = False) -> Session:
    """Send ``stream`` paced by the wall clock in ``chunk_ms`` frames; return the finished session."""
    session = Session(uri, stream.pcm, stream.rate, chunk_ms, partials)
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


def side_venv(venv: Path, packages: Sequence[str]) -> Path:
    """The python of a virtual environment of its own at ``venv`` with ``packages`` (made once,
    again when the list changes): for peers whose pins clash with ours."""
    python = venv / "bin" / "python"
    ready, wanted = venv / ".ready", "\n".join(packages)
    if not ready.is_file() or ready.read_text() != wanted:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        ready.write_text(wanted)
    return python


def write_report(path: Path, report: dict[str, Any]) -> None:
    """A bench's JSON report at ``path``, its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def save_report(path: Path, report: dict[str, Any], *, show: bool = False) -> None:
    """A bench's last word: its report written at ``path`` (``show``: printed whole first), and where."""
    if show:
        print(report)
    write_report(path, report)
    print(f"wrote {path}")
