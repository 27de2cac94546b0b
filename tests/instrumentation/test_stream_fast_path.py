"""The byte-level scan of a usual chat stream (`scan_chunks`) finds what the general SSE scan finds.

`scan_chunks` decodes only the first events (up to the first content) and the usage
event; whenever the stream is not the usual shape it must say so (None) so the
general path runs instead — and so must a stream without usage, whose generated
text the general path counts for the estimate.
"""

from __future__ import annotations

import json
import random

import pytest

from costwatch.instrumentation import anthropic as anthropic_usage
from costwatch.instrumentation import openai_stream
from costwatch.instrumentation.sse import iter_events
from tests.fakes.provider import FIXTURES

CHAT_FIXTURES = sorted(p.name for p in FIXTURES.glob("openai_chat_stream_*.sse"))


def _one_event_per_chunk(raw: bytes) -> list[tuple[bytes, float]]:
    blocks = [b + b"\n\n" for b in raw.split(b"\n\n") if b.strip()]
    return [(block, float(i)) for i, block in enumerate(blocks)]


def _general(api: str, chunks: list[tuple[bytes, float]]) -> tuple[object, ...]:
    facts = openai_stream.scan_stream(api, list(iter_events(chunks)))
    return facts.usage, facts.usage_final, facts.response_model, facts.first_content_t, facts.terminal


def _fast(api: str, chunks: list[tuple[bytes, float]]) -> tuple[object, ...] | None:
    facts = openai_stream.scan_chunks(api, chunks)
    if facts is None:
        return None
    return facts.usage, facts.usage_final, facts.response_model, facts.first_content_t, facts.terminal


@pytest.mark.parametrize("name", CHAT_FIXTURES)
def test_fixture_streams_agree(name: str) -> None:
    chunks = _one_event_per_chunk((FIXTURES / name).read_bytes())
    assert chunks[-1][0] == b"data: [DONE]\n\n"
    fast = _fast("chat", chunks)
    if "no_usage" in name:
        assert fast is None, "a stream without usage goes to the general path (text count)"
        return
    assert fast is not None, "a usual stream must take the fast path"
    assert fast == _general("chat", chunks)


def _chunk(delta: dict[str, object] | None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, object] = {"id": "c", "model": "gpt-4o-mini-2024-07-18", "usage": usage}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@pytest.mark.parametrize("seed", range(40))
def test_generated_streams_agree(seed: int) -> None:
    rng = random.Random(seed)
    deltas: list[dict[str, object]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": ""} for _ in range(rng.randrange(3))]  # empty content is not a token
    kind = rng.choice(["text", "tool", "none"])
    if kind == "tool":
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
    for _ in range(rng.randrange(1 if kind == "text" else 0, 8)):
        deltas.append({"content": rng.choice(["Hi", " there", "✓", '"quoted"'])})
    raw = [_chunk(d) for d in deltas]
    with_usage = rng.random() < 0.8
    if with_usage:
        usage = {
            "prompt_tokens": rng.randrange(1, 99),
            "completion_tokens": rng.randrange(0, 99),
            "total_tokens": 0,
        }
        raw.append(_chunk(None, usage))
    raw.append(b"data: [DONE]\n\n")
    chunks = [(c, float(i)) for i, c in enumerate(raw)]
    fast = _fast("chat", chunks)
    general = _general("chat", chunks)
    if not with_usage:  # the general path counts the generated text for the estimate
        assert fast is None
        text = sum(len(d.get("content") or "") for d in deltas)  # type: ignore[arg-type]
        args = sum(len(c["function"]["arguments"]) for d in deltas for c in d.get("tool_calls") or [])  # type: ignore[index,union-attr]
        chars = openai_stream.scan_stream("chat", list(iter_events(chunks))).text_chars
        assert chars == text + args
    elif fast is None:  # allowed only where the fast path cannot tell TTFT from bytes
        assert kind == "none"
    else:
        assert fast == general


def _cut(raw: bytes, rng: random.Random) -> list[tuple[bytes, float]]:
    """``raw`` cut at random byte positions, as a network read may: events split and merged."""
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randrange(1, 40))))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    return [(piece, float(i)) for i, piece in enumerate(pieces)]


