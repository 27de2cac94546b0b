"""An upper bound on a request's input tokens, by the shape of what it sends (docs/limits.md).

Text, in any script: every tokenizer in use (byte-level BPE, SentencePiece with byte
fallback) spends at least one UTF-8 byte per token, so the request body's byte count
bounds the tokens of all the text in it, JSON keys included — and the keys (~28 bytes
a message) more than cover the few template tokens a provider adds per message.
``bytes / 4`` would be an estimate, not a bound: CJK text is ~1 token a character
(3 bytes) and unusual strings can reach 1 token a byte.

Media are not text: their base64 bytes are taken out of the count and each part is
bounded by the provider's documented formula (images by detail and size, read from
the image's header when it is inline; the model's maximum otherwise), audio by its
duration, files by their pages. Tools add the tool-use system prompt Anthropic
documents. Only a body that mentions a media part is parsed (a byte search tells),
so the call path of a text request stays a ``len()`` and two searches.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from typing import Any

import msgspec

from costwatch.instrumentation.providers import ANTHROPIC

__all__ = ["image_size", "image_tokens", "input_bound"]

# A media part's type, as the chat, Responses and Messages APIs spell it, and the tools keys:
# one regex pass over the body finds them all (~22 us on a 96 KB text body, 1 us on 0.5 KB).
_MARKERS_RE = re.compile(
    rb'"(image_url|input_image|image|input_audio|input_file|file|document|tools|functions)"'
)
_TOOL_KEYS = frozenset((b"tools", b"functions"))
# Anthropic documents its tool-use system prompt at 159-530 tokens depending on the model
# and tool_choice (530: Claude 3 Opus); reserved whenever a request defines tools.
TOOLS_SYSTEM_TOKENS = 600
# Anthropic-defined tools with a documented fixed cost (definition + system prompt).
_FIXED_TOOLS = ((b'"computer_', 735 + 499), (b'"text_editor_', 700), (b'"bash_2', 245))

# OpenAI image formulas. Tile models: base + per tile of 512 px after fitting into
# 2048 x 2048 and scaling the shortest side to 768 (at most 8 tiles); "low" detail is base.
_TILES: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667),
    ("computer-use-preview", 65, 129),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("gpt-4o", 85, 170),
    ("chatgpt-4o", 85, 170),
    ("gpt-4.1", 85, 170),
    ("gpt-4.5", 85, 170),
    ("gpt-4-turbo", 85, 170),
    ("gpt-4-vision", 85, 170),
    ("gpt-5", 85, 170),
)
# Patch models: 32-px patches, at most 1536, times a per-model multiplier.
_PATCHES: tuple[tuple[str, float], ...] = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
)
MAX_PATCHES = 1536
# A model none of the formulas names: the largest image any of them allows (gpt-4o-mini, 8 tiles).
MAX_IMAGE_TOKENS = 2833 + 8 * 5667
# Anthropic: tokens = width x height / 750 after fitting the long edge into 1568 px and the
# area into ~1.2 MP (1092 x 1092 is the documented square maximum): ~1,600 at most.
ANTHROPIC_IMAGE_MAX = 1600
_ANTHROPIC_EDGE = 1568
_ANTHROPIC_AREA = 1_200_000

# Audio: OpenAI counts input audio at ~10 tokens a second; twice that is reserved. Without a
# WAV header the duration is bounded by the lowest MP3 bit rate (8 kbit/s = 1,000 bytes a second).
AUDIO_TOKENS_PER_S = 20
_MIN_AUDIO_BYTES_PER_S = 1000
# Files (PDF): each page costs its text and an image of the page. Anthropic documents
# 1,500-3,000 text tokens a page: 3,000 plus the largest page image is reserved per page.
PAGE_TEXT_TOKENS = 3000
# A file or document by id or URL: its content is not in the request (an assumption, see docs).
FILE_REF_TOKENS = 200_000

_HEADER_BYTES = 64 * 1024  # an image's size is in its first bytes (JPEG: before the first frame)
_PAGE_RE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def input_bound(body: bytes, provider: str, model: str | None) -> int:
    """At most this many input tokens for this request body (see the module docstring)."""
    n = len(body)
    found = {m.group(1) for m in _MARKERS_RE.finditer(body)}
    if not found:
        return n
    extra = 0
    if found & _TOOL_KEYS:
        extra += TOOLS_SYSTEM_TOKENS
        for marker, tokens in _FIXED_TOOLS:
            if marker in body:
                extra += tokens
    if not found - _TOOL_KEYS:
        return n + extra
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return n + extra
    media = _Media(provider, model or "")
    media.walk(doc, 0)
    return max(n - media.payload_bytes, 0) + media.tokens + extra


class _Media:
    __slots__ = ("model", "payload_bytes", "provider", "tokens")

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.tokens = 0
        self.payload_bytes = 0  # base64 payloads: bytes of the body that are not text

    def walk(self, node: Any, depth: int) -> None:
        if depth > 64:
            return
        if isinstance(node, list):
            for item in node:
                self.walk(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind in ("image_url", "input_image", "image") and self._image(node, kind):
            return
        if kind == "input_audio" and isinstance(node.get("input_audio"), dict):
            self._audio(node["input_audio"])
            return
        if kind in ("file", "input_file", "document"):
            self._file(node)
            return
        for value in node.values():
            if isinstance(value, (dict, list)):
                self.walk(value, depth + 1)

    def _payload(self, value: Any, prefix: int = 0) -> bytes | None:
        """The decoded bytes of a data URL or base64 string (counted out of the text); with
        ``prefix``, only about that many leading bytes (a header is all an image needs)."""
        if not isinstance(value, str):
            return None
        text = value
        if text.startswith("data:"):
            text = text.partition(",")[2]
        if len(text) < 64 or text.startswith(("http://", "https://")):
            return None
        self.payload_bytes += len(value)
        if prefix:
            text = text[: prefix * 4 // 3 + 4]
        try:
            return base64.b64decode(text[: len(text) - len(text) % 4], validate=False)
        except (binascii.Error, ValueError):
            return b""

    def _image(self, node: dict, kind: str) -> bool:
        detail = None
        data: Any = None
        if kind == "image_url":  # chat: {"type": "image_url", "image_url": {"url", "detail"}}
            inner = node.get("image_url")
            if isinstance(inner, dict):
                data, detail = inner.get("url"), inner.get("detail")
            else:
                data = inner
        elif kind == "input_image":  # Responses: {"type": "input_image", "image_url", "detail"}
            data, detail = node.get("image_url"), node.get("detail")
        else:  # Messages: {"type": "image", "source": {"type": "base64", "data"} | url | file}
            source = node.get("source")
            if not isinstance(source, dict):
                return False
            data = source.get("data")
        payload = self._payload(data, _HEADER_BYTES)
        size = image_size(payload) if payload else None
        self.tokens += image_tokens(self.provider, self.model, detail, size)
        return True

    def _audio(self, audio: dict) -> None:
        payload = self._payload(audio.get("data")) or b""
        seconds = _wav_seconds(payload)
        if seconds is None:
            seconds = len(payload) / _MIN_AUDIO_BYTES_PER_S
        self.tokens += math.ceil(seconds * AUDIO_TOKENS_PER_S) + 1

    def _file(self, node: dict) -> None:
        inner = node.get("file") if isinstance(node.get("file"), dict) else node
        source = node.get("source") if isinstance(node.get("source"), dict) else None
        data = inner.get("file_data") if isinstance(inner, dict) else None
        if source is not None:
            if source.get("type") == "text":  # a plain-text document: its bytes are text already
                return
            if source.get("type") == "content":
                self.walk(source.get("content"), 1)
                return
            data = source.get("data")
        payload = self._payload(data)
        if not payload:
            self.tokens += FILE_REF_TOKENS  # by id or URL: the content is not in the request
            return
        if not payload.startswith(b"%PDF"):  # a text file: one token a byte at most
            self.tokens += len(payload)
            return
        pages = len(_PAGE_RE.findall(payload))
        if not pages:  # pages hidden in compressed object streams: as unknown as a reference
            self.tokens += FILE_REF_TOKENS
            return
        image = image_tokens(self.provider, self.model, None, None)
        self.tokens += pages * (PAGE_TEXT_TOKENS + image)


def image_tokens(provider: str, model: str, detail: str | None, size: tuple[int, int] | None) -> int:
    """Tokens one image may cost: the provider's formula when the model and size are known."""
    if provider == ANTHROPIC:
        if size is None:
            return ANTHROPIC_IMAGE_MAX
        w, h = size
        scale = min(1.0, _ANTHROPIC_EDGE / max(w, h), math.sqrt(_ANTHROPIC_AREA / (w * h)))
        return min(ANTHROPIC_IMAGE_MAX, math.ceil(w * scale * h * scale / 750) + 1)
    name = model.lower().rpartition("/")[2]
    for prefix, mult in _PATCHES:
        if name.startswith(prefix):
            patches = MAX_PATCHES if size is None else min(MAX_PATCHES, _patches(*size))
            return math.ceil(patches * mult)
    for prefix, base, tile in _TILES:
        if name.startswith(prefix):
            if detail == "low":
                return base
            return base + tile * (8 if size is None else _tiles(*size))
    return MAX_IMAGE_TOKENS


def _tiles(w: int, h: int) -> int:
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return min(8, math.ceil(w / 512) * math.ceil(h / 512))


def _patches(w: int, h: int) -> int:
    return math.ceil(w / 32) * math.ceil(h / 32)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, JPEG or WebP header; None when unknown or implausible."""
    size: tuple[int, int] | None = None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
    if size is None or not (0 < size[0] <= 100_000 and 0 < size[1] <= 100_000):
        return None
    return size


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _wav_seconds(data: bytes) -> float | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or len(data) < 44:
        return None
    byte_rate = struct.unpack("<I", data[28:32])[0]
    if byte_rate <= 0:
        return None
    return max(len(data) - 44, 0) / byte_rate
