"""Dollar amounts keep their significant digits below a cent (alerts, CLI)."""

from __future__ import annotations

import pytest

from costwatch.money import fmt_usd


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "$0.00"),
        (1234.5, "$1,234.50"),
        (1, "$1.00"),
        (0.5, "$0.50"),
        (0.123456, "$0.123"),
        (0.01, "$0.01"),
        (0.0148, "$0.0148"),
        (0.00148, "$0.00148"),
        (0.0000012345, "$0.00000123"),
        (0.9996, "$1.00"),
        (-0.0042, "-$0.0042"),
    ],
)
def test_fmt_usd(value: float, text: str) -> None:
    assert fmt_usd(value) == text


def test_suffix() -> None:
    assert fmt_usd(0.00031, "/h") == "$0.00031/h"
