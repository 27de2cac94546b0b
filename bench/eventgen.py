"""Realistic `UsageEvent`s, fast: a few models, apps and users, time-ordered, unique UUIDv7 ids."""

from __future__ import annotations

import random

from costwatch.events import UsageEvent, new_event_id

MODELS = [
    ("openai", "chat", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "chat", "gpt-4o", "gpt-4o-2024-08-06"),
    ("openai", "chat", "gpt-4.1", "gpt-4.1-2025-04-14"),
    ("openai", "responses", "o3-mini", "o3-mini-2025-01-31"),
    ("openai", "embeddings", "text-embedding-3-small", "text-embedding-3-small"),
    ("anthropic", "chat", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
    ("anthropic", "chat", "claude-3-5-haiku-20241022", "claude-3-5-haiku-20241022"),
    ("anthropic", "chat", "claude-opus-4-20250514", "claude-opus-4-20250514"),
]
APPS = ["chatbot", "search", "summarizer", "agent", "batch"]


def make_events(n: int, t0: float, seed: int, spacing_s: float = 0.001) -> list[UsageEvent]:
    """``n`` events starting at ``t0``, ``spacing_s`` apart on average."""
    rng = random.Random(seed)
    out = []
    t = t0
    users = [f"user-{i}" for i in range(1000)]
    for _ in range(n):
        t += spacing_s * (0.5 + rng.random())
        provider, op, model, response_model = MODELS[rng.randrange(len(MODELS))]
        latency = rng.lognormvariate(6.5, 0.6)
        stream = rng.random() < 0.4
        inp = rng.randrange(50, 4000)
        error = rng.random() < 0.01
        out.append(
            UsageEvent(
                id=new_event_id(t),
                call_id=new_event_id(t),
                ts_start=t,
                ts_end=t + latency / 1000,
                provider=provider,
                operation=op,
                app=APPS[rng.randrange(len(APPS))],
                host="bench-host",
                pid=4242,
                server_address="api.openai.com" if provider == "openai" else "api.anthropic.com",
                request_model=model,
                response_model=response_model,
                model=response_model,
                stream=stream,
                http_status=429 if error else 200,
                error_class="rate_limit" if error else None,
                input_tokens=None if error else inp,
                output_tokens=None if error else rng.randrange(1, 1500),
                cached_input_tokens=None if error else (inp // 2 if rng.random() < 0.3 else 0),
                cache_write_tokens=None,
                reasoning_tokens=None,
                usage_source="missing" if error else "provider",
                latency_ms=latency,
                ttft_ms=latency * 0.3 if stream else None,
                user=users[int(rng.paretovariate(1.2)) % len(users)],
                tags={"env": "prod"},
                ratelimit_remaining_requests=9999,
                ratelimit_remaining_tokens=1_999_000,
            )
        )
    return out
