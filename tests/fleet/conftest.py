"""One real PostgreSQL per test module (module-scoped: starting one takes ~1 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, postgres_bin


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed (./dev test installs Debian's postgresql)")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()
