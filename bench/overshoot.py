"""Overshoot of a hard budget under concurrency, with reservations on and off.

N app processes x M threads (the real openai SDK, ``import costwatch.autoinstrument``) call the
fake provider with random ``max_tokens`` against a hard USD budget until it refuses them; the
fake's usage follows the request (output = 50-100 % of ``max_tokens``). The figure is the spend
the daemon recorded, against the budget.

    /opt/cw-venv/bin/python bench/overshoot.py [--processes 3] [--threads 4] [--budget 0.4] [--runs 3]
    /opt/cw-venv/bin/python bench/overshoot.py --hot-path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.limits.harness import rig

RULES = """
rules:
  - {{name: hard-cap, kind: budget, limit: {budget}, window: day, hard: true, reserve: {reserve}}}
"""


def one_run(
    processes: int,
    threads: int,
    calls: int,
    budget: float,
    reserve: bool,
    model: str,
    shapes: list[str] | None = None,
    old_bound: bool = False,
    max_tokens: tuple[int, int] = (200, 2000),
) -> dict:
    with (
        tempfile.TemporaryDirectory() as tmp,
        rig(Path(tmp), RULES.format(budget=budget, reserve=str(reserve).lower())) as r,
    ):
        t0 = time.monotonic()
        results = r.run(
            processes,
            {
                "threads": threads,
                "calls": calls,
                "model": model,
                "max_tokens": list(max_tokens),
                "scenario": "slow:0.03",
                "shapes": shapes,
                "old_bound": old_bound,
            },
            timeout=300,
        )
        elapsed = time.monotonic() - t0
        spend = r.spend()
        return {
            "spend": spend,
            "overshoot": max(spend - budget, 0.0) / budget,
            "ok": sum(x["ok"] for x in results),
            "refused": sum(x["budget"] for x in results),
            "elapsed": elapsed,
        }


def hot_path(n: int = 20_000) -> None:
    """Cost of admit + settle for one call on a live lease (no I/O: the slice is big enough)."""
    from costwatch.client_settings import ClientSettings
    from costwatch.instrumentation.limits import Limiter, Ticket
    from tests.instrumentation.conftest import HTTP
    from tests.limits.test_unreachable import RULES, StubEmitter

    with tempfile.TemporaryDirectory() as tmp, rig(Path(tmp), RULES.replace("limit: 100", "limit: 1e9")) as r:
        settings = ClientSettings(url=r.daemon.url, token=r.daemon.token, state_dir=Path(tmp) / "app")
        limiter = Limiter(StubEmitter(settings), "bench")
        limiter.horizon_s = 60.0  # slices for a minute: this measures the call path, not renewals
        limiter.start()
        body = {"model": "gpt-4o", "max_tokens": 500, "messages": [{"role": "user", "content": "x" * 400}]}
        request = HTTP.Request("POST", "http://fake/v1/chat/completions", json=body)

        def one() -> bool:
            call = limiter.prepare("openai", request, None)
            outcome = limiter.admit(call)  # type: ignore[arg-type]
            if isinstance(outcome, Ticket):
                outcome.settle(None)
                return True
            time.sleep(outcome if isinstance(outcome, float) else 0.01)
            return False

        for _ in range(2000):  # warm up: the first calls wait for leases sized to the rate
            one()
        for threads in (1, 4):
            waits = [0] * threads

            def loop(i: int, count: int, waits: list[int] = waits) -> None:
                for _ in range(count):
                    waits[i] += not one()

            workers = [threading.Thread(target=loop, args=(i, n // threads)) for i in range(threads)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            per_call = (time.perf_counter() - t0) / n * 1e6
            print(
                f"hot path, {threads} thread(s): prepare + admit + settle {per_call:.1f} us per call "
                f"(wall / calls; {n} calls, {sum(waits)} waited for a lease)"
            )
        limiter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--calls", type=int, default=25, help="calls per thread")
    parser.add_argument("--budget", type=float, default=0.40, help="USD")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--hot-path", action="store_true", help="only time admit + settle in-process")
    parser.add_argument(
        "--shapes",
        default="",
        help="mixed request shapes (text,cjk,image_url,image_inline,tools): compares the input bound"
        " with the former body bytes / 4, reservations on in both",
    )
    parser.add_argument("--max-tokens", default="200,2000", help="lo,hi: random max_tokens per call")
    args = parser.parse_args()
    if args.hot_path:
        hot_path()
        return
    if args.shapes:
        shapes(args)
        return
    print(
        f"{args.processes} processes x {args.threads} threads x {args.calls} calls, model {args.model}, "
        f"max_tokens 200-2000, hard budget ${args.budget:.2f}, {args.runs} runs each"
    )
    print(
        f"{'reservations':<13} {'run':>3} {'recorded $':>11} {'overshoot':>10} {'admitted':>9} {'refused':>8} {'s':>6}"
    )
    summary = {}
    for reserve in (True, False):
        overshoots = []
        for i in range(args.runs):
            res = one_run(args.processes, args.threads, args.calls, args.budget, reserve, args.model)
            overshoots.append(res["overshoot"])
            print(
                f"{'on' if reserve else 'off':<13} {i + 1:>3} {res['spend']:>11.4f} {res['overshoot']:>9.1%} "
                f"{res['ok']:>9} {res['refused']:>8} {res['elapsed']:>6.1f}",
                flush=True,
            )
        summary[reserve] = overshoots
    for reserve, overshoots in summary.items():
        print(
            f"reservations {'on ' if reserve else 'off'}: overshoot max {max(overshoots):.1%}, "
            f"median {statistics.median(overshoots):.1%}"
        )


def shapes(args: argparse.Namespace) -> None:
    """Mixed shapes: the fake charges each shape's documented worst (tests/limits/harness.prompt_tokens)."""
    kinds = args.shapes.split(",")
    print(
        f"{args.processes} processes x {args.threads} threads x {args.calls} calls, model {args.model}, shapes "
        f"{'/'.join(kinds)}, max_tokens {args.max_tokens.replace(',', '-')}, hard budget ${args.budget:.2f}, {args.runs} runs each"
    )
    print(
        f"{'input bound':<18} {'run':>3} {'recorded $':>11} {'overshoot':>10} {'admitted':>9} {'refused':>8} {'s':>6}"
    )
    for old in (False, True):
        overshoots = []
        for i in range(args.runs):
            lo, hi = (int(x) for x in args.max_tokens.split(","))
            res = one_run(
                args.processes, args.threads, args.calls, args.budget, True, args.model, kinds, old, (lo, hi)
            )
            overshoots.append(res["overshoot"])
            label = "body bytes / 4" if old else "per shape (now)"
            print(
                f"{label:<18} {i + 1:>3} {res['spend']:>11.4f} {res['overshoot']:>9.1%} "
                f"{res['ok']:>9} {res['refused']:>8} {res['elapsed']:>6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
