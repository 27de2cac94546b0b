"""The reservation's input bound per request shape (costwatch/instrumentation/bounds.py)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from costwatch.instrumentation import bounds
from costwatch.instrumentation.bounds import (
    ANTHROPIC_IMAGE_MAX,
    FILE_REF_TOKENS,
    MAX_IMAGE_TOKENS,
    PAGE_TEXT_TOKENS,
    TOOLS_SYSTEM_TOKENS,
    image_size,
    image_tokens,
    input_bound,
)


def _png(w: int, h: int, pad: int = 2000) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
        + struct.pack(">II", w, h)
        + b"\x08\x02\x00\x00\x00"
        + b"\0" * pad
    )


def _jpeg(w: int, h: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\0" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\0" * 2000


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _chat(content: list, model: str = "gpt-4o", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def test_text_in_any_script_is_bounded_by_its_utf8_bytes() -> None:
    for text in ("hello world " * 50, "東京都の天気は晴れです。" * 50, "🙂" * 100):
        body = _chat(text)  # type: ignore[arg-type]
        assert input_bound(body, "openai", "gpt-4o") == len(body) >= len(text.encode())
    cjk = json.dumps({"messages": [{"role": "user", "content": "東京" * 100}]}, ensure_ascii=False).encode()
    assert input_bound(cjk, "openai", "gpt-4o") >= 200  # ~1 token a character; bytes/4 gave 154


def test_a_text_body_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(bounds.msgspec.json, "decode", boom)
    assert input_bound(_chat("an image of a cat, please"), "openai", "gpt-4o") > 0


def test_image_sizes_from_headers() -> None:
    assert image_size(_png(1024, 768)) == (1024, 768)
    assert image_size(_jpeg(640, 480)) == (640, 480)
    assert image_size(b"GIF89a" + struct.pack("<HH", 10, 20) + b"\0" * 10) == (10, 20)
    assert image_size(b"not an image") is None


@pytest.mark.parametrize(
    ("provider", "model", "detail", "size", "tokens"),
    [
        ("openai", "gpt-4o", "high", (1024, 1024), 765),  # OpenAI's worked examples
        ("openai", "gpt-4o", "high", (2048, 4096), 1105),
        ("openai", "gpt-4o-2024-08-06", "low", (4096, 4096), 85),
        ("openai", "gpt-4o", None, None, 85 + 8 * 170),  # size unknown: 8 tiles
        ("openai", "gpt-4o-mini", None, None, 2833 + 8 * 5667),
        ("openai", "gpt-4.1-mini", None, (1024, 1024), 1659),  # 32 x 32 patches x 1.62
        ("openai", "o4-mini", None, None, 2642),  # 1536 patches x 1.72
        ("openai", "some-local-model", "low", None, MAX_IMAGE_TOKENS),
        ("anthropic", "claude-sonnet-4-5", None, (1092, 1092), 1591),  # ~1,590 documented
        ("anthropic", "claude-sonnet-4-5", None, (8000, 8000), ANTHROPIC_IMAGE_MAX),
        ("anthropic", "claude-sonnet-4-5", None, None, ANTHROPIC_IMAGE_MAX),
    ],
)
def test_image_formulas(
    provider: str, model: str, detail: str | None, size: tuple | None, tokens: int
) -> None:
    assert image_tokens(provider, model, detail, size) == tokens


def test_inline_images_count_by_formula_not_by_base64_bytes() -> None:
    png = _png(1024, 1024, pad=300_000)
    body = _chat(
        [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": _data_url(png)}},
        ]
    )
    bound = input_bound(body, "openai", "gpt-4o")
    assert 765 < bound < 765 + 400  # the image's formula plus the text and keys, not 400k base64 bytes
    by_url = _chat(
        [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]
    )
    assert input_bound(by_url, "openai", "gpt-4o") == len(by_url) + 85
    responses = json.dumps(
        {
            "model": "gpt-4o",
            "input": [{"role": "user", "content": [{"type": "input_image", "image_url": _data_url(png)}]}],
        }
    ).encode()
    assert 765 < input_bound(responses, "openai", "gpt-4o") < 765 + 400
    anthropic = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                             "data": base64.b64encode(_jpeg(1092, 1092)).decode()}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
            ]}],
        }
    ).encode()  # fmt: skip
    assert input_bound(anthropic, "anthropic", "claude-sonnet-4-5") >= 1591 + ANTHROPIC_IMAGE_MAX


def test_audio_files_and_tools() -> None:
    wav = b"RIFF" + b"\0" * 4 + b"WAVE" + b"\0" * 16 + struct.pack("<I", 32_000) + b"\0" * 12 + b"\0" * 64_000
    audio = _chat(
        [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]
    )
    assert input_bound(audio, "openai", "gpt-4o-audio-preview") < 200  # 2 s: 41 tokens, plus the keys
    pdf = b"%PDF-1.7\n" + b"1 0 obj << /Type /Page >>\n" * 3 + b"<< /Type /Pages >>" + b"\0" * 5000
    doc = _chat(
        [{"type": "file", "file": {"filename": "a.pdf", "file_data": _data_url(pdf, "application/pdf")}}]
    )
    assert input_bound(doc, "openai", "gpt-4o") >= 3 * (PAGE_TEXT_TOKENS + 85 + 8 * 170)
    by_id = _chat([{"type": "file", "file": {"file_id": "file-abc"}}])
    assert input_bound(by_id, "openai", "gpt-4o") == len(by_id) + FILE_REF_TOKENS
    tools = _chat("hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert input_bound(tools, "anthropic", "claude-sonnet-4-5") == len(tools) + TOOLS_SYSTEM_TOKENS
