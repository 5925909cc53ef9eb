"""Reader for the CTranslate2 ``model.bin`` container and its Whisper weight layout.

Format (binary version 6, little-endian), as written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``::

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x (str name | u8 ndim | ndim x u32 dim | u8 dtype | u32 nbytes | data)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is ``u16 length (incl. NUL) | utf-8 bytes | NUL`` and dtype is an index
into (float32, int8, int16, int32, float16, bfloat16).  Zero-dimensional int variables
are spec settings (e.g. ``decoder/num_heads``), not weights.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

SUPPORTED_VERSION = 6
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class Ct2FormatError(ValueError):
    """The bytes are not a CTranslate2 model this reader understands."""


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, NDArray[np.generic]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> NDArray[np.generic]:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(()).item())


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Ct2FormatError(f"truncated model.bin at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        value: int = struct.unpack("<" + fmt, self.take(size))[0]
        return value

    def string(self) -> str:
        raw = self.take(self.uint("H"))
        if not raw.endswith(b"\0"):
            raise Ct2FormatError(f"string without NUL terminator at byte {self.pos}")
        return raw[:-1].decode("utf-8")


def _decode(raw: bytes, dtype_id: int, shape: tuple[int, ...]) -> NDArray[np.generic]:
    if dtype_id >= len(_DTYPES):
        raise Ct2FormatError(f"unknown dtype id {dtype_id}")
    name = _DTYPES[dtype_id]
    if name == "bfloat16":  # numpy has no bfloat16: widen the bit pattern to float32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(name).newbyteorder("<")).reshape(shape)


def parse_model_bin(data: bytes) -> Ct2Model:
    cur = _Cursor(data)
    version = cur.uint("I")
    if version != SUPPORTED_VERSION:
        raise Ct2FormatError(f"binary version {version} unsupported (expected {SUPPORTED_VERSION})")
    model = Ct2Model(spec=cur.string(), revision=cur.uint("I"))
    for _ in range(cur.uint("I")):
        name = cur.string()
        shape = tuple(cur.uint("I") for _ in range(cur.uint("B")))
        dtype_id = cur.uint("B")
        model.variables[name] = _decode(cur.take(cur.uint("I")), dtype_id, shape)
    for _ in range(cur.uint("I")):
        alias = cur.string()
        model.aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise Ct2FormatError(f"{len(data) - cur.pos} trailing bytes after the alias table")
    return model


def _split(arr: NDArray[np.generic], parts: int) -> list[NDArray[np.float32]]:
    return [p.astype(np.float32) for p in np.split(arr, parts, axis=0)]


def whisper_state_dict(model: Ct2Model) -> dict[str, NDArray[np.float32]]:
    """Map a WhisperSpec onto ``WhisperForConditionalGeneration`` keys (fp32, untied head)."""
    if model.spec != "WhisperSpec":
        raise Ct2FormatError(f"expected a WhisperSpec model, got {model.spec}")
    if any(name.endswith("weight_scale") for name in model.variables):
        raise Ct2FormatError("int8-quantized models are not supported")
    out: dict[str, NDArray[np.float32]] = {}
    used: set[str] = set()

    def take(name: str) -> NDArray[np.generic]:
        used.add(model.aliases.get(name, name))
        return model.get(name)

    def put(dst: str, src: str) -> None:
        out[dst] = take(src).astype(np.float32)

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/weight")
        put(f"{dst}.bias", f"{src}/bias")

    def fused(dst: str, src: str, names: tuple[str, ...]) -> None:
        weights, biases = _split(take(f"{src}/weight"), len(names)), _split(take(f"{src}/bias"), len(names))
        for proj, w, b in zip(names, weights, biases, strict=True):
            out[f"{dst}.{proj}_proj.weight"] = w
            if proj == "k":  # Whisper's key projection has no bias; CTranslate2 stores zeros
                if np.any(b):
                    raise Ct2FormatError(f"{src}/bias: non-zero key bias cannot be represented")
            else:
                out[f"{dst}.{proj}_proj.bias"] = b

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        put(f"{hf}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        layer_ids = {int(m.group(1)) for n in model.variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
        for i in sorted(layer_ids):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_0", ("q",))
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k", "v"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    head = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if head != "decoder/embeddings/weight":
        raise Ct2FormatError("output projection is not tied to the token embeddings")
    leftover = [n for n, v in model.variables.items() if n not in used and v.ndim > 0]
    if leftover:
        raise Ct2FormatError(f"unmapped tensors: {', '.join(sorted(leftover))}")
    return out
