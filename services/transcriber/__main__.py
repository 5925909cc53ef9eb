"""``python -m services.transcriber``: one Whisper transcriber process."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import redis
import torch

from services.config import setup_logging
from services.metrics import MetricsPortError
from services.transcriber.config import INTERIM_NICE, ConfigError, TranscriberConfig, parse_args
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.model import ModelLoadError, WhisperModel
from services.transcriber.worker import run

log = logging.getLogger("transcriber")


def load_model(config: TranscriberConfig) -> WhisperModel | CTranslate2Model:
    """The backend ``config`` names, loaded (not yet warmed up)."""
    if config.backend == "ctranslate2":
        return CTranslate2Model.load(
            config.model_id, config.device, config.compute_type, config.language, config.task, config.threads
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    return WhisperModel.load(config.model_id, config.device, config.torch_dtype, config.language, config.task)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if config.role == "interims":
        os.nice(INTERIM_NICE)  # before the model's threads start: they inherit it
    try:
        model = load_model(config)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    # Loaded and warmed before joining the consumer group: the first segment is not slow.
    model.warm_up()
    try:
        asyncio.run(run(config, model))
    except (redis.ConnectionError, MetricsPortError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
