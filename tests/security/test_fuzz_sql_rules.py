"""Bad input gets a clear error: ≥ 10k generated inputs against ``POST /v1/sql`` and the rule loader.

SQL: statements assembled from SQL keywords, DuckDB's file/URL/secret functions, identifiers,
literals and junk. Whatever comes out, the answer is 200 or a one-line 400, the stored data and
the sandbox settings never change and no file appears. Rules: generated YAML files (plausible
rule documents with random values, and broken YAML) go through `load_rules`: it returns a rule
set or raises `RuleError` whose every message names the file and line — never another exception.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costwatch.daemon.rules import RULE_KINDS, RuleError, RuleSet, load_rules
from costwatch.events import encode_many
from tests.daemon.conftest import make_event
from tests.security.conftest import InProcess

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("CW_FUZZ_EXAMPLES", "10000"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

SQL_WORDS = [
    "SELECT", "FROM", "WHERE", "WITH", "AS", "UNION", "ALL", "EXPLAIN", "ANALYZE", "DESCRIBE", "SHOW",
    "INSERT", "INTO", "VALUES", "UPDATE", "SET", "DELETE", "DROP", "TABLE", "CREATE", "OR", "REPLACE",
    "VIEW", "MACRO", "TEMP", "COPY", "TO", "ATTACH", "DETACH", "INSTALL", "LOAD", "FORCE", "PRAGMA",
    "CALL", "EXPORT", "IMPORT", "DATABASE", "CHECKPOINT", "VACUUM", "BEGIN", "COMMIT", "ROLLBACK",
    "USE", "RESET", "SECRET", "SUMMARIZE", "PIVOT", "GROUP", "BY", "ORDER", "LIMIT", "(", ")", ",",
    ";", "*", "=", "'", '"', "--", "/*", "*/", "::", "$1", "?",
]  # fmt: skip
SQL_CALLS = [
    "read_csv('/etc/passwd')", "read_text('/etc/hostname')", "read_blob('/etc/passwd')",
    "read_parquet('http://127.0.0.1:1/x.parquet')", "read_json_auto('/proc/self/environ')",
    "glob('/etc/*')", "getenv('HOME')", "current_setting('enable_external_access')",
    "duckdb_settings()", "duckdb_secrets()", "duckdb_extensions()", "query('DROP TABLE usage_events')",
    "query_table('usage_events')", "range(10)", "usage_events", "spend_by_model", "killswitches",
    "'/etc/passwd'", "'https://example.com/x.csv'", "sniff_csv('/etc/passwd')",
]  # fmt: skip
TABLES = "SELECT count(*) FROM duckdb_tables()"
VIEWS = "SELECT count(*) FROM duckdb_views() WHERE NOT internal"
sql_counts: dict[str, int] = {}


def _sql(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # a plausible read: must run or fail cleanly
        return rng.choice(
            [
                "SELECT {c} FROM usage_events",
                "SELECT * FROM {f}",
                "SELECT {f}",
                "FROM {f} LIMIT 3",
                "WITH t AS (SELECT * FROM {f}) SELECT count(*) FROM t",
                "EXPLAIN SELECT * FROM {f}",
            ]
        ).format(
            c=rng.choice(["count(*)", "sum(input_tokens)", "id", "*", "1/0", "'x'::INT"]),
            f=rng.choice(SQL_CALLS),
        )
    if kind == 1:  # tokens soup
        parts = [rng.choice(SQL_WORDS + SQL_CALLS) for _ in range(rng.randint(1, 12))]
        return " ".join(parts)
    if kind == 2:  # a write or escape, maybe hidden after a SELECT
        escape = rng.choice(
            [
                "DROP TABLE usage_events", "DELETE FROM usage_events", "CREATE TABLE fz AS SELECT 1",
                "COPY usage_events TO '/tmp/cw-fuzz-copy.csv'", "ATTACH '/tmp/cw-fuzz.duckdb' AS fz",
                "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true",
                "SET lock_configuration = false", "PRAGMA threads=8", "CALL pragma_version()",
                "EXPORT DATABASE '/tmp/cw-fuzz-export'", "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
                "CREATE MACRO fz(x) AS x", "UPDATE usage_events SET cost_usd = 0", "RESET ALL",
            ]
        )  # fmt: skip
        return rng.choice(
            ["{e}", "SELECT 1; {e}", "{e}; SELECT 1", "EXPLAIN ANALYZE {e}", "/* x */ {e} --"]
        ).format(e=escape)
    alphabet = "SELECT FROM ()';\"\\\n\t*,.0123456789abcxyz$?:é\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))


def test_sql_endpoint_fuzz(asgi_daemon: InProcess) -> None:
    d = asgi_daemon
    assert (
        d.call("POST", "/v1/events", content=encode_many([make_event() for _ in range(3)])).status_code == 200
    )
    rows, tables, views = d.rows(), d.scalar(TABLES), d.scalar(VIEWS)

    @SETTINGS
    @given(st.randoms(use_true_random=True))
    def check(rng: random.Random) -> None:
        query = _sql(rng)
        fmt = rng.choice(["json", "json", "csv"])
        r = d.call("POST", "/v1/sql", json={"sql": query, "format": fmt})
        sql_counts[str(r.status_code)] = sql_counts.get(str(r.status_code), 0) + 1
        assert r.status_code in (200, 400), (r.status_code, r.text, query)
        if r.status_code == 400:
            error = r.json()["error"]
            assert isinstance(error, str) and error.strip() and "\n" not in error, (error, query)
        assert d.rows() == rows, query

    check()
    assert (d.rows(), d.scalar(TABLES), d.scalar(VIEWS)) == (rows, tables, views)
    assert d.scalar("SELECT current_setting('enable_external_access')") is False
    assert d.scalar("SELECT current_setting('lock_configuration')") is True
    assert d.scalar("SELECT count(*) FROM duckdb_databases() WHERE NOT internal") == 1
    leaked = [p for p in Path("/tmp").iterdir() if p.name.startswith("cw-fuzz")]
    assert not leaked, leaked
    print(f"\nsql fuzz: {sum(sql_counts.values())} queries, by status {sql_counts}")
    assert sum(sql_counts.values()) >= EXAMPLES and sql_counts.get("200", 0) > 0


# -- rules ------------------------------------------------------------------------------------------
DURATIONS = ["5m", "1h", "24h", "7d", "day", "week", "month", "0s", "-1h", "1x", "", 5, None, "999999d"]
RULE_FIELDS: dict[str, list[Any]] = {
    "name": ["a", "spend-1", "bad name!", "", "x" * 201, 3, None, "dup"],
    "kind": [*RULE_KINDS, "nope", None, 1],
    "limit": [100, 0, -5, "lots", 1e308, None, "5%"],
    "unit": ["usd", "tokens", "eur", None],
    "window": DURATIONS,
    "timezone": ["UTC", "Europe/Berlin", "Mars/Olympus", 7],
    "thresholds": [[{"at": "50%"}, {"at": 100, "action": "kill"}], [{"at": "50%"}, {"at": "50%"}], [], "x",
                   [{"at": -1}], [{"at": "abc%"}], [{"at": 10, "action": "explode"}], [{"nope": 1}]],
    "metric": ["error_rate", "latency_p95", "cost_per_hour", "bogus", None],
    "op": [">", "<=", "!=", None],
    "value": [0.05, "5%", "x%", None, [], 1e400],
    "for": DURATIONS,
    "repeat_interval": DURATIONS,
    "notify": [["ops"], ["missing-channel"], "ops", [], [1]],
    "scope": [{"app": "a"}, {"planet": "x"}, "app=a", {"user": None}, []],
    "per": [["user"], ["app", "user"], ["planet"], "user"],
    "mode": ["active", "dry_run", "loud"],
    "action": ["notify", "kill", "maybe"],
    "budget": ["spend-1", "missing", ""],
    "forecast": [{"exhausts_before_window_end": True}, {"exhausts_within": "3d"}, {}, "soon"],
    "checks": [["unpriced"], ["missing_usage", "unpriced"], ["bogus"], []],
    "requests": [20, 0, -1, "many"],
    "tokens": [1000, 0, None],
    "on_exceed": ["block", "wait", "panic"],
    "lease_ttl": ["10s", "0.1s", "2h", "x"],
    "hard": [True, False, "yes"],
    "min_requests": [1, 0, -3],
    "surprise": [1],
}  # fmt: skip
rules_counts = {"ok": 0, "error": 0}


def _rules_doc(rng: random.Random) -> str:
    if rng.random() < 0.1:  # broken YAML or not a mapping
        return rng.choice(
            ["rules: [", "rules:\n  - name: a\n   kind: budget", "- 1\n- 2", "a: b: c", "\t", "!!python/object:os.system x",
             "rules: *anchor", "", "groups: []", "rules: {}", "enabled: maybe"]
        )  # fmt: skip
    rules = []
    for _ in range(rng.randint(0, 4)):
        rule = {"name": rng.choice(RULE_FIELDS["name"]), "kind": rng.choice(RULE_FIELDS["kind"])}
        for key in rng.sample(sorted(RULE_FIELDS), rng.randint(0, 6)):
            rule[key] = rng.choice(RULE_FIELDS[key])
        if rng.random() < 0.1:
            rule.pop(rng.choice(sorted(rule)))
        rules.append(rule)
    doc: dict[str, Any] = {"rules": rules if rng.random() < 0.95 else "not-a-list"}
    if rng.random() < 0.7:
        doc["channels"] = {
            "ops": {"url": rng.choice(["json://127.0.0.1:1/x", "${UNSET_VAR}", "", "mailto://u:p@h", 5])}
        }
    if rng.random() < 0.3:
        doc["enabled"] = rng.choice([True, False, "sometimes"])
    if rng.random() < 0.05:
        doc["unknown_top_level"] = 1
    return yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def test_rule_loader_fuzz(tmp_path: Path) -> None:
    directory = tmp_path / "alerts"
    directory.mkdir()
    path = directory / "fuzz.yml"

    @SETTINGS
    @given(st.randoms(use_true_random=True))
    def check(rng: random.Random) -> None:
        path.write_text(_rules_doc(rng))
        try:
            result = load_rules(directory, environ={})
        except RuleError as exc:
            rules_counts["error"] += 1
            assert exc.errors, "a RuleError with no message"
            for message in exc.errors:
                assert "fuzz.yml" in message and message.strip() and "Traceback" not in message, message
            return
        rules_counts["ok"] += 1
        assert isinstance(result, RuleSet)

    check()
    print(f"\nrules fuzz: {sum(rules_counts.values())} files, {rules_counts}")
    assert sum(rules_counts.values()) >= EXAMPLES and rules_counts["ok"] > 0 and rules_counts["error"] > 0


@pytest.mark.parametrize(
    "content", [b"rules: []\n\x00\n", b"rules:\n  - name: \xff\xfe\n"], ids=["nul", "latin1"]
)
def test_unreadable_rule_file_is_a_rule_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.yml").write_bytes(content)
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path, environ={})
    assert all("bad.yml" in m for m in info.value.errors)
