"""The daemon's lease authority on its own, with a controllable clock and a stand-in for recorded spend."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from costwatch.daemon.leases import LeaseService
from costwatch.daemon.rules import load_rules
from costwatch.protocol import LeaseRequest, SliceRequest


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _service(
    tmp_path: Path, text: str, recorded: dict[str, float] | None = None
) -> tuple[LeaseService, Clock]:
    (tmp_path / "r.yml").write_text(textwrap.dedent(text).lstrip())
    ruleset = load_rules(tmp_path)
    spent = recorded if recorded is not None else {}
    clock = Clock()
    service = LeaseService(lambda: ruleset, lambda rule, start, end, now: dict(spent), clock=clock)
    return service, clock


BUDGET = """
rules:
  - {name: cap, kind: budget, limit: 10, window: day, hard: true, lease_ttl: 5s}
"""


def _ask(
    service: LeaseService, holder: str, want: float, limit: str = "cap", group: str = "global", **kw: float
):
    (grant,) = service.exchange(
        LeaseRequest(holder=holder, slices=[SliceRequest(limit=limit, group=group, want=want, **kw)])
    ).grants
    return grant


def test_never_grants_more_than_the_remaining_budget(tmp_path: Path) -> None:
    recorded = {"global": 4.0}
    service, _ = _service(tmp_path, BUDGET, recorded)
    a = _ask(service, "a", 5, need=5)
    b = _ask(service, "b", 5, need=5)
    assert a.granted == 5 and b.granted == pytest.approx(1.0)  # 10 - 4 recorded - 5 outstanding
    assert b.free == 0
    # a reports it consumed 3 (now in the recorded spend): outstanding 2 + b's 1, recorded 7 -> free 0.
    recorded["global"] = 7.0
    a2 = _ask(service, "a", 1, lease=a.lease, granted=5, consumed=3)
    assert a2.granted == 5 and a2.free == 0


def test_random_interleavings_keep_the_invariant(tmp_path: Path) -> None:
    """Whatever holders ask, report and release: recorded + outstanding never exceeds the limit."""
    recorded = {"global": 0.0}
    service, clock = _service(tmp_path, BUDGET, recorded)
    rng = random.Random(3)
    views: dict[str, dict[str, float]] = {}
    for _ in range(2000):
        holder = rng.choice("abcde")
        view = views.setdefault(holder, {"granted": 0.0, "consumed": 0.0, "lease": 0, "until": 0.0})
        if clock.now < view["until"]:  # like the client: a slice is only spent while the lease lives
            spend = rng.uniform(0, view["granted"] - view["consumed"])
            view["consumed"] += spend
            recorded["global"] += spend
        numbers = {k: view[k] for k in ("granted", "consumed")}
        grant = _ask(
            service, holder, rng.uniform(0, 3), need=rng.uniform(0, 1), lease=int(view["lease"]), **numbers
        )
        if grant.lease != view["lease"]:
            view.update(consumed=0.0, lease=grant.lease)
        view.update(granted=grant.granted, until=clock.now + grant.ttl_s * 0.8)
        clock.now += rng.uniform(0, 0.5)
        assert recorded["global"] + service.outstanding("cap", "global") <= 10 + 1e-9
    assert recorded["global"] > 8  # and the budget was actually usable


def test_an_expired_lease_returns_its_slice(tmp_path: Path) -> None:
    service, clock = _service(tmp_path, BUDGET)
    assert _ask(service, "crashed", 10, need=10).granted == 10
    assert _ask(service, "other", 1, need=1).granted == 0
    clock.now += 4.9
    assert _ask(service, "other", 1, need=1).granted == 0  # still within the TTL
    clock.now += 0.2
    assert _ask(service, "other", 1, need=1).granted == 1  # 5 s without renewal: gone
    assert service.counters["expired"] == 1
    assert service.outstanding("cap", "global") == 1


def test_release_on_exit(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, BUDGET)
    _ask(service, "leaving", 10, need=10)
    service.exchange(LeaseRequest(holder="leaving", release=True))
    assert _ask(service, "other", 10, need=10).granted == 10


RATE = """
rules:
  - {name: rpm, kind: rate_limit, requests: 10, tokens: 1000, window: 1m, per: user, lease_ttl: 5s}
