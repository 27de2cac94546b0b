"""How a call was served (service tier, speed, geography) as a price context for genai-prices.

The tier comes from the response (`UsageEvent.service_tier`, `speed`, `inference_geo`).
genai-prices ships non-standard tiers as *price variants* selected by a request context:
``{"service_tier": "flex" | "priority" | "fast"}``, ``{"processing": "batch"}``,
``{"speed": "fast"}``. A tier the model has no variant for is priced by a published rule
where one exists (`costwatch.pricing.published_rules`) and is otherwise unpriced, never
silently billed at the standard rate. Commitment tiers (OpenAI ``scale``, Anthropic
``priority``) are billed by the capacity bought, not per token: their tokens are priced at
list rates, and the stored tier tells them apart.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from costwatch.pricing.published_rules import BATCH_RULE, FLEX_AS_BATCH, geo_multiplier
from costwatch.pricing.rates import ONE

__all__ = ["Context", "price_context", "variant_context"]

# What a response's tier/speed/geography mean for the price, normalized (see `price_context`).
Context = tuple[str | None, str | None, str | None]  # (tier, speed, geo)
# Tiers billed at the standard per-token rate: the default tier, and the commitment tiers whose
# capacity is bought up front (OpenAI scale; Anthropic's Priority Tier, whose capacity burns down
# at the list-price ratios, platform.claude.com/docs/en/api/service-tiers).
_STANDARD_TIERS = {"", "default", "standard", "auto", "standard_only", "scale"}
_COMMITMENT_TIERS = {"anthropic": {"priority"}}


def price_context(provider: str, service_tier: str | None, speed: str | None, geo: str | None) -> Context:
    """The response's tier, speed and geography reduced to what changes the price."""
    tier = (service_tier or "").strip().lower()
    if tier in _STANDARD_TIERS or tier in _COMMITMENT_TIERS.get(provider, ()):
        tier = ""
    sp = (speed or "").strip().lower()
    if sp == "standard":
        sp = ""
    where = (geo or "").strip().lower()
    return (tier or None, sp or None, "us" if where == "us" else None)


def variant_context(
    provider: str, model_info: Any, context: Context
) -> tuple[dict[str, str], Decimal] | None:
    """genai-prices' ``price_context`` for this tier and the multiplier of the rules applied on top.

    None when the model has no variant for a tier and no published rule covers it (unpriced).
    """
    wanted = _genai_context(context)
    multiplier = ONE
    for key, value in list(wanted.items()):
        if _has_variant(model_info, key, value, wanted):
            continue
        # No variant for this tier: a published rule, or no price at all (never the standard rate).
        if key == "service_tier" and value == "flex" and provider in FLEX_AS_BATCH:
            del wanted[key]
            if _has_variant(model_info, "processing", "batch", {**wanted, "processing": "batch"}):
                wanted["processing"] = "batch"
            else:
                multiplier *= BATCH_RULE[provider]
        elif key == "processing" and provider in BATCH_RULE:
            del wanted[key]
            multiplier *= BATCH_RULE[provider]
        else:
            return None
    return wanted, multiplier * geo_multiplier(model_info.id, context[2])


def _genai_context(context: Context) -> dict[str, str]:
    """Our context as genai-prices' ``price_context`` (its price-variant keys)."""
    tier, speed, _ = context
    out: dict[str, str] = {}
    if tier == "batch":
        out["processing"] = "batch"
    elif tier is not None:
        out["service_tier"] = tier
    if speed is not None:
        out["speed"] = speed
    return out


def _has_variant(model_info: Any, key: str, value: str, context: dict[str, str]) -> bool:
    """Whether genai-prices would apply a variant for ``key = value`` in this context (today)."""
    now = datetime.now(tz=timezone.utc)
    return any(
        v.when.get(key) == value
        and all(context.get(k) == w for k, w in v.when.items())
        and (v.constraint is None or v.constraint.active(now))
        for v in model_info.price_variants or ()
    )
