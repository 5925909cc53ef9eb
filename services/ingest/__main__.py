"""``python -m services.ingest``: the WebSocket ingest process."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

import redis

from services.config import setup_logging
from services.ingest.config import parse_args
from services.ingest.edge.server import run
from services.ingest.edge.tls import CertificateError
from services.metrics import MetricsPortError


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    # Everything imported so far (numpy, scipy, websockets, redis: ~80k objects) lives as long as
    # the process: keep it out of the collector's full passes, which otherwise stall the event
    # loop for 30-60 ms every few seconds under load (bench/compare.py's ingest ramp, 300 sessions).
    gc.freeze()
    try:
        asyncio.run(run(config))
    except (redis.ConnectionError, MetricsPortError, CertificateError) as exc:
        logging.getLogger("ingest").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("ingest").error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
