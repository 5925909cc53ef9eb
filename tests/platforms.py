"""A telephony platform's side of a media stream, for the tests: the frames Twilio, Exotel or Plivo
would send for a call, each message shaped after the platform's documented example
(``tests/fixtures/telephony/<platform>.json``), carrying real audio encoded by a real encoder (sox)."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from services.stack import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "telephony"


def fixture(platform: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{platform}.json").read_text())
    return data


def encode(wav: Path, encoding: str, rate: int) -> bytes:
    """``wav`` as the platform carries it: G.711 mu-law (sox's encoder) or 16-bit PCM, mono, at ``rate``."""
    sox = ["-e", "u-law", "-b", "8"] if encoding == "mulaw" else ["-e", "signed", "-b", "16"]
    done = subprocess.run(
        ["sox", str(wav), "-t", "raw", "-r", str(rate), "-c", "1", *sox, "-"], capture_output=True, check=True
    )
    return done.stdout


def call_frames(
    platform: str,
    tracks: dict[str, bytes],
    bytes_per_frame: int,
    *,
    bytes_per_second: int = 8000,  # mu-law at 8 kHz
    start: dict[str, Any] | None = None,
    dtmf_at: float | None = None,
    mark_at: float | None = None,
    stop: bool = True,
) -> list[str]:
    """Every frame of a call whose tracks carry ``tracks`` (audio in the call's encoding): the
    platform's connected and start, then each track's media in frames of ``bytes_per_frame``
    interleaved as time goes, a DTMF and a mark where asked (in seconds), and its stop."""
    doc = fixture(platform)
    out: list[dict[str, Any]] = []
    if "connected" in doc:
        out.append(doc["connected"])
    out.append(start or doc["start"])
    frames = max(-(-len(audio) // bytes_per_frame) for audio in tracks.values())
    frame_s = bytes_per_frame / bytes_per_second
    for n in range(frames):
        at = n * frame_s
        for track, audio in tracks.items():
            chunk = audio[n * bytes_per_frame : (n + 1) * bytes_per_frame]
            if not chunk:
                continue
            media = copy.deepcopy(doc["media"])
            media["media"]["payload"] = base64.b64encode(chunk).decode()
            media["media"]["timestamp"] = str(round(at * 1000))
            if "track" in media["media"] or len(tracks) > 1:
                media["media"]["track"] = track
            out.append(media)
        if dtmf_at is not None and abs(at - dtmf_at) < frame_s / 2:
            out.append(doc["dtmf"])
        if mark_at is not None and abs(at - mark_at) < frame_s / 2:
            out.append(doc["mark"])
    if stop and "stop" in doc:
        out.append(doc["stop"])
    return [json.dumps(message) for message in out]
