"""docs/sql.md documents every stored column with its type; docs/api.md every route."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from costwatch.daemon.schema import stored_columns

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_column_documented_with_its_type() -> None:
    text = (DOCS / "sql.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| ([A-Z(), ]+?) \|", text, flags=re.M))
    assert documented == stored_columns()


@pytest.mark.parametrize("query", re.findall(r"```sql\n(.*?)```", (DOCS / "sql.md").read_text(), re.S))
def test_example_queries_run(query: str, tmp_path: Path) -> None:
    from costwatch.daemon.database import open_database
    from costwatch.daemon.sql import run_query

    con = open_database(tmp_path / "docs.duckdb")
    try:
        run_query(con, query)
    finally:
        con.close()
    assert isinstance(duckdb.extract_statements(query), list)


def test_every_route_documented() -> None:
    text = (DOCS / "api.md").read_text()
    import costwatch.daemon.app as app_mod

    source = Path(app_mod.__file__).read_text()
    routes = set(re.findall(r'Route\("([^"]+)"', source))
    assert len(routes) >= 10
    for route in routes:
        assert f"`{route}`" in text or f" {route}" in text, route
