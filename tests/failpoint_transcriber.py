"""``python -m tests.failpoint_transcriber``: the real transcriber process, with a fault injected.

``STT_FAILPOINT_SEGMENTS=1,4`` makes every batch holding one of those segment numbers raise
inside ``services.transcriber.batch``, where the model is called, so everything around it runs
as in production: the batch retried one segment at a time, the failing one left pending,
reclaimed, and dead-lettered after ``--max-attempts`` (``tests/test_faults.py``). The services
themselves know nothing of failpoints.
"""

from __future__ import annotations

import os
import sys

from services.metrics import TranscriberMetrics
from services.protocol import SegmentResult
from services.transcriber import batch
from services.transcriber.__main__ import main
from services.transcriber.batch import Entry
from services.transcriber.interface import SpeechModel


class InjectedFault(RuntimeError):
    """Raised for the segments the failpoint names."""


def fail_on(segments: frozenset[int]) -> None:
    run = batch._run

    def failing(
        model: SpeechModel, entries: list[Entry], metrics: TranscriberMetrics
    ) -> dict[bytes, list[SegmentResult]]:
        for entry in entries:
            if entry.job.segment in segments:
                raise InjectedFault(f"failpoint: segment {entry.job.segment}")
        return run(model, entries, metrics)

    batch._run = failing


if __name__ == "__main__":
    fail_on(frozenset(int(x) for x in os.environ.get("STT_FAILPOINT_SEGMENTS", "").split(",") if x.strip()))
    sys.exit(main())
