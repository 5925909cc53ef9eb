"""The browser microphone page, in a real headless Chromium, against the real whisper-base stack.

Chromium's fake microphone plays an espeak-ng WAV (in a loop); the page sends it through
its AudioWorklet and WebSocket, and the transcript must show the spoken words.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from services.protocol import SAMPLE_RATES
from services.stack import POOL, ROOT, Stack, start_ingest, wait_until
from tools.speech import Speech

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
# The network is closed here: keep Chromium from reaching out (and hanging on it).
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAKE_MIC = ["--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: run deploy/install-system-deps.sh"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise AssertionError(
            "playwright is missing: install requirements-dev.txt into .venv (`make venv`); "
            "the browser itself comes from deploy/install-system-deps.sh, never `playwright install`"
        ) from error
    with sync_playwright() as pw:
        yield pw


def launch(pw: Playwright, *args: str) -> Browser:
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=[*QUIET, *args], timeout=30_000)


@pytest.fixture(scope="module")
def mic_browser(playwright: Playwright, speech: Speech) -> Iterator[Browser]:
    """Chromium whose microphone, granted without asking, plays the breakfast sentence in a loop."""
    stream = speech.stream(48000, (1,))  # "Please call me back tomorrow morning after breakfast."
    browser = launch(
        playwright,
        *FAKE_MIC,
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={stream.path}",
    )
    yield browser
    browser.close()


def page_url(stack: Stack) -> str:
    return stack.uri.replace("ws://", "http://", 1) + "/"


def wait_on_page(page: Page, check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``wait_until``, but a timeout also says what the page showed."""
    try:
        return wait_until(check, timeout, what, interval=0.2)
    except AssertionError as error:
        shown = page.evaluate(
            "() => [document.querySelector('#status').textContent,"
            " document.querySelector('#message').textContent,"
            " document.querySelector('#transcript').innerText]"
        )
        raise AssertionError(
            f"{error}; status {shown[0]!r}, message {shown[1]!r}, lines {shown[2]!r}"
        ) from None


# Records the rate of every AudioContext the page makes; given a rate, it also plays a
# device whose native rate is that one (a 44100 Hz device must make the page ask for 48000).
AUDIO_CONTEXTS = """
window.contextRates = [];
window.AudioContext = class extends window.AudioContext {
  constructor(options) { super(options ?? %s); window.contextRates.push(this.sampleRate); }
};
"""


@pytest.mark.parametrize("device_rate", [None, 44100], ids=["native-rate", "device-44100"])
def test_page_transcribes_the_microphone(
    mic_browser: Browser, base_stack: Stack, device_rate: int | None
) -> None:
    page = mic_browser.new_page(viewport={"width": 900, "height": 560})
    try:
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))

        page.add_init_script(AUDIO_CONTEXTS % (f"{{sampleRate: {device_rate}}}" if device_rate else "{}"))
        page.goto(page_url(base_stack))
        assert page.locator("#model-picker").is_hidden(), "one model served: no picker"
        started = time.monotonic()
        page.click("#start")
        finals = page.locator("#transcript li[data-testid=final]")

        def heard() -> str | None:
            texts = finals.locator(".text").all_inner_texts()
            return next((t for t in texts if "tomorrow" in t.lower() and "breakfast" in t.lower()), None)

        text = wait_on_page(page, heard, 60, "a final line with 'tomorrow' and 'breakfast'")
        first_final_s = time.monotonic() - started
        assert page.get_attribute("#status", "data-state") == "listening"

        (url,) = sockets
        rate = int(re.search(r"[?&]sample_rate=(\d+)", url).group(1))  # type: ignore[union-attr]
        contexts = page.evaluate("window.contextRates")
        assert rate in SAMPLE_RATES and rate == contexts[-1], (url, contexts)
        if device_rate:
            assert contexts == [device_rate, 48000], contexts
        assert url.startswith(base_stack.uri + "/?"), url
        assert f"model={POOL}" in url, url

        line = finals.filter(has_text=re.compile("breakfast", re.I)).first
        latency = line.locator(".latency").inner_text()
        assert re.fullmatch(r"\d+\.\d\d s", latency), f"latency shown as {latency!r}"
        assert 0 < float(latency.split()[0]) < 30

        page.click("#stop")
        wait_on_page(page, lambda: page.get_attribute("#status", "data-state") == "done", 60, "status done")
        total_s = time.monotonic() - started
        assert page.inner_text("#message") == ""
        assert page.is_disabled("#stop") and page.is_enabled("#start")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / ("web-page.png" if device_rate is None else f"web-page-{device_rate}.png")
        shot.unlink(missing_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.is_file() and shot.stat().st_size > 0
        assert not problems, problems
        timing = f"first final after {first_final_s:.1f} s, done at {total_s:.1f} s"
        print(f"web page at {rate} Hz: {text!r} ({latency}), {timing}")
    finally:
        page.close()


def test_page_passes_its_token_to_a_server_with_api_keys(
    mic_browser: Browser, base_stack: Stack, tmp_path: Path
) -> None:
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--api-keys", "s3cret")
    page = mic_browser.new_page()
    try:
        page.goto(uri.replace("ws://", "http://", 1) + "/")
        page.click("#start")
        message = page.locator("#message")
        wait_on_page(page, lambda: "1006" in message.inner_text(), 20, "the could-not-connect message")
        assert "?token=KEY" in message.inner_text()
        assert page.get_attribute("#status", "data-state") == "closed"

        page.goto(uri.replace("ws://", "http://", 1) + "/?token=s3cret")
        page.click("#start")

        def state() -> str | None:
            return page.get_attribute("#status", "data-state")

        wait_on_page(page, lambda: state() == "listening", 20, "the keyed session to start")
        page.click("#stop")
        wait_on_page(page, lambda: state() == "done", 60, "status done")
        assert page.inner_text("#message") == ""
    finally:
        page.close()
        ingest.stop()


def test_page_says_when_the_microphone_is_refused(playwright: Playwright, base_stack: Stack) -> None:
    browser = launch(playwright, *FAKE_MIC)  # no fake UI: nobody grants the permission
    try:
        context = browser.new_context(permissions=[])
        page = context.new_page()
        page.goto(page_url(base_stack))
        page.click("#start")
        message = page.locator("#message")
        wait_on_page(page, lambda: "refused" in message.inner_text(), 20, "the refused-microphone message")
        assert "Microphone access was refused" in message.inner_text()
        assert page.get_attribute("#status", "data-state") == "error"
        assert page.is_enabled("#start") and page.is_disabled("#stop")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-mic-refused.png"))
    finally:
        browser.close()


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_http_routes(base_stack: Stack) -> None:
    base = page_url(base_stack)

    status, headers, body = fetch(base + "models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-cache"
    assert json.loads(body) == {"models": [POOL], "default": POOL}

    for path, kind in [("", "text/html"), ("index.html", "text/html"), ("app.js", "text/javascript")]:
        status, headers, body = fetch(base + path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert headers["Cache-Control"] == "no-cache"
    status, headers, body = fetch(base + "pcm-worklet.js?v=1")
    assert status == 200 and b"registerProcessor" in body

    for path in ["nope", "static/app.js", "..%2Fweb.py", "app.js/", "models/x"]:
        assert fetch(base + path)[0] == 404, path
    status, headers, _ = fetch(base, "POST")
    assert status == 405 and headers["Allow"] == "GET"

    status, _, body = fetch(base + "healthz")
    assert (status, body) == (200, b"ok\n")
