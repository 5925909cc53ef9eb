"""One key check for every way a protocol carries a key (``services.ingest.edge.auth``), and the
one path table (``services.ingest.edge.routes``). In-process: the headers as aiohttp hands them
over (a case-insensitive multidict)."""

from __future__ import annotations

import base64

import pytest
from multidict import CIMultiDict

from services.ingest.edge import auth, routes
from services.ingest.protocols.native import Native


def headers_of(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-").lower(), value) for name, value in headers.items())


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/", {"Authorization": "Bearer k1"}),  # OpenAI's SDKs, ours
        ("/", {"Authorization": "Token k1"}),  # Deepgram's SDKs
        ("/", {"Authorization": "token  k1 "}),
        ("/", {"Authorization": "Basic " + base64.b64encode(b"user:k1").decode()}),  # Exotel
        ("/", {"Sec_WebSocket_Protocol": "token, k1"}),  # Deepgram in a browser
        ("/?token=k1", {}),
    ],
)
def test_every_way_of_carrying_a_key_reaches_the_one_check(path: str, headers: dict[str, str]) -> None:
    key = auth.presented_key(headers_of(**headers), path)
    assert key == "k1" and auth.key_valid(key, ["k0", "k1"])
    assert not auth.key_valid(key, ["k2"])


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer "},
        {"Authorization": "Basic not-base64!"},
        {"Sec_WebSocket_Protocol": "token"},  # the subprotocol alone carries no key
        {"Sec_WebSocket_Protocol": "chat, k1"},  # another subprotocol's second name is no key
        {},
    ],
)
def test_no_key_is_read_where_none_was_sent(headers: dict[str, str]) -> None:
    key = auth.presented_key(headers_of(**headers), "/")
    assert key is None and not auth.key_valid(key, ["k1"])


def test_every_path_has_one_route_and_any_other_speaks_our_protocol() -> None:
    assert routes.find("/twilio") == routes.CallRoute("twilio")
    assert routes.find("/calls/CA1/events") == routes.EventsRoute("CA1")
    for path in ("/", "/ws", "/anything"):
        route = routes.find(path)
        assert isinstance(route, routes.ClientRoute) and route.protocol == "native"
        params, adapter = route.open("sample_rate=8000")
        assert params.sample_rate == 8000 and isinstance(adapter, Native)
