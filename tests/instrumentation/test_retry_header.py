"""The patch reads ``x-stainless-retry-count`` from httpx(2)'s raw header list, as ``Headers.get`` would."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [("x-stainless-retry-count", "0")],
        [("X-Stainless-Retry-Count", "2"), ("authorization", "Bearer x")],
        [("x-stainless-retry-count", "1"), ("x-stainless-retry-count", "2")],
        [("x-stainless-retry-count", "é".encode())],
        [("other", "é".encode("latin-1")), ("x-stainless-retry-count", "3")],
    ],
)
def test_retry_header_read_from_the_raw_list_as_get_reads_it(pairs: list[tuple[str, object]]) -> None:
    from costwatch.instrumentation import patch

    for lib in ("httpx2", "httpx"):
        httpx = pytest.importorskip(lib)
        headers = httpx.Headers(pairs)
        assert patch._retry_count(headers) == headers.get("x-stainless-retry-count")
    assert patch._retry_count({"x-stainless-retry-count": "1"}) == "1"  # another mapping: get()
