"""The usage event: the one definition of what crosses the wire and lands in storage.

Everything else (the emitter, the daemon's validator, the DuckDB columns, the
Arrow schema, the docs) is derived from `UsageEvent`, so a field is added here
and nowhere else.

Token meaning, normalized across providers (see docs/architecture.md):
- ``input_tokens`` counts *all* prompt tokens, cached ones included (OpenAI's
  meaning; Anthropic's ``input_tokens + cache_read + cache_creation``).
- ``cached_input_tokens`` is the part of ``input_tokens`` read from cache.
- ``cache_write_tokens`` is the part of ``input_tokens`` written to cache.
- ``output_tokens`` counts all generated tokens, reasoning included.
- ``reasoning_tokens`` is the part of ``output_tokens`` spent reasoning.
- ``cache_write_5m_tokens`` / ``cache_write_1h_tokens`` split ``cache_write_tokens`` by
  cache lifetime where the provider reports it (Anthropic's ``usage.cache_creation``);
  each write is priced at its own rate.

Pricing facts read from the *response* (what the call was served and billed at):
``service_tier`` as the provider names it (OpenAI ``default``/``flex``/``priority``/
``scale``; Anthropic ``standard``/``priority``/``batch``), Anthropic's ``speed`` and
``inference_geo``, and ``provider_cost_usd`` when the response carries its own cost
(an OpenAI-compatible router's ``usage.cost``).
"""

from __future__ import annotations

import os
import random
import time
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1

ErrorClass = Literal[
    "authentication",
    "permission",
    "not_found",
    "bad_request",
    "unprocessable",
    "rate_limit",
    "server",
    "timeout",
    "connection",
    "blocked",
    "other",
]

UsageSource = Literal["provider", "estimated", "missing"]

# Bounds keep one event small and every number inside DuckDB's BIGINT/DOUBLE.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_OptName = Annotated[str, msgspec.Meta(max_length=256)] | None
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Tokens = Annotated[int, msgspec.Meta(ge=0, le=10**12)] | None
_Millis = Annotated[float, msgspec.Meta(ge=0, le=86_400_000)] | None
_Epoch = Annotated[float, msgspec.Meta(ge=0, le=32_503_680_000)]  # up to year 3000
_Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)] | None
_Label = Annotated[str, msgspec.Meta(max_length=64)] | None
_Usd = Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None
_Tags = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=128)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=32),
]


class UsageEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One HTTP attempt against an LLM API (retries are separate events sharing ``call_id``)."""

    id: _Id
    call_id: _Id
    ts_start: _Epoch
    ts_end: _Epoch
    provider: _Name
    operation: _Name
    app: _Name = "default"
    host: _OptName = None
    pid: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0
    server_address: _OptName = None
    request_model: _OptName = None
    response_model: _OptName = None
    model: _OptName = None
    stream: bool = False
    http_status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    error_class: ErrorClass | None = None
    input_tokens: _Tokens = None
    output_tokens: _Tokens = None
    cached_input_tokens: _Tokens = None
    cache_write_tokens: _Tokens = None
    reasoning_tokens: _Tokens = None
    usage_source: UsageSource = "missing"
    latency_ms: _Millis = None
    ttft_ms: _Millis = None
    retry_attempt: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    user: _OptName = None
    tags: _Tags = {}
    trace_id: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    span_id: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    blocked: bool = False
    block_reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    ratelimit_remaining_requests: _Count = None
    ratelimit_remaining_tokens: _Count = None
    ratelimit_limit_requests: _Count = None
    ratelimit_limit_tokens: _Count = None
    service_tier: _Label = None
    speed: _Label = None
    inference_geo: _Label = None
    cache_write_5m_tokens: _Tokens = None
    cache_write_1h_tokens: _Tokens = None
    provider_cost_usd: _Usd = None
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION


EVENT_FIELDS: tuple[str, ...] = UsageEvent.__struct_fields__

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


def encode(event: UsageEvent) -> bytes:
    return _encoder.encode(event)


def encode_many(events: list[UsageEvent]) -> bytes:
    return _encoder.encode(events)


def decode(data: bytes | str) -> UsageEvent:
    """Decode and validate one event; raises ``msgspec.ValidationError`` naming the field."""
    event = _decoder.decode(data)
    if event.ts_end < event.ts_start:
        raise msgspec.ValidationError("ts_end is before ts_start - at `$.ts_end`")
    return event


def status_class(http_status: int | None) -> str:
    """'2xx'…'5xx', or 'none' when no response arrived (timeout, connection, blocked)."""
    if http_status is None:
        return "none"
    return f"{http_status // 100}xx"


def classify_status(http_status: int) -> ErrorClass | None:
    """Map an HTTP status to the error taxonomy users know from the OpenAI SDK."""
    if http_status < 400:
        return None
    return _STATUS_CLASSES.get(http_status) or ("server" if http_status >= 500 else "other")


_STATUS_CLASSES: dict[int, ErrorClass] = {
    400: "bad_request",
    401: "authentication",
    403: "permission",
    404: "not_found",
    422: "unprocessable",
    429: "rate_limit",
}


def _seed_ids() -> None:
    """Per-process generator for event ids: seeded once from os.urandom, reseeded in a fork child."""
    global _id_bits
    _id_bits = random.Random(os.urandom(32)).getrandbits


_id_bits = random.Random(os.urandom(32)).getrandbits
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_seed_ids)


def new_event_id(now: float | None = None) -> str:
    """A UUIDv7 string: time-ordered (good for DuckDB zone maps) and unique across processes."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    rand = _id_bits(74)  # 12 bits rand_a, then 62 bits rand_b (14 + 48)
    variant = 0x8000 | ((rand >> 48) & 0x3FFF)  # variant 0b10, then 14 bits of rand_b
    return "%08x-%04x-7%03x-%04x-%012x" % (ms >> 16, ms & 0xFFFF, rand >> 62, variant, rand & 0xFFFFFFFFFFFF)  # noqa: UP031 (faster than the f-string)


def local_host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else "unknown"
