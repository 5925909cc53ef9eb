"""``python -m services.transcriber``: one Whisper transcriber process."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis

from services.config import setup_logging
from services.metrics import MetricsPortError
from services.transcriber.config import PARTIALS_NICE, ConfigError, TranscriberConfig, parse_args
from services.transcriber.interface import ModelLoadError, SpeechModel, warm_up
from services.transcriber.worker import run

log = logging.getLogger("transcriber")


def load_model(config: TranscriberConfig) -> SpeechModel:
    """The backend ``config`` names, loaded (not yet warmed up). Each is imported only when
    chosen: the CTranslate2 backend runs without torch."""
    if config.backend == "ctranslate2":
        from services.transcriber.ct2_model import CTranslate2Model

        return CTranslate2Model.load(
            config.model_id, config.device, config.compute_type, config.decoding, config.threads
        )
    import torch

    from services.transcriber.model import WhisperModel

    if config.threads:
        torch.set_num_threads(config.threads)
    dtype = torch.float16 if config.dtype == "float16" else torch.float32
    return WhisperModel.load(config.model_id, config.device, dtype, config.decoding)


def in_background(nice: int) -> None:
    """Run at ``nice``. Where the kernel groups processes by session (autogroup, ``man 7 sched``;
    on by default in most Linux kernels, this one's too), nice ranks a process only against
    those of its own session; a transcriber in a session of its own, as ``services.stack``
    starts each, would still get a full share against the finals transcribers. So the
    session's group is niced too, but only when this process leads its session: otherwise the
    group holds others (the shell it was started from)."""
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    if os.getsid(0) == os.getpid() and autogroup.exists():
        try:
            autogroup.write_text(str(nice))
        except OSError as exc:
            log.warning("could not lower this session's CPU priority (%s): nice %d only", exc, nice)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if config.role == "partials":
        in_background(PARTIALS_NICE)  # before the model's threads start: they inherit it
    try:
        model = load_model(config)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    # Loaded and warmed before joining the consumer group: the first segment is not slow.
    warm_up(model)
    try:
        asyncio.run(run(config, model))
    except (redis.ConnectionError, MetricsPortError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
