"""Fleet hard budgets on a real PostgreSQL: slices taken atomically, a dead daemon's slice returned
after the TTL, and 3 daemons x 4 app processes hammering one limit without overshoot."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from costwatch.daemon.fleet.budgets import FleetBudgets
from costwatch.daemon.rules import BudgetRule
from costwatch.daemon.server import build_daemon, start_in_thread
from costwatch.settings import DaemonSettings
from tests.fakes import provider as fake_provider
from tests.fakes.provider import FakeProvider
from tests.limits.harness import Rig, _scaled_body
from tests.support.postgres import PostgresServer

RULE = BudgetRule(kind="budget", name="fleet-cap", limit=10.0, window="day", hard=True, fleet=True)


@pytest.fixture(scope="module")
def pool(postgres: PostgresServer) -> Iterator[ConnectionPool]:
    from costwatch.daemon.fleet import schema

    with ConnectionPool(postgres.dsn, min_size=0, max_size=8, kwargs={"autocommit": True}) as p:
        with p.connection() as conn:
            schema.migrate(conn)
        yield p


def test_fleet_requires_hard() -> None:
    with pytest.raises(ValueError, match="hard: true"):
        BudgetRule(kind="budget", name="x", limit=1, window="day", fleet=True)


def test_concurrent_daemons_never_hold_more_than_the_limit(pool: ConnectionPool) -> None:
    nodes = [FleetBudgets(pool, f"atomic-{i}") for i in range(6)]
    window = "atomic"

    def hammer(fb: FleetBudgets) -> None:
        for _ in range(20):  # each time, its processes hold all it has and want 0.7 more
            held = fb._slices[("fleet-cap", "global", window)].granted if fb._slices else 0.0
            fb.node_limit(RULE, "global", window, 0.0, held, 0.7)

    threads = [threading.Thread(target=hammer, args=(fb,)) for fb in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [fb._slices[("fleet-cap", "global", window)].granted for fb in nodes]
    assert sum(held) <= RULE.limit + 1e-9, held
    assert sum(held) > RULE.limit * 0.99  # and the whole limit is handed out
    with pool.connection() as conn:
        (total,) = conn.execute(
            "SELECT sum(greatest(granted, spent)) FROM costwatch.budget_slices WHERE window_id = %s", [window]
        ).fetchone()  # type: ignore[misc]
    assert total == pytest.approx(sum(held))


def test_a_dead_daemons_slice_returns_after_the_ttl(pool: ConnectionPool) -> None:
    window = "ttl"
    dead, alive = FleetBudgets(pool, "dead", ttl_s=1.0), FleetBudgets(pool, "alive", ttl_s=1.0)
    assert dead.node_limit(RULE, "global", window, 0.0, 0.0, 8.0) == pytest.approx(8.0)
    # It spent 3 of its 8 and then died (no renewal, no release).
    dead._slices[("fleet-cap", "global", window)].recorded = 3.0
    dead.renew()
    assert alive.node_limit(RULE, "global", window, 0.0, 0.0, 5.0) == pytest.approx(2.0)
    time.sleep(1.2)
    # The dead daemon's unspent 5 is back: 10 - 3 spent.
    assert alive.node_limit(RULE, "global", window, 0.0, 2.0, 7.0) == pytest.approx(7.0)


MODEL = "gpt-4o"  # a worst case of 2000 output tokens is $0.02
LIMIT = 0.40
RULES = f"""
rules:
  - name: fleet-cap
    kind: budget
    limit: {LIMIT}
    window: day
    hard: true
    fleet: true
"""


@contextlib.contextmanager
def fleet_rigs(tmp: Path, pg: PostgresServer, daemons: int) -> Iterator[list[Rig]]:
    """``daemons`` daemons (one fleet) sharing the rule, a fake provider with request-sized usage."""
    rules_dir = tmp / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "limits.yml").write_text(RULES)
    original = fake_provider._json_body
    fake_provider._json_body = _scaled_body(original)
    fake = FakeProvider().start()
    rigs: list[Rig] = []
    try:
        for i in range(daemons):
            settings = DaemonSettings(
                state_dir=tmp / f"host-{i}" / "daemon",
                port=0,
                rules=rules_dir,
                fleet_dsn=pg.dsn,
                node=f"budget-host-{i}",
            )
            running = start_in_thread(build_daemon(settings, rules=False, spend_page=False))
            rigs.append(Rig(fake, running, tmp / f"host-{i}", rules_dir))
        yield rigs
    finally:
        for r in rigs:
            r.daemon.stop()
        fake.stop()
        fake_provider._json_body = original


def run_fleet(rigs: list[Rig], procs_per_daemon: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    procs = [
        r.spawn({**cfg, "seed": 10 * i + j}) for i, r in enumerate(rigs) for j in range(procs_per_daemon)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.slow
def test_three_daemons_four_processes_each_never_overshoot(postgres: PostgresServer, tmp_path: Path) -> None:
    with fleet_rigs(tmp_path, postgres, 3) as rigs:
        results = run_fleet(
            rigs,
            4,
            {"threads": 2, "calls": 12, "model": MODEL, "max_tokens": [200, 2000], "scenario": "slow:0.02"},
        )
        spend = sum(r.spend() for r in rigs)
        per_host = [round(r.spend(), 4) for r in rigs]
        ok = sum(x["ok"] for x in results)
        refused = sum(x["budget"] for x in results)
        assert sum(x["openai_error"] for x in results) == 0
        assert ok + refused == 3 * 4 * 2 * 12
        assert rigs[0].fake.count == ok  # refused calls never left the processes
        assert refused > 0  # the limit was reached
        print(
            f"fleet budget ${LIMIT}: spent ${spend:.4f} (per host {per_host}), {ok} calls, {refused} refused"
        )
        assert spend <= LIMIT, (spend, per_host)
        assert spend > LIMIT * 0.5, (spend, per_host)  # usable, not starved by slices held elsewhere