@pytest.mark.parametrize("name", CHAT_FIXTURES)
@pytest.mark.parametrize("seed", range(10))
def test_any_chunking_agrees(name: str, seed: int) -> None:
    chunks = _cut((FIXTURES / name).read_bytes(), random.Random(seed))
    fast = _fast("chat", chunks)
    if "no_usage" in name:
        assert fast is None
        return
    assert fast is not None, "a plain LF stream takes the fast path however it is chunked"
    assert fast == _general("chat", chunks)  # TTFT: the chunk that completed the first content event


def test_unusual_shapes_fall_back() -> None:
    raw = (FIXTURES / CHAT_FIXTURES[0]).read_bytes()
    chunks = _one_event_per_chunk(raw)
    assert _fast("chat", chunks[:-1]) is None  # no [DONE]: unfinished, the general path estimates
    crlf = [(c.replace(b"\n", b"\r\n"), t) for c, t in chunks]
    assert _fast("chat", crlf) is None
    assert _fast("responses", chunks) is None
    named = [(b"event: chunk\n" + chunks[1][0], 1.0), *chunks[2:]]  # an event of two lines
    assert _fast("chat", [chunks[0], *named]) is None
    comment = [chunks[0], (b": keep-alive\n\n", 0.5), *chunks[1:]]  # a comment is one line, skipped
    assert _fast("chat", comment) == _general("chat", comment)


# Named-event streams (Anthropic Messages, OpenAI Responses): `named_blocks` reads each block's
# type from its bytes, so only the events that carry usage and the first delta are decoded.
NAMED_FIXTURES = sorted(
    p.name
    for p in [*FIXTURES.glob("anthropic_stream_*.sse"), *FIXTURES.glob("openai_responses_stream_*.sse")]
)


def _named_general(name: str, chunks: list[tuple[bytes, float]]) -> tuple[object, ...]:
    events = list(iter_events(chunks))
    if name.startswith("anthropic"):
        facts = anthropic_usage.scan_stream(events)
    else:
        facts = openai_stream.scan_stream("responses", events)
    return facts.usage, facts.usage_final, facts.response_model, facts.first_content_t, facts.terminal


def _named_fast(name: str, chunks: list[tuple[bytes, float]]) -> tuple[object, ...] | None:
    if name.startswith("anthropic"):
        facts = anthropic_usage.scan_chunks(chunks)
    else:
        facts = openai_stream.scan_chunks("responses", chunks)
    if facts is None:
        return None
    return facts.usage, facts.usage_final, facts.response_model, facts.first_content_t, facts.terminal


@pytest.mark.parametrize("name", NAMED_FIXTURES)
@pytest.mark.parametrize("seed", range(6))
def test_named_streams_agree(name: str, seed: int) -> None:
    raw = (FIXTURES / name).read_bytes()
    chunks = _one_event_per_chunk(raw) if seed == 0 else _cut(raw, random.Random(seed))
    general = _named_general(name, chunks)
    fast = _named_fast(name, chunks)
    if general[1] and general[0] is not None and general[0].output_tokens is not None:  # type: ignore[attr-defined]
        assert fast is not None, "a plain stream with its final usage takes the fast path"
    if fast is not None:
        assert fast == general


def test_named_unusual_shapes_fall_back() -> None:
    name = next(n for n in NAMED_FIXTURES if n.startswith("anthropic"))
    chunks = _one_event_per_chunk((FIXTURES / name).read_bytes())
    assert _named_fast(name, chunks) is not None
    crlf = [(c.replace(b"\n", b"\r\n"), t) for c, t in chunks]
    assert _named_fast(name, crlf) is None
    unfinished = [*chunks[:-1], (chunks[-1][0][:-1], chunks[-1][1])]
    assert _named_fast(name, unfinished) is None
    mislabelled = [(chunks[0][0].replace(b"event: message_start", b"event: ping"), 0.0), *chunks[1:]]
    assert _named_fast(name, mislabelled) is None  # the data's type decides, as in the general path
    no_usage = [(c, t) for c, t in chunks if b"message_delta" not in c]
    assert _named_fast(name, no_usage) is None  # no final usage: the general path counts the text
