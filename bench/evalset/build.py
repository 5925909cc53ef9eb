"""Rebuild bench/evalset from its sources: FLAC 16 kHz mono 16-bit at the levels as recorded.

    .venv/bin/python -m bench.evalset.build [--out bench/evalset]

Run by hand, never by the tests or benches (they read the FLACs and ``manifest.jsonl`` kept in the
repository). Sources (SOURCES.md says more):

- PyPI ``pocketsphinx==5.1.1`` (sdist, sha256 pinned below; BSD-2-Clause, CMU): the five LibriVox
  sentences of ``test/data/librivox`` (public domain) with ``transcription``, the five card-game
  utterances of ``test/data/cards`` with ``cards.transcription``, and ``test/data/goforward.raw``
  ("go forward ten meters", the sentence its decoder tests assert). Downloaded with pip.
- ``audio/oriserve-examples`` of this repository (Apache-2.0): six real Hindi call clips. They
  have no reference transcript: ``text`` is null and the bench counts only output, loops and
  hallucinations on them.
- One quiet case: the LibriVox sentence 0920 once more, attenuated by ``QUIET_GAIN_DB`` (the only
  level change anywhere here, recorded as ``gain_db`` in its manifest line): none of the recordings
  above peaks below -40 dBFS, and speech that quiet is what the VAD must still hear.

sox converts (``-D``: no dither, so a rebuild gives the same bytes); nothing is normalised.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
POCKETSPHINX = "pocketsphinx==5.1.1"
POCKETSPHINX_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
QUIET_SOURCE = "librivox-0920"
QUIET_GAIN_DB = -40.0
RATE = 16000


@dataclass(frozen=True)
class Item:
    id: str
    file: str
    text: str | None  # the exact reference; None: there is none (counted, never scored)
    language: str  # en, hi
    speaker: str
    source: str
    licence: str
    duration: float  # seconds
    peak_dbfs: float
    sha256: str  # of the FLAC
    gain_db: float = 0.0  # level change from the recording (0: as recorded)


def peak_dbfs(path: Path) -> float:
    samples, _ = sf.read(path, dtype="int16")
    peak = int(np.max(np.abs(samples.astype(np.int32)))) if len(samples) else 0
    return round(float(20 * np.log10(max(peak, 1) / 32768)), 2)


def to_flac(src: list[str], out: Path, gain_db: float = 0.0) -> None:
    """sox ``src`` (a file, or raw-format options then a file) to FLAC 16 kHz mono 16-bit."""
    gain = ["gain", str(gain_db)] if gain_db else []
    cmd = ["sox", "-D", *src, "-r", str(RATE), "-c", "1", "-b", "16", str(out), *gain]
    subprocess.run(cmd, check=True)


def item(out: Path, name: str, **fields: object) -> Item:
    path = out / "audio" / f"{name}.flac"
    info = sf.info(path)
    assert info.samplerate == RATE and info.channels == 1 and info.subtype == "PCM_16", info
    return Item(
        id=name,
        file=f"audio/{name}.flac",
        duration=round(info.frames / RATE, 3),
        peak_dbfs=peak_dbfs(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        **fields,  # type: ignore[arg-type]
    )


def pocketsphinx_sdist(workdir: Path) -> Path:
    """The pinned pocketsphinx sdist from PyPI, unpacked; its hash checked."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
    subprocess.run([*pip, POCKETSPHINX, "-d", str(workdir)], check=True)
    (archive,) = workdir.glob("pocketsphinx-*.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != POCKETSPHINX_SHA256:
        raise SystemExit(f"error: {archive.name} has sha256 {digest}, not {POCKETSPHINX_SHA256}")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return next(workdir.glob("pocketsphinx-*/test/data"))


def sphinx_transcripts(path: Path) -> dict[str, str]:
    """``<s> words </s> (id)`` lines: id -> words."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*", line)
        if match:
            found[match.group(2)] = " ".join(match.group(1).split())
    return found


def build(out: Path) -> list[Item]:
    (out / "audio").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    sdist = "PyPI pocketsphinx 5.1.1 (sdist)"
    with tempfile.TemporaryDirectory() as tmp:
        data = pocketsphinx_sdist(Path(tmp))
        librivox = sphinx_transcripts(data / "librivox" / "transcription")
        for key, text in sorted(librivox.items()):
            name = "librivox-" + key.rsplit("-", 1)[1]
            to_flac([str(data / "librivox" / f"{key}.wav")], out / "audio" / f"{name}.flac")
            items.append(
                item(out, name, text=text, language="en", speaker="librivox-sense-and-sensibility-01",
                     source=f"{sdist} test/data/librivox/{key}.wav",
                     licence="public domain (LibriVox recording); files BSD-2-Clause (CMU)")
            )  # fmt: skip
        quiet = f"{QUIET_SOURCE}-quiet"
        source = next(i for i in items if i.id == QUIET_SOURCE)
        to_flac([str(out / source.file)], out / "audio" / f"{quiet}.flac", QUIET_GAIN_DB)
        fields = {k: v for k, v in asdict(source).items() if k in ("text", "language", "speaker", "licence")}
        items.append(
            item(out, quiet, **fields, source=f"{source.source}, attenuated {QUIET_GAIN_DB:g} dB",
                 gain_db=QUIET_GAIN_DB)
        )  # fmt: skip
        cards = sphinx_transcripts(data / "cards" / "cards.transcription")
        for key, text in sorted(cards.items()):
            name = f"cards-{key}"
            to_flac([str(data / "cards" / f"{key}.wav")], out / "audio" / f"{name}.flac")
            items.append(
                item(out, name, text=text, language="en", speaker="pocketsphinx-cards",
                     source=f"{sdist} test/data/cards/{key}.wav", licence="BSD-2-Clause (CMU)")
            )  # fmt: skip
        raw = ["-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1", "-L"]
        to_flac([*raw, str(data / "goforward.raw")], out / "audio" / "goforward.flac")
        items.append(
            item(out, "goforward", text="go forward ten meters", language="en",
                 speaker="pocketsphinx-goforward", source=f"{sdist} test/data/goforward.raw",
                 licence="BSD-2-Clause (CMU)")
        )  # fmt: skip
    for wav in sorted((ROOT / "audio" / "oriserve-examples").glob("*.wav")):
        call = wav.stem.split("_")[0]
        name = f"oriserve-{wav.stem[:8]}-{wav.stem.rsplit('_', 2)[1]}"
        to_flac([str(wav)], out / "audio" / f"{name}.flac")
        items.append(
            item(out, name, text=None, language="hi", speaker=f"oriserve-call-{call[:8]}",
                 source=f"audio/oriserve-examples/{wav.name} (OriserveAI/Whisper-Hindi2Hinglish examples/)",
                 licence="Apache-2.0")
        )  # fmt: skip
    with open(out / "manifest.jsonl", "w") as manifest:
        for entry in items:
            manifest.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    items = build(args.out)
    minutes = sum(i.duration for i in items) / 60
    print(f"{len(items)} utterances, {minutes:.1f} min, {len({i.speaker for i in items})} speakers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
