"""End to end with the real whisper-base: two channels under their roles, G.711 from a real
encoder (sox), and the control messages (keepalive, finalize, close_stream)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import connect

from services.stack import POOL, Stack, start_ingest
from tests.helpers import finals, run_client, ws_exchange
from tools.speech import Speech, wer


def stereo(speech: Speech, tmp_path: Path) -> tuple[Path, str, str]:
    """A two-channel 16 kHz WAV: the agent says one sentence, then the customer another."""
    agent, customer = speech.stream(16000, (1,)), speech.stream(16000, (3,))
    left = np.frombuffer(agent.pcm, np.int16)
    right = np.frombuffer(customer.pcm, np.int16)
    length = len(left) + len(right)
    both = np.zeros((length, 2), np.int16)
    both[: len(left), 0] = left  # the customer answers once the agent is done
    both[len(left) :, 1] = right
    path = tmp_path / "call.wav"
    sf.write(path, both, 16000, subtype="PCM_16")
    return path, agent.texts[0], customer.texts[0]


def test_each_channel_is_transcribed_on_its_own_under_its_role(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    path, said_by_agent, said_by_customer = stereo(speech, tmp_path)
    vtt = tmp_path / "call.vtt"
    args = ("--fast", "--channels", "2", "--roles", "agent,customer", "--output", str(vtt))
    code, events, stderr = run_client(base_stack.uri, path, *args)
    assert code == 0, stderr
    assert events[0]["channels"] == 2 and events[0]["roles"] == ["agent", "customer"]
    by_role = {
        role: " ".join(f["text"] for f in finals(events) if f["role"] == role)
        for role in ("agent", "customer")
    }
    assert {f["channel"] for f in finals(events) if f["role"] == "customer"} == {1}
    assert wer(said_by_agent, by_role["agent"]) < 0.3, by_role
    assert wer(said_by_customer, by_role["customer"]) < 0.3, by_role
    text = vtt.read_text()
    assert "<v agent>" in text and "<v customer>" in text
    assert text.index("<v agent>") < text.index("<v customer>")  # in time order


def test_a_mono_wav_sent_as_two_channels_is_refused_by_the_client(base_stack: Stack, speech: Speech) -> None:
    code, _, stderr = run_client(base_stack.uri, speech.stream(16000, (1,)).path, "--channels", "2")
    assert code == 2 and "1 channels, need 2" in stderr


@pytest.mark.parametrize(("encoding", "sox_name"), [("mulaw", "u-law"), ("alaw", "a-law")])
def test_g711_from_a_real_encoder_is_transcribed(
    base_stack: Stack, speech: Speech, tmp_path: Path, encoding: str, sox_name: str
) -> None:
    stream = speech.stream(8000, (1, 3))
    g711 = tmp_path / f"speech.{encoding}"
    subprocess.run(["sox", str(stream.path), "-t", "raw", "-e", sox_name, "-b", "8", str(g711)], check=True)
    data = g711.read_bytes()
    frames: list[bytes | str] = [data[i : i + 160] for i in range(0, len(data), 160)]  # 20 ms
    events, close_code, _ = ws_exchange(
        f"{base_stack.uri}/?sample_rate=8000&encoding={encoding}", [*frames, "EOF"]
    )
    assert events[0]["encoding"] == encoding and close_code == 1000
    assert wer(" ".join(stream.texts), " ".join(f["text"] for f in finals(events))) < 0.25


def test_keepalive_holds_a_quiet_session_open_and_finalize_closes_a_segment_early(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--idle-timeout", "1", logs=tmp_path)
    try:
        long = speech.stream(16000, (5,))  # one long sentence, no pause in it
        start, end = long.utterances[0]
        middle = int((start + end) / 2 * 16000) * 2
        with connect(f"{uri}/?sample_rate=16000", open_timeout=10) as ws:
            assert '"ready"' in str(ws.recv(timeout=10))
            for _ in range(5):  # 2.5 s with no audio, more than the 1 s idle timeout
                ws.send('{"type": "keepalive"}')
                time.sleep(0.5)
            for i in range(0, middle, 3200):
                ws.send(long.pcm[i : min(i + 3200, middle)])
            ws.send('{"type": "finalize"}')  # mid-sentence: that part's final now
            for i in range(middle, len(long.pcm), 3200):
                ws.send(long.pcm[i : i + 3200])
            ws.send('{"type": "close_stream"}')
            events: list[dict[str, Any]] = []
            while not events or events[-1]["type"] != "done":
                events.append(json.loads(ws.recv(timeout=60)))
        got = finals(events)
        assert not [e for e in events if e["type"] == "error"], events
        assert len(got) >= 2 and got[0]["end"] == pytest.approx(middle / 2 / 16000, abs=0.05)
        assert wer(long.texts[0], " ".join(f["text"] for f in got)) < 0.35
    finally:
        ingest.stop()
