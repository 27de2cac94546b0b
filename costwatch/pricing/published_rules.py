"""Published price rules genai-prices does not carry, applied as multipliers on its rates.

Each rule is a provider's own pricing statement (docs/pricing.md cites them). A rule only
fills a gap: where genai-prices ships a variant for the tier, the variant wins
(`costwatch.pricing.tiers`).
"""

from __future__ import annotations

from decimal import Decimal

__all__ = ["BATCH_RULE", "FLEX_AS_BATCH", "geo_multiplier"]

# Batch discount for a model genai-prices has no batch variant for: 50 % of every token rate
# (OpenAI Batch API, Anthropic Message Batches, Gemini Batch Mode).
BATCH_RULE = {
    "openai": Decimal("0.5"),
    "azure.openai": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
    "google": Decimal("0.5"),
}
# OpenAI Flex processing is billed at Batch API rates (openai.com/api/pricing).
FLEX_AS_BATCH = {"openai", "azure.openai"}
# Anthropic US-only inference (`inference_geo: "us"`): 1.1x every token category on Claude Opus
# 4.6 and newer models (platform.claude.com/docs/en/api/service-tiers). genai-prices ids.
_US_GEO_MULTIPLIER = Decimal("1.1")
_US_GEO_MODELS = frozenset(
    {
        "claude-opus-4-6", "claude-sonnet-4-6", "claude-opus-4-7", "claude-opus-4-8",
        "claude-opus-5", "claude-opus-5-5", "claude-sonnet-5", "claude-sonnet-5-5",
        "claude-haiku-5-5", "claude-fable-5", "claude-fable-5-1", "claude-fable-5-2",
        "claude-mythos-5-2",
    }
)  # fmt: skip


def geo_multiplier(model_id: str, geo: str | None) -> Decimal:
    """What the request's geography multiplies every token rate by (genai-prices model id)."""
    if geo == "us" and model_id in _US_GEO_MODELS:
        return _US_GEO_MULTIPLIER
    return Decimal(1)
