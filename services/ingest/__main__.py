"""``python -m services.ingest``: the WebSocket ingest process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import redis

from services.config import setup_logging
from services.ingest.config import parse_args
from services.ingest.server import run
from services.metrics import MetricsPortError


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    try:
        asyncio.run(run(config))
    except (redis.ConnectionError, MetricsPortError) as exc:
        logging.getLogger("ingest").error("%s", exc)
        return 1
    except OSError as exc:
        logging.getLogger("ingest").error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