"""


def test_rate_limit_windows_and_fair_shares(tmp_path: Path) -> None:
    service, clock = _service(tmp_path, RATE)
    clock.now = 60 * 30_000_000 + 10.0  # 10 s into a minute: 4 s into the 6-s step [6, 12)
    a = _ask(service, "a", 8, limit="rpm/requests", group="user=u1", need=1)
    assert a.granted == 8 and a.window_left_s == pytest.approx(2.0)
    b = _ask(service, "b", 8, limit="rpm/requests", group="user=u1", need=1)
    assert b.granted == 1  # 2 left, two holders: a fair share of 1 (rounded down to whole requests)
    assert _ask(service, "b", 8, limit="rpm/requests", group="user=u2", need=1).granted == 8  # another user
    # b leaves having used nothing: its request returns. a vanishes: its 8 stay used this window.
    service.exchange(
        LeaseRequest(
            holder="b",
            release=True,
            slices=[SliceRequest(limit="rpm/requests", group="user=u1", lease=b.lease)],
        )
    )
    clock.now += 6
    c = _ask(service, "c", 5, limit="rpm/requests", group="user=u1", need=1)
    assert c.granted == 2
    # The window slides: at 66 s a's step [6, 12) still counts ([6, 66) is one window plus a step) ...
    clock.now += 50
    d = _ask(
        service, "c", 5, limit="rpm/requests", group="user=u1", need=1, lease=c.lease, granted=2, consumed=2
    )
    assert d.window != c.window and d.lease != c.lease and d.granted == 0
    # ... at 72 s only c's 2 of [12, 18) do.
    clock.now += 6
    e = _ask(service, "c", 5, limit="rpm/requests", group="user=u1", need=1, lease=d.lease)
    assert e.granted == 5 and e.free == 3


def test_a_burst_across_the_window_edge_stays_within_the_limit(tmp_path: Path) -> None:
    """Fixed windows let 10 calls at 59.9 s and 10 more at 60.1 s through: 2x the limit in 0.2 s."""
    service, clock = _service(tmp_path, RATE)
    minute = 60 * 30_000_000
    clock.now = minute - 0.5
    a = _ask(service, "a", 10, limit="rpm/requests", group="user=u1", need=10)
    assert a.granted == 10
    clock.now = minute - 0.1  # a reports all ten used, still inside its step
    _ask(service, "a", 0, limit="rpm/requests", group="user=u1", lease=a.lease, granted=10, consumed=10)
    clock.now = minute + 0.1  # the next fixed window
    assert _ask(service, "b", 10, limit="rpm/requests", group="user=u1", need=1).granted == 0
    first = None
    while first is None:  # ask every half second until something is granted again
        clock.now += 0.5
        grant = _ask(service, "b", 10, limit="rpm/requests", group="user=u1", need=1)
        if grant.granted > 0:
            first = clock.now
    # a's ten may have been used anywhere in its step [54, 60): nothing more until that step is a
    # whole window behind, at 120 s; then the window holds b's grant alone.
    assert minute + 60 <= first <= minute + 60.5


def test_no_span_of_one_window_exceeds_the_limit(tmp_path: Path) -> None:
    """Random holders, asks and reports; every granted unit counted at its grant time and at the end
    of its step (a unit is used somewhere between): no 60-s span holds more than 10."""
    rng = random.Random(19)
    service, clock = _service(tmp_path, RATE)
    clock.now = 60 * 30_000_000 + 0.0
    state: dict[str, tuple[int, float]] = {}  # holder -> (lease, granted)
    used: list[tuple[float, float, float]] = []  # (grant time, end of its step, amount)
    for _ in range(3000):
        clock.now += rng.expovariate(8.0)
        holder = rng.choice("abcd")
        lease, granted = state.get(holder, (0, 0.0))
        grant = _ask(
            service, holder, rng.randint(1, 4), limit="rpm/requests", group="user=u1", need=1,
            lease=lease, granted=granted, consumed=granted,
        )  # fmt: skip
        fresh = grant.granted - (granted if grant.lease == lease else 0.0)
        if fresh > 0:
            used.append((clock.now, clock.now + grant.window_left_s, fresh))
        state[holder] = (grant.lease, grant.granted)
    # Not starved: ~6 minutes at 10 per 66 s (k = 10 steps of 6 s, 11 counted) -> ~57.
    assert sum(u[2] for u in used) >= 10 * 5
    for at in (0, 1):
        times = sorted((u[at], u[2]) for u in used)
        for i, (t0, _) in enumerate(times):
            assert sum(n for t, n in times[i:] if t < t0 + 60) <= 10


def test_a_refused_holder_gets_the_surplus_others_hold(tmp_path: Path) -> None:
    """a sits on the whole budget; b's call does not fit: a is asked to hand back, b to ask again."""
    service, clock = _service(tmp_path, BUDGET)
    a = _ask(service, "a", 10, need=1)
    assert a.granted == 10 and a.reclaim == 0
    b = _ask(service, "b", 3, need=3)
    assert b.granted == 0 and b.contended  # refused for now, but a holds surplus: wait for it
    clock.now += 0.2
    a2 = _ask(service, "a", 5, lease=a.lease, granted=10, consumed=2)  # a's renewal, wanting more
    assert a2.reclaim == pytest.approx(8.0) and a2.granted == 10  # nothing more for a; 8 unused back
    clock.now += 0.01
    a3 = _ask(service, "a", 0, lease=a.lease, granted=2, consumed=2)  # a handed the 8 back
    assert a3.granted == 2
    b2 = _ask(service, "b", 3, lease=b.lease, need=3)
    assert b2.granted >= 3 and not b2.contended
    clock.now += 0.2  # b was served: a is not asked again
    assert _ask(service, "a", 0, lease=a.lease, granted=2, consumed=2).reclaim == 0
    # Nothing to hand back: b is refused without being told to wait.
    service, _ = _service(tmp_path, BUDGET, {"global": 10.0})
    assert not _ask(service, "b", 3, need=3).contended


def test_unknown_limit_is_dropped(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, BUDGET)
    grant = _ask(service, "a", 1, limit="gone")
    assert not grant.known and grant.granted == 0
