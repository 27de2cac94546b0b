"""decode_batch: any mix of valid and invalid items splits exactly, by index (property test)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from costwatch.daemon.app import decode_batch
from costwatch.events import encode
from tests.daemon.conftest import make_event

_BAD = [
    b'{"id": 1}',
    b'{"id": "x", "call_id": "c", "ts_start": 2, "ts_end": 1, "provider": "p", "operation": "o"}',
    b'{"id": "y", "call_id": "c", "ts_start": 1, "ts_end": 2, "provider": "p", "operation": "o", "nope": 1}',
    b'{"id": "z", "call_id": "c", "ts_start": 1, "ts_end": 2, "provider": "", "operation": "o"}',
    b"[]",
    b"3",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 10**6), st.sampled_from(_BAD)), max_size=30), st.booleans())
def test_split_is_exact(items: list[int | bytes], ndjson: bool) -> None:
    raws = [encode(make_event(input_tokens=i, output_tokens=1)) if isinstance(i, int) else i for i in items]
    body = b"\n".join(raws) if ndjson else b"[" + b",".join(raws) + b"]"
    if ndjson and not raws:
        body = b""
    good, rejected = decode_batch(body, ndjson)
    assert [e.input_tokens for e in good] == [i for i in items if isinstance(i, int)]
    assert [r["index"] for r in rejected] == [n for n, i in enumerate(items) if not isinstance(i, int)]
    assert all(r["error"] for r in rejected)


def test_error_names_the_field() -> None:
    body = b"[" + encode(make_event()).replace(b'"provider":"openai"', b'"provider":7') + b"]"
    _, rejected = decode_batch(body, False)
    assert "provider" in rejected[0]["error"]
    assert isinstance(msgspec.json.decode(body), list)
