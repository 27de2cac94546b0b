"""What pricing produces: one event's `Price`, and the same fields as table columns (`PRICE_COLUMNS`)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = ["PRICE_COLUMNS", "Price"]


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one event, split the way genai-prices splits it.

    ``cost_usd`` is what the ledger counts: the provider's own figure when the response
    carried one (``cost_source == "provider"``), else the computed cost. The split and
    ``source``/``version`` describe the computed cost (None when it could not be computed).
    """

    cost_usd: float
    input_cost_usd: float | None
    output_cost_usd: float | None
    source: str | None  # "genai-prices" | "override" | None (only the provider's cost)
    version: str | None
    computed_cost_usd: float | None = None
    cost_source: str = "computed"  # "computed" | "provider"


# What `Pricer.price_table` returns, in `usage_events` column order (the writer appends them as is).
PRICE_COLUMNS: dict[str, pa.DataType] = {
    "cost_usd": pa.float64(),
    "input_cost_usd": pa.float64(),
    "output_cost_usd": pa.float64(),
    "priced": pa.bool_(),
    "price_source": pa.string(),
    "price_version": pa.string(),
    "computed_cost_usd": pa.float64(),
    "cost_source": pa.string(),
}
