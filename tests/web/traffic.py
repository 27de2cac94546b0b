"""Known traffic for the spend-page tests: fixed prices, seeded events, and their exact totals."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass

from costwatch.events import UsageEvent, new_event_id
from costwatch.settings import PriceOverride

# USD per million tokens, set as daemon overrides so every cost is known in advance.
PRICES = {
    "cw-large": (10.0, 30.0),
    "cw-small": (0.5, 1.5),
    "cw-embed": (0.02, 0.0),
}
UNPRICED = "cw-mystery"  # no price anywhere: cost NULL, never $0
PRICE_OVERRIDES = [
    PriceOverride(model=model, input_per_mtok=rate_in, output_per_mtok=rate_out)
    for model, (rate_in, rate_out) in PRICES.items()
]
USERS = ["alice", "bob", "carol", "dave", None]
APPS = ["chatbot", "batch-summaries", "search"]
ERRORS = [(429, "rate_limit"), (500, "server"), (None, "timeout")]
DAY = 86400.0


@dataclass
class Traffic:
    events: list[UsageEvent]
    cost_by_model_30d: dict[str, float]
    cost_by_user_30d: dict[str, float]
    total_30d: float
    estimated_30d: int  # calls with usage_source 'estimated' in the last 30 days
    estimated_usd_30d: float  # and their cost


def cost(model: str | None, input_tokens: int, output_tokens: int) -> float | None:
    if model not in PRICES:
        return None
    rate_in, rate_out = PRICES[model]
    return input_tokens * rate_in / 1e6 + output_tokens * rate_out / 1e6


def make_traffic(now: float | None = None, seed: int = 7) -> Traffic:
    """~400 events: dense over the last 24 h, sparse over 20 days, and a few 40 days old (out of 30d)."""
    now = time.time() if now is None else now
    rng = random.Random(seed)
    ages = [rng.uniform(60, DAY - 120) for _ in range(260)]
    ages += [rng.uniform(DAY, 20 * DAY) for _ in range(120)]
    ages += [40 * DAY + rng.uniform(0, DAY) for _ in range(10)]
    events: list[UsageEvent] = []
    by_model: dict[str, float] = defaultdict(float)
    by_user: dict[str, float] = defaultdict(float)
    estimated = [0, 0.0]
    for n, age in enumerate(ages):
        model = rng.choices([*PRICES, UNPRICED], weights=[3, 6, 2, 1])[0]
        user = rng.choice(USERS)
        status, error = rng.choice(ERRORS) if rng.random() < 0.08 else (200, None)
        ok = error is None
        input_tokens = rng.randrange(200, 8000) if ok else 0
        output_tokens = (rng.randrange(20, 1500) if model != "cw-embed" else 0) if ok else 0
        latency = rng.uniform(150, 4000) if model != "cw-embed" else rng.uniform(30, 200)
        ts = now - age
        remaining = rng.randrange(5, 500)
        events.append(
            UsageEvent(
                id=new_event_id(ts),
                call_id=f"call-{n}",
                ts_start=ts,
                ts_end=ts + latency / 1000,
                provider="openai",
                operation="embeddings" if model == "cw-embed" else "chat",
                app=APPS[n % len(APPS)],
                model=model,
                http_status=status,
                error_class=error,  # type: ignore[arg-type]
                input_tokens=input_tokens if ok else None,
                output_tokens=output_tokens if ok else None,
                # every 9th successful chat call: a stream that ended without usage (estimated, priced)
                usage_source=("estimated" if n % 9 == 0 and model != "cw-embed" else "provider")
                if ok
                else "missing",
                latency_ms=latency,
                ttft_ms=latency * rng.uniform(0.1, 0.4) if ok and model != "cw-embed" else None,
                user=user,
                ratelimit_remaining_requests=remaining if ok else None,
                ratelimit_limit_requests=500 if ok else None,
                ratelimit_remaining_tokens=remaining * 400 if ok else None,
                ratelimit_limit_tokens=200_000 if ok else None,
            )
        )
        c = cost(model, input_tokens, output_tokens) if ok else None
        if age < 30 * DAY:
            by_model[model] += c or 0.0
            by_user[user or "(none)"] += c or 0.0
            if events[-1].usage_source == "estimated":
                estimated[0] += 1
                estimated[1] += c or 0.0
    return Traffic(
        events, dict(by_model), dict(by_user), sum(by_model.values()), int(estimated[0]), float(estimated[1])
    )
