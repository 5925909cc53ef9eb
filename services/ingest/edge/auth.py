"""Who may open a session: one check of an API key, however a protocol carries it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

# Deepgram's browser form: ``Sec-WebSocket-Protocol: token, KEY`` (a browser cannot set headers).
TOKEN_SUBPROTOCOL = "token"


def presented_key(headers: Mapping[str, str], target: str) -> str | None:
    """The key a request (its ``headers``; ``target``, its path and query) carries, by the first
    of: ``Authorization: Bearer KEY`` (OpenAI, ours),
    ``Authorization: Token KEY`` (Deepgram), HTTP Basic (its password: Exotel streams to
    ``wss://user:KEY@host/exotel``), the subprotocols ``token, KEY``, ``?token=KEY``."""
    header = headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and credentials.strip():
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or user
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) == 2 and offered[0] == TOKEN_SUBPROTOCOL and offered[1]:
        return offered[1]
    tokens = parse_qs(urlsplit(target).query).get("token")
    return tokens[-1] if tokens else None


def key_valid(key: str | None, keys: Iterable[str]) -> bool:
    """The one check of an API key, however it came (a header, the query, Basic auth, a telephony
    platform's custom parameter ``token``)."""
    if not key:
        return False
    # Compare against every key in constant time, so timing tells nothing.
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in keys])


def twilio_signed(headers: Mapping[str, str], target: str, auth_token: str) -> bool:
    """Twilio's ``X-Twilio-Signature``: base64 HMAC-SHA1, keyed by the account's auth token, of the
    URL it connected to (a WebSocket request has no form parameters to append). Behind a proxy
    this service cannot know whether that URL began wss:// or ws://, so either is accepted."""
    signature = headers.get("X-Twilio-Signature", "")
    host = headers.get("Host", "")
    if not signature or not host:
        return False
    valid = []
    for scheme in ("wss", "ws"):
        digest = hmac.new(auth_token.encode(), f"{scheme}://{host}{target}".encode(), hashlib.sha1).digest()
        valid.append(hmac.compare_digest(base64.b64encode(digest).decode(), signature))
    return any(valid)
