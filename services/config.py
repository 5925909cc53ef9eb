"""Command-line flags that can also be set from environment variables.

Each service builds a frozen dataclass from ``argparse`` once at start-up; a bad
value stops the process with one clear line (``argparse`` exits with code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from services.redis_url import parse_sentinel

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Settings = TypeVar("Settings", bound="DataclassInstance")


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``env_flag`` reads its default from an env var."""

    def env_flag(
        self,
        flag: str,
        env: str,
        default: Any,
        help: str,
        type: Callable[[str], Any] = str,
        choices: Sequence[Any] | None = None,
    ) -> None:
        raw = os.environ.get(env)
        value = default
        if raw is not None and raw != "":
            try:
                value = type(raw)
            except (TypeError, ValueError):
                self.error(f"environment variable {env}={raw!r} is not a valid {flag}")
            if choices is not None and value not in choices:
                self.error(f"environment variable {env}={raw!r} must be one of {list(choices)}")
        self.add_argument(
            flag,
            type=type,
            default=value,
            choices=choices,
            help=f"{help} [env {env}; default: {default!r}]",
        )


def add_common_flags(parser: EnvArgumentParser) -> None:
    parser.env_flag(
        "--redis-url",
        "REDIS_URL",
        "redis://localhost:6379/0",
        "Redis server URL, or redis+sentinel://[:password@]host:port[,host:port...]/service[/db]",
        type=redis_url_arg,
    )
    parser.env_flag(
        "--log-level",
        "LOG_LEVEL",
        "INFO",
        "logging level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )


def from_args(settings: type[Settings], args: argparse.Namespace, **derived: Any) -> Settings:
    """The ``settings`` dataclass: the fields in ``derived`` as given, each other one the flag
    of its name as parsed."""
    names = [field.name for field in dataclasses.fields(settings) if field.name not in derived]
    return settings(**{name: getattr(args, name) for name in names}, **derived)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that accepts only values > 0."""

    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise ValueError(f"{raw} is not > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def boolean(raw: str) -> bool:
    """An argparse type for on/off values: true/false, yes/no, on/off, 1/0."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not true/false")


def redis_url_arg(value: str) -> str:
    """Argparse type: a Redis URL (a Sentinel one must name its Sentinels and its service)."""
    try:
        parse_sentinel(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def auto_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that accepts ``auto`` (resolved once the device is known) or ``kind``."""

    def parse(raw: str) -> Any:
        return raw if raw == "auto" else kind(raw)

    parse.__name__ = f"auto or {kind.__name__}"
    return parse
