"""`costwatch status`: the daemon's state, spend, budgets and engaged kill switches."""

from __future__ import annotations

import datetime as dt
import time

from costwatch.cli.client import client_for
from costwatch.cli.offline import Locked, holder, offline_settings, open_read_only
from costwatch.money import fmt_usd

TYPE_CHECKING = False  # not `typing`'s: the light path does not import typing (see costwatch.sources)
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["cmd_status"]


def cmd_status(args: argparse.Namespace) -> int:
    settings = offline_settings(args)
    forecasts: list[dict[str, Any]] = []
    if settings is not None:
        try:
            con = open_read_only(settings)
        except Locked:
            client = holder(args, settings)
        else:
            client = None
            from costwatch.daemon import queries
            from costwatch.daemon.killswitch import KillSwitchRegistry

            print(f"daemon: not consulted (offline read of {settings.db_path})")
            try:
                data = queries.summary(con, settings.timezone)
                engaged = [
                    {"scope": r[1], "reason": r[2], "source": r[3], "engaged_at": r[4], "expires_at": r[5]}
                    for r in KillSwitchRegistry.load(con)
                    if r[5] is None or r[5] > time.time()
                ]
            finally:
                con.close()
    else:
        client = client_for(args)
    if client is not None:
        data = client.request("GET", "/v1/status", timeout=10, expect=("db_path", "killswitch", "events"))
        print(f"daemon: running at {client.url} (up {data['uptime_s']:.0f} s)")
        print(f"database: {data['db_path']}")
        if data.get("health"):
            print("health: degraded: " + "; ".join(data["health"]))
        engaged = data["killswitch"]["engaged"]
        if data.get("fleet"):
            print(_fleet_line(data["fleet"]))
        forecasts = client.request("GET", "/v1/budgets", timeout=10).get("budgets", [])
    print(f"events stored: {data['events']}")
    print(
        f"spend today: {fmt_usd(data['spend_today_usd'])}   "
        f"month to date: {fmt_usd(data['spend_month_usd'])} ({data['timezone']})"
    )
    print(f"unpriced events: {data['unpriced']}   without usage: {data['usage_missing']}")
    if "usage_estimated" in data:  # an older daemon does not report it
        print(
            f"estimated usage: {data['usage_estimated']} events"
            f" ({fmt_usd(data['spend_month_estimated_usd'])} of this month's spend)"
        )
    for line in _forecast_lines(forecasts):
        print(line)
    if not engaged:
        print("kill switches: none engaged")
    for ks in engaged:
        where = ", ".join(f"{k}={v}" for k, v in sorted(ks["scope"].items())) or "global"
        since = dt.datetime.fromtimestamp(ks["engaged_at"], tz=dt.timezone.utc).isoformat(timespec="seconds")
        until = ""
        if ks.get("expires_at"):
            until = ", until " + dt.datetime.fromtimestamp(ks["expires_at"], tz=dt.timezone.utc).isoformat(
                timespec="seconds"
            )
        print(f"kill switch ENGAGED: scope {where} since {since}{until} by {ks['source']}: {ks['reason']}")
    return 0


def _fleet_line(fleet: dict[str, Any]) -> str:
    """This daemon's place in the fleet and its replication lag."""
    rep = fleet["replication"]
    state = "connected" if rep["connected"] else f"NOT connected ({rep.get('last_error') or 'not yet'})"
    listen = "listening" if fleet["killswitch"]["listening"] else "polling"
    return (
        f"fleet: node {fleet['node']}, ledger {state}; replication lag {rep['lag_events']} events"
        f" ({rep['lag_seconds']:.1f} s); kill switch {listen}"
    )


def _forecast_lines(forecasts: list[dict[str, Any]]) -> list[str]:
    """One line per budget (and group): spent vs limit and the burn-rate projection."""
    lines = []
    for item in forecasts:
        usd = item.get("unit", "usd") == "usd"
        for group in item.get("groups", []):
            where = f" [{group['scope']}]" if group.get("scope") else ""
            spent, limit = (
                (fmt_usd(group["spent"]), fmt_usd(item["limit"]))
                if usd
                else (f"{group['spent']:,.4f}", f"{item['limit']:,.2f}")
            )
            lines.append(
                f"budget {item['rule']}{where}: {spent} of {limit}"
                f" ({100 * group['used_ratio']:.0f}%); {group['summary']}"
            )
    return lines
