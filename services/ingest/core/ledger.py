"""Per-session bookkeeping of segments in flight: sans-I/O.

Numbers segments, remembers which are still unanswered, drops duplicate results,
releases results strictly in segment order, and turns a segment that waited past
its deadline into an error event so a session never hangs on a lost result. Every segment
answered gets a final; one with nothing said is ``silent`` unless the client saw partials of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.protocol import ErrorEvent, Final, SegmentResult, ServerEvent


@dataclass(frozen=True)
class Outstanding:
    start: float
    end: float
    endpoint_at: float
    deadline: float
    ended: str  # why the segment closed (Final.ended)


class Ledger:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._next = 0  # number the next segment gets
        self._head = 0  # lowest segment not yet released to the client
        self._open: dict[int, Outstanding] = {}
        self._ready: dict[int, SegmentResult | ErrorEvent] = {}
        self._partial: set[int] = set()  # segments the client saw partials of

    @property
    def next_number(self) -> int:
        """The number the segment being spoken will get."""
        return self._next

    def mark_partial(self, segment: int) -> None:
        """The client saw a partial of ``segment``: it gets a final even if that is empty."""
        self._partial.add(segment)

    def had_partial(self, segment: int) -> bool:
        return segment in self._partial

    @property
    def unanswered(self) -> int:
        """Segments enqueued whose events have not been released yet."""
        return self._next - self._head

    def add(self, start: float, end: float, endpoint_at: float, now: float, ended: str = "") -> int:
        """Record a segment about to be enqueued (closed for ``ended``); return its number."""
        number = self._next
        self._next += 1
        self._open[number] = Outstanding(start, end, endpoint_at, now + self.timeout, ended)
        return number

    def next_deadline(self) -> float | None:
        return min((o.deadline for n, o in self._open.items() if n not in self._ready), default=None)

    def resolve(self, result: SegmentResult, now: float) -> list[ServerEvent]:
        """Take one result; return the events now releasable, in order.

        A result for a segment already released, never issued, or already held
        (a duplicate from a retried transcription) is ignored.
        """
        if result.segment not in self._open or result.segment in self._ready:
            return []
        self._ready[result.segment] = result
        return self._release(now)

    def expire(self, now: float) -> list[ServerEvent]:
        """Give up on every unanswered segment whose deadline has passed."""
        for number, item in self._open.items():
            if number not in self._ready and item.deadline <= now:
                self._ready[number] = ErrorEvent(
                    "timeout", f"no transcript within {self.timeout:g} s; the segment was skipped", number
                )
        return self._release(now)

    def _release(self, now: float) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        while self._head in self._ready:
            result = self._ready.pop(self._head)
            item = self._open.pop(self._head)
            if isinstance(result, ErrorEvent):
                events.append(result)
            elif result.outcome == "error":
                events.append(ErrorEvent("transcription_failed", result.reason, self._head))
            else:
                final = Final(result.text, self._head, item.start, item.end, now - item.endpoint_at)
                final = replace(
                    final, words=tuple(result.words), confidence=result.confidence, ended=item.ended
                )
                # Empty: a final all the same where a partial of it is on screen and must be replaced.
                silent = result.outcome != "text" and self._head not in self._partial
                events.append(
                    replace(final, text=final.text if result.outcome == "text" else "", silent=silent)
                )
            self._partial.discard(self._head)
            self._head += 1
        return events
