"""Reading the query strings of Deepgram-style protocols: strict, with messages that say what
was expected. Booleans are lowercase ``true``/``false``, as Deepgram's clients send them."""

from __future__ import annotations

from services.protocol import ENCODINGS, ProtocolError

Query = dict[str, list[str]]  # parse_qs's
# Encodings Deepgram documents that this service does not decode: refused, never misread.
FOREIGN_ENCODINGS = ("linear32", "flac", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729")


def bad(message: str) -> ProtocolError:
    return ProtocolError("bad_parameter", message)


def last(params: Query, name: str) -> str:
    """The parameter's last value ("" when absent)."""
    return params.get(name, [""])[-1].strip()


def boolean(params: Query, name: str, default: bool = False) -> bool:
    value = last(params, name)
    if not value:
        return default
    if value not in ("true", "false"):
        raise bad(f"{name}={value!r}: expected true or false")
    return value == "true"


def whole(params: Query, name: str, default: int) -> int:
    value = last(params, name)
    if not value:
        return default
    if not value.isdigit():
        raise bad(f"{name}={value!r}: expected a whole number")
    return int(value)


def number(params: Query, name: str, low: float, high: float) -> float | None:
    """A number between ``low`` and ``high``, or None when absent."""
    value = last(params, name)
    if not value:
        return None
    try:
        given = float(value)
    except ValueError:
        raise bad(f"{name}={value!r}: expected a number") from None
    if not low <= given <= high:
        raise bad(f"{name}={value}: between {low:g} and {high:g}")
    return given


def encoding(params: Query) -> str:
    given = last(params, "encoding") or "linear16"
    if given in ENCODINGS:
        return given
    if given in FOREIGN_ENCODINGS:
        raise bad(f"encoding {given!r} is not decoded here; use one of {', '.join(ENCODINGS)}")
    raise bad(f"unknown encoding {given!r}")
