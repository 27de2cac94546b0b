"""Cost from tokens: genai-prices rates (bundled data, no network), the config's overrides first.

docs/pricing.md lists every rate and where it comes from. The modules:

- `pricer`: `Pricer`, an event's cost (`Pricer.price`) and the per-event arithmetic;
- `table`: `Pricer.price_table`, a whole commit priced on Arrow columns (the writer's path),
  bit-for-bit equal to `Pricer.price`;
- `lookup`: genai-prices asked once per (provider, model, tier) for the model's rates, or
  `calc_price` per event for models whose price depends on the request time;
- `tiers`: the response's service tier, speed and geography as a genai-prices price context;
- `published_rules`: provider rules genai-prices lacks (batch 50 %, OpenAI flex at batch
  rates, Anthropic US-only inference 1.1x);
- `rates`: per-token rates (plain or long-context tiers), and a config override as rates;
- `costs`: what comes out, `Price` and `PRICE_COLUMNS`.
"""

from costwatch.pricing.costs import PRICE_COLUMNS
from costwatch.pricing.lookup import GENAI_PRICES_VERSION
from costwatch.pricing.pricer import Pricer
from costwatch.pricing.tiers import price_context

__all__ = ["GENAI_PRICES_VERSION", "PRICE_COLUMNS", "Pricer", "price_context"]
