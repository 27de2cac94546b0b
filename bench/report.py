"""docs/benchmarks.md from the saved section results (bench/.results/*.json) plus hand-written notes.

Notes that interpret figures (profiles, recommendations) live in
``bench/notes.md``; they are copied under the generated tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import ROOT, fmt_mmm, load
from bench.killswitch import TARGET_P99_MS

DOC = ROOT / "docs" / "benchmarks.md"
NOTES = Path(__file__).resolve().parent / "notes.md"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def _quick(data: dict[str, Any]) -> str:
    return " (`--quick` run)" if data.get("quick") else ""


def _header(data: dict[str, Any]) -> str:
    return (
        f"_Run {data.get('started_utc', '?')} UTC{_quick(data)}, `{data.get('command', '?')}`,"
        f" {data.get('elapsed_s', '?')} s; load average at start {data.get('machine', {}).get('loadavg_at_start')}._\n"
    )


# -- 1. overhead -------------------------------------------------------------------------
def overhead(data: dict[str, Any]) -> str:
    s = data["summary"]
    out = ["## 1. Instrumentation overhead\n", _header(data)]
    out.append(
        f"Real `openai` SDK (chat completions), one call at a time, against `bench/fastserver.py` (raw asyncio,"
        " canned body, own process); streaming calls pass `stream_options.include_usage` and read every chunk."
        f" Each (environment, mode, variant) is one fresh process ({data['warmup']} warm-up calls); the"
        f" processes of an (environment, mode) take turns timing blocks of {data['calls_per_block']:,} calls"
        f" ({data['blocks']} blocks each, order rotated every block), so load changes hit every variant alike."
        " A block's wall and CPU time include the instrumentation's own flush at its end, and CPU time counts"
        " every thread of the process (costwatch's emitter thread, the peers' exporter threads)."
        " Ratio and added µs are per block against the same block's uninstrumented baseline of the same"
        " environment; cells show median (min – max) over blocks. Costwatch's emitter sends to"
        " `tests/fakes/sink.py --count-only` (own process); peers export to null exporters.\n"
    )
    out.append(
        "| env (openai) | mode | variant | calls | wall µs/call | median µs/call | wall ratio (target ≤ 1.02) |"
        " median added µs (target ≤ 10) | process CPU ratio | emitter CPU ms / 1k events |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    order = {"none": 0, "costwatch": 1, "otel": 2, "openlit": 2}
    modes = {"sync": 0, "async": 1, "stream": 2}
    keys = sorted(s, key=lambda k: (k.split("/")[0], modes[k.split("/")[1]], order[k.split("/")[2]]))
    for key in keys:
        e = s[key]
        env, mode, variant = key.split("/")
        ratio = e.get("wall_ratio")
        added = e.get("added_median_us")
        rv = (
            f"{fmt_mmm(ratio, 3)} {verdict(ratio['median'] <= 1.02)}"
            if variant == "costwatch" and ratio
            else fmt_mmm(ratio, 3)
        )
        av = (
            f"{fmt_mmm(added, 1)} {verdict(added['median'] <= 10)}"
            if variant == "costwatch" and added
            else fmt_mmm(added, 1)
        )
        out.append(
            f"| {env} ({e['openai']}) | {mode} | {variant} | {e['calls']:,} | {fmt_mmm(e['per_call_us'])} |"
            f" {fmt_mmm(e['median_call_us'])} | {rv} | {av} | {fmt_mmm(e.get('cpu_ratio'), 3)} |"
            f" {fmt_mmm(e.get('emitter_cpu_ms_per_1k'), 1)} |"
        )
    out.append("")
    # lower than both peers?
    lines = []
    for mode in ("sync", "async", "stream"):
        for env, peer in (("main", "otel"), ("old", "openlit")):
            mine, theirs = s.get(f"{env}/{mode}/costwatch"), s.get(f"{env}/{mode}/{peer}")
            if not mine or not theirs or "wall_ratio" not in mine or "wall_ratio" not in theirs:
                continue
            cells = []
            for key, digits in (("wall_ratio", 3), ("added_median_us", 1), ("cpu_ratio", 3)):
                a, b = mine[key]["median"], theirs[key]["median"]
                cells.append(f"{a:.{digits}f} vs {b:.{digits}f} {verdict(a < b)}")
            lines.append(f"| {mode} | {peer} ({env}) | " + " | ".join(cells) + " |")
    if lines:
        out.append(
            "Lower than both peers? Costwatch vs the peer in the same environment, medians over blocks:\n"
        )
        out.append("| mode | peer (env) | wall ratio | median added µs | process CPU ratio |")
        out.append("| --- | --- | --- | --- | --- |")
        out += lines
        out.append("")
    delivered = [(k, e["delivered"], e["submitted"], e["dropped"]) for k, e in s.items() if "delivered" in e]
    if delivered:
        out.append(
            "Delivery check (costwatch → count-only sink, warm-up included): "
            + "; ".join(f"{k}: {d:,}/{sub:,} delivered, {dr} dropped" for k, d, sub, dr in delivered)
            + ".\n"
        )
    spans = [(k, e["spans_exported"]) for k, e in s.items() if "spans_exported" in e]
    if spans:
        out.append(
            "Peers were active (spans reaching their null exporter): "
            + "; ".join(f"{k}: {n:,}" for k, n in spans)
            + ".\n"
        )
    return "\n".join(out)


def _profile(prof: dict[str, Any] | None, title: str) -> list[str]:
    if not prof or not prof.get("samples"):
        return []
    out = [f"<details><summary>{title} (py-spy, {prof['samples']:,} non-idle samples)</summary>\n"]
    out.append("| threads | share |\n| --- | ---: |")
    out += [f"| {k} | {v}% |" for k, v in prof["threads"]]
    out.append("\n| self time (function, line) | share |\n| --- | ---: |")
    out += [f"| `{k}` | {v}% |" for k, v in prof["self"]]
    out.append("\n| inclusive | share |\n| --- | ---: |")
    out += [
        f"| `{k}` | {v}% |"
        for k, v in prof["inclusive"]
        if not k.startswith(
            (
                "thread",
                "process",
                "Thread.",
                "_run_module",
                "_run_code",
                "<module>",
                "main (",
                "BaseEventLoop.run_forever",
            )
        )
    ]
    out.append("\n</details>\n")
    return out


# -- 2. ingest -----------------------------------------------------------------------------
def ingest(data: dict[str, Any]) -> str:
    s = data["summary"]
    out = ["## 2. Ingest\n", _header(data)]
    out.append(
        f"A real `costwatch daemon` (fresh DuckDB file) fed by {data['procs']} emitting processes at once, each"
        f" sending {data['per_proc']:,} events per round: `raw` = pre-encoded POSTs of {data['batch']:,}-event"
        " batches over one keep-alive connection per process (one request in flight each; a 503 is retried);"
        f" `emitter` = a real `Emitter` per process (`batch_max_events={data['batch']}`), all events submitted,"
        " then `flush()`. Events are built before the clock starts. Rate = events / (first send → last"
        " acknowledgement). The ceiling is DuckDB alone in the bench process: pre-built Arrow tables"
        f" ({data['ceiling_events']:,} events) inserted with `register` + `INSERT … SELECT` + `COMMIT` per"
        f" batch into a fresh file, interleaved with the end-to-end runs in each of {data['rounds']} rounds"
        " (a 10k-batch ceiling right before each end-to-end run, which is judged against it)."
        " Rows are counted through `/v1/sql` after every run.\n"
    )
    targets = data.get("targets") or {"cpu_us": 10.0, "ratio": 0.6, "rss_mb": 250.0}
    out.append(
        f"Issue 18's targets: daemon CPU ≤ {targets['cpu_us']:g} µs an event (every thread of the daemon process,"
        " from the go until it is quiet again after the round, so the checkpoint of the round's tail is"
        f" counted), end to end ≥ {targets['ratio']:g} of the 10k-batch ceiling measured in the same round,"
        f" peak RSS ≤ {targets['rss_mb']:g} MB (sampled every 0.1 s). A target is met when the worst round"
        " meets it.\n"
    )
    out.append(
        "| path | events/s | ratio to the 10k-batch ceiling (same round) | daemon CPU µs/event | daemon RSS peak MB | events | lost |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("ceiling10k", "ceiling2k", "raw", "emitter"):
        e = s[kind]
        label = {
            "ceiling10k": "DuckDB Arrow insert alone, 10k batches",
            "ceiling2k": "DuckDB Arrow insert alone, 2k batches",
            "raw": "HTTP API, raw 2k-event POSTs",
            "emitter": "HTTP API, real Emitters",
        }[kind]
        if kind.startswith("ceiling"):
            out.append(f"| {label} | {fmt_mmm(e['events_per_s'], 0)} | ceiling | — | — | — | — |")
        else:
            ratio, cpu, rss = e["ratio_to_ceiling10k"], e["daemon_cpu_us_per_event"], e["rss_peak_mb"]
            out.append(
                f"| {label} | {fmt_mmm(e['events_per_s'], 0)} |"
                f" {fmt_mmm(ratio, 3)} ≥ {targets['ratio']:g}: {verdict(ratio['min'] >= targets['ratio'])} |"
                f" {fmt_mmm(cpu, 1)} ≤ {targets['cpu_us']:g}: {verdict(cpu['max'] <= targets['cpu_us'])} |"
                f" {fmt_mmm(rss, 0)} ≤ {targets['rss_mb']:g}: {verdict(rss['max'] <= targets['rss_mb'])} |"
                f" {e['events']:,} | {e['lost']} |"
            )
    per_commit = {k: s[k].get("events_per_commit") for k in ("raw", "emitter")}
    if all(per_commit.values()):
        out.append(
            "\nEvents per group commit (the daemon's `costwatch_ingest_batches_total`):"
            f" raw {fmt_mmm(per_commit['raw'], 0)}, emitter {fmt_mmm(per_commit['emitter'], 0)}."
        )
    to_ack = {k: s[k].get("daemon_cpu_us_per_event_to_last_ack") for k in ("raw", "emitter")}
    if all(to_ack.values()):
        out.append(
            "\nDaemon CPU until the round's last acknowledgement only (without what it left to do after):"
            f" raw {fmt_mmm(to_ack['raw'], 1)}, emitter {fmt_mmm(to_ack['emitter'], 1)} µs an event."
        )
    out.append("")
    if data.get("db_bytes") and data.get("rows_final"):
        out.append(
            f"DuckDB file written by the daemon: {data['db_bytes'] / 1e6:.0f} MB for {data['rows_final']:,} rows after"
            f" the checkpoint on shutdown = **{data['db_bytes'] / data['rows_final']:.0f} MB per million events**"
            f" ({data.get('db_bytes_running', 0) / 1e6:.0f} MB incl. WAL while running).\n"
        )
    out += _profile(
        data.get("profile"),
        f"Where the daemon's time goes during raw ingest (extra run, {data.get('profile_rate', 0):,.0f} events/s under the profiler)",
    )
    return "\n".join(out)


# -- 3. query ------------------------------------------------------------------------------
def query(data: dict[str, Any]) -> str:
    out = ["## 3. Query\n", _header(data)]
    out.append(
        "Rows generated by DuckDB SQL into a file created with the real schema (`schema.MIGRATIONS`),"
        " time-ordered over the last 60 days, 8 models, 1,000 users; checkpointed. Per size, in each of"
        f" {data['rounds']} rounds: raw DuckDB in the bench process (read-only, 2 threads, 1 GB), then a real"
        f" daemon on the file (the lock forbids both at once): {data['reps']} timed repetitions of each query"
        " after one warm-up; `in daemon` = the `elapsed_ms` `/v1/sql` reports (cursor, read-only transaction,"
        " execute, fetch), `HTTP` = the bench's round trip, `CLI` = wall time of a `costwatch sql --format json`"
        f" process ({data['cli_reps']} per round). Target ≤ 50 ms at 10M for the spend queries through `costwatch sql`"
        " (judged on the in-daemon latency; the CLI wall is dominated by process start-up).\n"
    )
    out.append(
        "| rows | query | raw DuckDB ms | in daemon ms | daemon / raw | HTTP round trip ms | CLI wall ms | target ≤ 50 ms (10M, spend) |"
    )
    out.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    from bench.query import SPEND_QUERIES, TARGET_MS

    sizes = sorted(data["by_size"], key=int)
    for n in sizes:
        e = data["by_size"][n]
        for q in e["raw_ms"]:
            target = "—"
            if int(n) >= 10_000_000 and q in SPEND_QUERIES:
                target = verdict(e["in_daemon_ms"][q]["median"] <= TARGET_MS)
            elif int(n) >= 10_000_000:
                target = "(not a spend query) " + verdict(e["in_daemon_ms"][q]["median"] <= TARGET_MS)
            out.append(
                f"| {int(n):,} | {q} | {fmt_mmm(e['raw_ms'][q])} | {fmt_mmm(e['in_daemon_ms'][q])} |"
                f" {e['daemon_over_raw'][q]:.2f} | {fmt_mmm(e['http_ms'][q])} | {fmt_mmm(e['cli_ms'][q], 0)} | {target} |"
            )
    out.append("")
    out.append("| rows | generated in s | file MB | MB per million events |\n| ---: | ---: | ---: | ---: |")
    for n in sizes:
        e = data["by_size"][n]
        out.append(
            f"| {int(n):,} | {e['generate_s']:.1f} | {e['file_bytes'] / 1e6:.0f} | {e['mb_per_million'] * 1e6 / 1e6:.1f} |"
        )
    out.append("\nQueries:\n")
    for q, sql in data["queries"].items():
        out.append(f"- `{q}`: `{sql}`")
    out.append("")
    return "\n".join(out)


# -- 4. kill switch --------------------------------------------------------------------------
def killswitch(data: dict[str, Any]) -> str:
    loads = data["loads"]
    out = ["## 4. Kill-switch propagation\n", _header(data)]
    paces = ", ".join(f"{ld['label']}: every {ld['pace_s'] * 1000:.0f} ms" for ld in loads)
    out.append(
        f"{data['procs']} instrumented processes (`import costwatch.autoinstrument`, default settings) each call"
        f" the fast server with the real openai SDK in a loop ({paces}); once all have the"
        " daemon's kill-switch state, `costwatch kill --reason bench` runs; each process records the wall time"
        f" of its first `KillSwitchEngaged`. {data['rounds']} rounds per load ({data['rounds'] * data['procs']}"
        " samples), `costwatch resume --all` between rounds.\n"
    )
    out.append(
        f"| load | measured from | min | median | p99 | max | target p99 ≤ {TARGET_P99_MS:.0f} ms |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | --- |"
    )
    for ld in loads:
        s = ld["summary"]
        for what, key in (
            ("the daemon engaging the switch (`engaged_at`)", "from_engage_ms"),
            ("`costwatch kill` starting (CLI start-up included)", "from_cli_start_ms"),
        ):
            v = s[key]
            out.append(
                f"| {ld['label']} | {what} | {v['min']:.0f} | {v['median']:.0f} | {v['p99']:.0f} | {v['max']:.0f}"
                f" | {verdict(v['p99'] <= TARGET_P99_MS)} |"
            )
    out.append("")
    for ld in loads:
        s = ld["summary"]
        out.append(
            f"- {ld['label']}: all cores {fmt_mmm(s['cpu_busy_pct'], 0)} % busy in the"
            " second before the CLI started; `costwatch kill`"
            f" took {fmt_mmm(s['cli_to_engage_ms'], 0)} ms from its start to the daemon's `engaged_at`,"
            f" {fmt_mmm(s['cli_ms'], 0)} ms until it exited. Processes never blocked: {s['not_blocked']}."
        )
    out.append("")
    return "\n".join(out)


# -- 5. footprint --------------------------------------------------------------------------
def footprint() -> str:
    ing, qry = load("ingest"), load("query")
    out = ["## 5. Daemon footprint (RSS)\n"]
    if not ing and not qry:
        return "\n".join([*out, "_Not measured yet._\n"])
    out.append(
        "Sampled from `/proc/<pid>/status` (VmRSS) of the `costwatch daemon` process: idle = 2 s after start on an empty file; under ingest = every 0.1 s during the ingest runs (section 2); with stored rows = the daemon started on the query files (section 3), idle and after the query runs. Target ≤ 200 MB (under sustained ingest ≤ 250 MB, issue 18).\n"
    )
    out.append("| state | RSS MB | target ≤ 200 MB | run |\n| --- | ---: | --- | --- |")
    if ing:
        idle = ing["rss_idle_mb"]
        out.append(
            f"| idle, empty database | {fmt_mmm(idle, 0)} | {verdict(idle['median'] <= 200)} | ingest{_quick(ing)} |"
        )
        limit = (ing.get("targets") or {}).get("rss_mb", 200)
        for kind in ("raw", "emitter"):
            e = ing["summary"][kind]["rss_peak_mb"]
            out.append(
                f"| peak under ingest ({kind}) | {fmt_mmm(e, 0)} | ≤ {limit:g}: {verdict(e['max'] <= limit)}"
                f" | ingest{_quick(ing)} |"
            )
    if qry:
        for n, e in sorted(qry["by_size"].items(), key=lambda kv: int(kv[0])):
            out.append(
                f"| {int(n):,} rows stored, idle | {fmt_mmm(e['rss_idle_mb'], 0)} | {verdict(e['rss_idle_mb']['median'] <= 200)} | query{_quick(qry)} |"
            )
            out.append(
                f"| {int(n):,} rows stored, after the queries | {fmt_mmm(e['rss_after_queries_mb'], 0)} | {verdict(e['rss_after_queries_mb']['max'] <= 200)} | query{_quick(qry)} |"
            )
    out.append("")
    return "\n".join(out)


# -- 5a/5b. the app's footprint: import and install ------------------------------------------
def imports(data: dict[str, Any]) -> str:
    out = ["## 5a. `import costwatch.autoinstrument` in an app\n", _header(data)]
    out.append(
        f"{data['n']} fresh processes per prelude (an app imports `openai` before or after costwatch),"
        " bytecode compiled, a real daemon running (`COSTWATCH_URL`, token, state dir set). CPU ="
        " `time.process_time()` around the import (every thread: the emitter's start during the import"
        " counts); wall = `time.perf_counter()`; objects = GC-tracked objects the import added"
        " (`len(gc.get_objects())` after a full collection, before and after: what every later full"
        " collection walks). Commit"
        f" `{data.get('commit', '?')}`. Target ≤ {data['target_ms']:.0f} ms CPU, no network wait.\n"
    )
    out.append(
        f"| imported first | CPU ms (target ≤ {data['target_ms']:.0f}) | wall ms | GC objects added |"
        " modules added | heavy packages imported |\n| --- | ---: | ---: | ---: | ---: | --- |"
    )
    for key, e in data["by_prelude"].items():
        ok = e["cpu_ms"]["median"] <= data["target_ms"]
        out.append(
            f"| {key} | {fmt_mmm(e['cpu_ms'], 1)} {verdict(ok)} | {fmt_mmm(e['wall_ms'], 1)} |"
            f" {fmt_mmm(e['objects'], 0)} | {fmt_mmm(e['modules'], 0)} | {', '.join(e['heavy']) or 'none'} |"
        )
    out.append("")
    base = data.get("baseline")
    if base:
        out.append(
            f"The same processes alternated with revision `{base['rev']}` (its `costwatch/` first on"
            " `PYTHONPATH`, compiled), so both saw the same load:\n"
        )
        out.append(
            "| imported first | revision | CPU ms | GC objects added | heavy packages imported | CPU ratio |\n"
            "| --- | --- | ---: | ---: | --- | ---: |"
        )
        for key, e in data["by_prelude"].items():
            b = base["by_prelude"].get(key)
            if not b:
                continue
            ratio = e["cpu_ms"]["median"] / b["cpu_ms"]["median"]
            out.append(
                f"| {key} | `{base['rev']}` | {fmt_mmm(b['cpu_ms'], 1)} | {fmt_mmm(b['objects'], 0)} |"
                f" {', '.join(b['heavy']) or 'none'} | 1 |"
            )
            out.append(
                f"| {key} | `{data.get('commit', '?')}` | {fmt_mmm(e['cpu_ms'], 1)} | {fmt_mmm(e['objects'], 0)} |"
                f" {', '.join(e['heavy']) or 'none'} | {ratio:.2f}× |"
            )
        out.append("")
    if data.get("history"):
        out.append("Earlier runs of this section (same method), medians:\n")
        out.append(
            "| commit | run (UTC) | imported first | CPU ms | wall ms | GC objects added | heavy packages |"
        )
        out.append("| --- | --- | --- | ---: | ---: | ---: | --- |")
        for h in data["history"]:
            for key, e in h["summary"].items():
                out.append(
                    f"| `{h['commit']}` | {h.get('started_utc', '?')} | {key} | {e['cpu_ms']['median']:.1f} |"
                    f" {e['wall_ms']['median']:.1f} | {e['objects']['median']:,.0f} | {', '.join(e['heavy']) or 'none'} |"
                )
        out.append("")
    for key, e in data["by_prelude"].items():
        top = e.get("importtime_top") or []
        if not top:
            continue
        out.append(
            f"Largest imports after {key} (`python -X importtime`, one process, cumulative ms, inflated by the"
            " measurement; up to three levels under it):\n"
        )
        out.append(
            "; ".join(
                f"`{r['module']}` {r['cum_us'] / 1000:.1f} (self {r['self_us'] / 1000:.1f})" for r in top
            )
            + "\n"
        )
    return "\n".join(out)


def installs(data: dict[str, Any]) -> str:
    out = ["## 5b. Installed size: `pip install costwatch`, `[daemon]`, `[fleet]`\n", _header(data)]
    out.append(
        "Each install into a fresh `python -m venv` (Python"
        f" {data.get('python', '?')}) from this tree: `pip install DIR`, `DIR[daemon]`, `DIR[fleet]` (real"
        " dependency resolution). Size = bytes of the files under site-packages minus an empty venv's"
        " (pip). An app brings its own SDK (`openai`/`anthropic`, with pydantic and httpx), not counted.\n"
    )
    out.append("| install | MB added | distributions | largest (MB) |\n| --- | ---: | ---: | --- |")
    for label, e in data["installs"].items():
        largest = ", ".join(f"{name} {size / 1e6:.1f}" for name, size in e["largest"][:6])
        out.append(f"| `{label}` | {e['added_bytes'] / 1e6:.1f} | {e['distributions']} | {largest} |")
    out.append("")
    return "\n".join(out)


# -- 6. spool --------------------------------------------------------------------------------
def spool(data: dict[str, Any]) -> str:
    s = data["summary"]
    out = ["## 6. Spool replay after a daemon outage\n", _header(data)]
    out.append(
        f"A process spools {data['events']:,} events with `costwatch.instrumentation.spool.Spool` (2k-event"
        " appends, as the emitter does while the daemon is down) and exits; a daemon starts; a fresh process"
        " starts an `Emitter` (default settings except `spool_max_bytes` = 2 GiB, so everything fits) that takes"
        " the orphaned segments over and replays them. Drain time = emitter start → spool directory empty;"
        f" rows counted after. {data['rounds']} rounds.\n"
    )
    out.append(
        "| events | drain time s | events/s | lost | spool MB per million | emitter CPU ms / 1k events |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    out.append(
        f"| {data['events']:,} | {fmt_mmm(s['drain_s'], 1)} | {fmt_mmm(s['events_per_s'], 0)} | {s['lost']} |"
        f" {fmt_mmm({k: (v * 1e6 / 1e6 if k != 'n' else v) for k, v in s['spool_mb_per_million'].items()}, 0)} |"
        f" {fmt_mmm(s['emitter_cpu_ms_per_1k'], 1)} |"
    )
    out.append("")
    return "\n".join(out)


def callpath(data: dict[str, Any]) -> str:
    out = ["### 1b. Where the added time is: the call path alone\n", _header(data)]
    out.append(
        "Diagnostic (`bench/callpath.py`): one process per mode alternates blocks of"
        f" {data['k']} calls with costwatch's `send` patch installed (its emitter replaced by one that discards"
        " records: no emitter thread) and removed (`uninstrument()`), "
        f"{data['blocks']} blocks each. The difference is what the app's thread pays inside `send`.\n"
    )
    out.append(
        "| mode | calls per variant | median added µs per call (target ≤ 10) | wall ratio |\n| --- | ---: | ---: | ---: |"
    )
    for mode, e in data["summary"].items():
        out.append(
            f"| {mode} | {e['calls']:,} | {fmt_mmm(e['added_median_us'], 1)} {verdict(e['added_median_us']['median'] <= 10)} |"
            f" {fmt_mmm(e['wall_ratio'], 3)} |"
        )
    out.append("")
    return "\n".join(out)


def fleet(data: dict[str, Any]) -> str:
    rep, kill = data["replication"], data["kill"]
    s = kill["summary"]
    out = ["## 7. Fleet mode on PostgreSQL\n", _header(data)]
    out.append(
        f"Replication: a daemon without fleet mode stores {rep['events']:,} events; restarted with"
        " `COSTWATCH_FLEET_DSN` (a local PostgreSQL 15, fsync off), it ships them in batches of"
        f" {rep['batch_events']:,} (COPY into a staging table, `INSERT … ON CONFLICT DO NOTHING`, watermark"
        " written back to DuckDB per batch). Timed from the daemon's start to lag 0.\n"
    )
    out.append("| run | seconds | events/s |\n| --- | ---: | ---: |")
    out.append(f"| backlog into an empty ledger | {rep['first_s']:.1f} | {rep['first_events_per_s']:,.0f} |")
    out.append(
        f"| the same rows again (watermark reset: every row a conflict) | {rep['resend_s']:.1f}"
        f" | {rep['resend_events_per_s']:,.0f} |"
    )
    out.append(
        f"\nLedger afterwards: {rep['ledger_rows']:,} rows, {rep['ledger_distinct_ids']:,} distinct ids.\n"
    )
    out.append(
        f"Fleet kill switch: two daemons (processes) on one ledger; an instrumented process on host B calls"
        " the fake provider every 5 ms; `costwatch kill --fleet` runs against host A. Measured from the CLI"
        f" process's start to the first `KillSwitchEngaged` on host B, then `resume --fleet`; {kill['trials']}"
        " trials.\n"
    )
    out.append(
        f"| min | median | p99 | max | target p99 ≤ {data['target_p99_s'] * 1000:.0f} ms |\n"
        "| ---: | ---: | ---: | ---: | --- |\n"
        f"| {s['min'] * 1000:.0f} ms | {s['median'] * 1000:.0f} ms | {s['p99'] * 1000:.0f} ms"
        f" | {s['max'] * 1000:.0f} ms | {verdict(s['p99'] <= data['target_p99_s'])} |\n"
    )
    return "\n".join(out)


# -- 0. instructions ----------------------------------------------------------------------
def instructions(data: dict[str, Any]) -> str:
    res = data["results"]
    n_lo, n_hi = data["n"]
    target = data["target_pct"]
    out = ["## 1a. Instructions per call (callgrind): the figures to steer by\n", _header(data)]
    out.append(
        "Each cell runs `bench/instructions_worker.py` (real SDK against `bench/fastserver.py`, real daemon"
        f" started by the section) under `valgrind --tool=callgrind --separate-threads=yes` twice, with"
        f" N = {n_lo} and N = {n_hi} calls; (I({n_hi}) − I({n_lo})) / {n_hi - n_lo} is one call, every thread and"
        " the exit flush included, imports and start-up cancelled out. `PYTHONHASHSEED=0` (two runs of the"
        " same build agree within a few hundred instructions in total). *app thread*: the thread making the"
        " calls (the call path); *background*: every other thread (costwatch's emitter converting, encoding"
        " and POSTing, its kill-switch long poll, asyncio's helpers). Costwatch's flush interval is scaled by"
        " the valgrind slowdown measured in the same run (the uninstrumented worker's seconds per call under"
        " valgrind against natively), so its timers fire as often per call as in a real run; the"
        " `costwatch @0.5 s` row keeps the real 0.5 s and shows what timer work adds when a call is ~50×"
        " slower. *floor*: a pass-through `send` patch appending (start, end, URL, status, request id) to a"
        " deque.\n"
    )
    packages = data.get("machine", {}).get("packages", {})
    if packages:
        names = ("openai", "anthropic", "httpx2", "httpx", "msgspec")
        out.append(
            "Packages in this run: "
            + ", ".join(f"{k} {packages[k]}" for k in names if k in packages)
            + f"; {data.get('valgrind', 'valgrind')}.\n"
        )
    if "peers" in data:  # runs before the peers were added say nothing
        out.append(
            "Peers in this run: "
            + (
                "yes, in their own environments (`instructions_peers`, the table after this one)."
                if data["peers"]
                else "no (`--no-peers`); the peer table after this one comes from its own run, stamped there."
            )
            + "\n"
        )
    before = data.get("before")
    head = (
        "| API | mode | uninstrumented | floor | costwatch | added | added % (target ≤ "
        + f"{target:g} %) | app thread added | background | flush interval |"
    )
    sep = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if before:
        head += f" costwatch before ({before}) | added before |"
        sep += " ---: | ---: |"
    out += [head, sep]
    for api, mode in data["cells"]:
        bare = res.get(f"{api}/{mode}/none")
        cw = res.get(f"{api}/{mode}/costwatch")
        floor = res.get(f"{api}/{mode}/floor")
        if bare is None or cw is None:
            continue
        added = cw["per_call"] - bare["per_call"]
        pct = 100 * added / bare["per_call"]
        floor_cell = f"{floor['per_call']:,}" if floor else "—"
        row = (
            f"| {api} | {mode} | {bare['per_call']:,} | {floor_cell} |"
            f" {cw['per_call']:,} | {added:+,} | {pct:+.2f} % {verdict(pct <= target)} |"
            f" {cw['app_thread'] - bare['app_thread']:+,} | {cw['background'] - bare['background']:+,} |"
            f" {cw.get('interval_s', 0):.1f} s |"
        )
        if before:
            b = res.get(f"{api}/{mode}/costwatch-before")
            row += (
                f" {b['per_call']:,} | {b['per_call'] - bare['per_call']:+,} ({100 * (b['per_call'] - bare['per_call']) / bare['per_call']:+.2f} %) |"
                if b
                else " — | — |"
            )
        out.append(row)
    out.append("")
    repeats = [(k, v) for k, v in res.items() if k.endswith("/costwatch-repeat")]
    if repeats:
        out.append(data.get("repeat_note", "") + "\n")
        out.append("| cell | costwatch | same build again | difference |\n| --- | ---: | ---: | ---: |")
        for key, row in repeats:
            first = res[key.replace("-repeat", "")]
            out.append(
                f"| {key.rsplit('/', 1)[0]} | {first['per_call']:,} | {row['per_call']:,} |"
                f" {row['per_call'] - first['per_call']:+,} |"
            )
        out.append("")
    supplement = data.get("supplement")
    if supplement:
        out.append(supplement["note"] + "\n")
        out.append(
            "| API | mode | uninstrumented (table above) | costwatch | added | added % | app thread added | background |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for row in supplement["rows"]:
            bare = res[f"{row['api']}/{row['mode']}/none"]
            added = row["per_call"] - bare["per_call"]
            out.append(
                f"| {row['api']} | {row['mode']} | {bare['per_call']:,} | {row['per_call']:,} | {added:+,} |"
                f" {100 * added / bare['per_call']:+.2f} % {verdict(100 * added / bare['per_call'] <= target)} |"
                f" {row['app_thread'] - bare['app_thread']:+,} | {row['background'] - bare['background']:+,} |"
            )
        out.append("")
    timers = [(k, v) for k, v in res.items() if k.endswith("/costwatch@0.5s")]
    if timers:
        out.append(
            "Timer work apart (same cell with the real 0.5 s flush interval, i.e. ~50× more ticks and POSTs per call than natively):\n"
        )
        out.append(
            "| cell | flush interval | instructions per call | background per call | ticks (N=20 / N=120) | POSTs |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )
        for key, row in timers:
            scaled = res[key.replace("@0.5s", "")]
            for r, label in ((scaled, f"{scaled['interval_s']:.0f} s (scaled)"), (row, "0.5 s")):
                runs = r["runs"]
                out.append(
                    f"| {key.rsplit('/', 1)[0]} | {label} | {r['per_call']:,} | {r['background']:,} |"
                    f" {runs[str(n_lo)].get('ticks')} / {runs[str(n_hi)].get('ticks')} |"
                    f" {runs[str(n_lo)].get('posts')} / {runs[str(n_hi)].get('posts')} |"
                )
        out.append("")
    for cell, prof in data.get("profiles", {}).items():
        if cell not in ("chat/sync", "chat/stream", "messages/sync"):
            continue
        out.append(
            f"Where costwatch's instructions go, {cell} (`callgrind_annotate`, self instructions per call, costwatch's slope minus the uninstrumented slope, all threads; C functions — Python code shows as the interpreter's):\n"
        )
        out.append("| function | added per call |\n| --- | ---: |")
        for fn, v in prof["added_by_function"][:15]:
            out.append(f"| `{fn}` | {v:,} |")
        out.append("")
    if data.get("peers_note"):
        out.append(data["peers_note"] + "\n")
    return "\n".join(out)


def _k(v: int) -> str:
    return f"{v / 1000:+,.1f} k"


PEER_LABELS = {"otel": "otel-openai-v2", "openlit": "openlit"}
PEER_APIS = {"otel": ("chat",), "openlit": ("chat", "responses", "messages")}  # as bench.instructions.PEERS
ALL_CELLS = [(a, m) for a in ("chat", "responses", "messages") for m in ("sync", "async", "stream")]


def instructions_peers(data: dict[str, Any]) -> str:
    """The peer comparison under section 1a: each peer against costwatch in the peer's environment."""
    res = data["results"]
    n_lo, n_hi = data["n"]
    envs = data["envs"]
    cells = [tuple(c) for c in data["cells"]]
    by_peer = {info["peer"]: env for env, info in envs.items()}
    out = ["### 1a-peers. The peers, same method, each in its own environment\n"]
    partial = (
        " **Partial: the run was cut short; the cells below are the ones that finished.**"
        if data.get("partial")
        else ""
    )
    out.append(
        f"_Run {data.get('started_utc', '?')} UTC{_quick(data)}, `{data.get('command', '?')}`,"
        f" {data.get('elapsed_s', '?')} s; load average at start"
        f" {data.get('machine', {}).get('loadavg_at_start')}.{partial}_\n"
    )
    missing = [f"{a}/{m}" for a, m in ALL_CELLS if (a, m) not in cells]
    out.append(
        "Same worker, method and conditions as the table above (callgrind, N = "
        f"{n_lo} and N = {n_hi}, `PYTHONHASHSEED=0`, every thread; costwatch's kill-switch and"
        " limits threads apart), but each peer runs in **its own environment** (`bench/venvs.py`, exact pins)"
        " against the **uninstrumented baseline of that environment measured in the same run**, and"
        " costwatch is measured in that environment too, so every comparison below is within one"
        " environment and one run. `otel`: `opentelemetry-instrumentation-openai-v2` (wraps OpenAI chat"
        " completions and embeddings only: no Responses, no Anthropic) with an SDK tracer provider,"
        " batch span processor and a null exporter, and an SDK meter provider (in-memory reader), message"
        " content not captured (its default), in env `otel` (the main environment's packages plus the"
        " peer). `openlit`: `openlit.init` with its OpenAI instrumentor (Anthropic's for messages), the"
        " same null exporters for spans and log events, its metrics on the same meter provider, a local"
        " pricing file, `capture_message_content=False` (its default is on: the setting that costs it"
        " least), in env `old` (openai 2.x / anthropic 0.x on `httpx`: openlit requires `openai<3`,"
        " `anthropic<1`). The peers export in process to exporters that drop everything; costwatch sends"
        " its events to the real daemon. Timers: costwatch's flush interval and the peers' batch"
        " processors' 5 s schedule delay are stretched by the same factor, the valgrind slowdown of that"
        " environment's uninstrumented run. *—*: the peer does not instrument that API.\n"
    )
    for env, info in envs.items():
        pk = info.get("packages", {})
        out.append(
            f"- env `{env}` ({PEER_LABELS[info['peer']]}): " + ", ".join(f"{k} {v}" for k, v in pk.items())
        )
    out.append("")
    command = data.get("command", "").split()
    asked = command[command.index("--cells") + 1].split(",") if "--cells" in command else None
    requested = [c for c in ALL_CELLS if asked is None or f"{c[0]}/{c[1]}" in asked or c[0] in asked]
    requested.sort(key=lambda c: asked.index(f"{c[0]}/{c[1]}") if asked and f"{c[0]}/{c[1]}" in asked else 99)
    unfinished = [f"{a}/{m}" for a, m in requested if (a, m) not in cells]
    not_asked = [c for c in missing if c not in unfinished]
    if unfinished:
        out.append(f"Not finished when the run was stopped (deadline): {', '.join(unfinished)}.\n")
    if not_asked:
        out.append(f"Not measured in this run: {', '.join(not_asked)} (not in its `--cells`).\n")

    def added(env: str, api: str, mode: str, variant: str) -> tuple[int, float] | None:
        bare = res.get(f"{env}:{api}/{mode}/none")
        row = res.get(f"{env}:{api}/{mode}/{variant}")
        if bare is None or row is None:
            return None
        a = row["per_call"] - bare["per_call"]
        return a, 100 * a / bare["per_call"]

    def cell_text(v: tuple[int, float] | None, target: float | None = None) -> str:
        if v is None:
            return "—"
        return f"{v[0]:+,} ({v[1]:+.2f} %{' ' + verdict(v[1] <= target) if target is not None else ''})"

    out.append(
        "| API | mode | env | uninstrumented | costwatch added (target ≤ "
        f"{data['target_pct']:g} %) | otel added | openlit added |"
    )
    out.append("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    verdicts = []
    for api, mode in cells:
        comparisons = []
        for peer, env in by_peer.items():
            bare = res.get(f"{env}:{api}/{mode}/none")
            if bare is None:
                continue
            cw = added(env, api, mode, "costwatch")
            peer_cells = {p: (added(env, api, mode, p) if p == peer else None) for p in PEER_LABELS}
            out.append(
                f"| {api} | {mode} | {env} | {bare['per_call']:,} | {cell_text(cw, data['target_pct'])} |"
                f" {cell_text(peer_cells['otel'])} | {cell_text(peer_cells['openlit'])} |"
            )
            if cw is not None and peer_cells[peer] is not None:
                comparisons.append((peer, env, cw, peer_cells[peer]))
        verdicts.append(((api, mode), comparisons))
    out.append("")
    out.append(
        "Lower than both peers? (costwatch's added % against each peer's, same environment and run;"
        " a peer that does not instrument the cell is left out and named):\n"
    )
    out.append("| cell | vs otel (env otel) | vs openlit (env old) | lower than both peers? |")
    out.append("| --- | --- | --- | --- |")
    for (api, mode), comparisons in verdicts:
        cols = {}
        for peer, _env, cw, pv in comparisons:
            word = "lower" if cw[1] < pv[1] else "**not lower**"
            cols[peer] = f"{cw[1]:+.2f} % vs {pv[1]:+.2f} %: {word}"
        for peer, apis in PEER_APIS.items():
            if peer not in cols:
                cols[peer] = "— (not instrumented by the peer)" if api not in apis else "— (not measured)"
        lower = [cw[1] < pv[1] for _p, _e, cw, pv in comparisons]
        compared = [PEER_LABELS[p] for p, _e, _c, _v in comparisons]
        caveats = [
            f"{PEER_LABELS[p]} {'does not instrument it' if cols[p].startswith('— (not instr') else 'not measured'}"
            for p in PEER_LABELS
            if cols[p].startswith("—")
        ]
        if not lower:
            answer = "— (no peer measured)"
        elif not all(lower):
            answer = "**no**"
        elif caveats:
            answer = f"**yes** (against {', '.join(compared)}; {'; '.join(caveats)})"
        else:
            answer = "**yes**"
        out.append(f"| {api}/{mode} | {cols['otel']} | {cols['openlit']} | {answer} |")
    out.append("")
    out.append(
        "Per variant (instructions per call; *background*: every thread but the app's, timer threads"
        " excluded; *timers*: costwatch's flush interval or the peer's batch schedule delay; *exported*:"
        f" spans / log events the null exporters received at N = {n_hi}, or events costwatch sent):\n"
    )
    out.append(
        "| env | cell | variant | per call | app thread | background | timer threads (apart) | timers | exported / sent |"
    )
    out.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for api, mode in cells:
        for env, info in envs.items():
            for variant in info["variants"]:
                row = res.get(f"{env}:{api}/{mode}/{variant}")
                if row is None:
                    continue
                hi = row["runs"][str(n_hi)]
                timers = (
                    f"{row['interval_s']:.1f} s"
                    if "interval_s" in row
                    else f"{row['peer_delay_ms'] / 1000:.1f} s"
                    if "peer_delay_ms" in row
                    else "—"
                )
                exported = (
                    f"{hi['exported']['spans']} / {hi['exported']['logs']}"
                    if "exported" in hi
                    else str(hi["sent"])
                    if "sent" in hi
                    else "—"
                )
                tt = sum(row.get("timer_threads", {}).values())
                out.append(
                    f"| {env} | {api}/{mode} | {variant} | {row['per_call']:,} | {row['app_thread']:,} |"
                    f" {row['background']:,} | {f'{tt:,}' if row.get('timer_threads') else '—'} | {timers} | {exported} |"
                )
    out.append("")
    return "\n".join(out)


SECTION_WRITERS = {
    "instructions": instructions,
    "overhead": overhead,
    "callpath": callpath,
    "ingest": ingest,
    "query": query,
    "killswitch": killswitch,
    "spool": spool,
    "fleet": fleet,
    "imports": imports,
    "installs": installs,
}


def _peers_text(main: dict[str, Any]) -> str:
    """Section 1a's peer table, from ``instructions_peers.json`` (its own run, stamped)."""
    peers = load("instructions_peers")
    if peers is None:
        return "### 1a-peers. The peers, same method\n\n_Not measured yet: `python -m bench instructions` (peers are on by default)._\n"
    try:
        return instructions_peers(peers)
    except Exception as exc:  # a report bug must not lose the rest
        return f"### 1a-peers\n\n_Could not render: {exc!r}_\n"


def write() -> Path:
    parts = ["# Benchmarks\n"]
    parts.append(
        "Generated by `python -m bench` (see `bench/__main__.py`); every figure below was measured by that"
        " command on the machine described, figures from `--quick` runs are marked. Cells are"
        " **median (min – max)** over repeated runs. The machine has 2 cores shared with other work, so"
        " ratios measured in the same run are the figures to trust; absolute times are context.\n"
    )
    parts.append(
        "Reproduce: `python -m bench` (or `./dev bench`) runs every section and rewrites this page;"
        " `python -m bench [--quick] instructions overhead callpath ingest query killswitch spool fleet imports installs footprint` runs a"
        " subset (the page keeps the other sections' last results, each stamped with its own command and"
        " time). The first run builds the peer environments under `bench/.venvs/` with pip (exact pins,"
        " needs PyPI). `python -m bench instructions` also measures the peers in their environments"
        " (`--no-peers` skips them, `--peers-only` measures only them, `--cells chat/sync,messages/sync`"
        " restricts the cells; a run cut short keeps the cells it finished, marked partial)."
        " Raw results: `bench/.results/*.json`.\n"
    )
    machine = None
    sections = []
    for name, writer in SECTION_WRITERS.items():
        data = load(name)
        if data is None:
            sections.append(f"## {name}\n\n_Not measured yet._\n")
            continue
        if name != "instructions":  # the Machine section describes the wall-clock sections' runs
            machine = machine or data.get("machine")
        try:
            text = writer(data)
            if name == "instructions":
                text += "\n" + _peers_text(data)
            sections.append(text)
        except Exception as exc:  # a report bug must not lose the others
            sections.append(f"## {name}\n\n_Could not render: {exc!r}_\n")
    if machine:
        pk = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        parts.append(
            f"## Machine\n\n- {machine['nproc']} × {machine['cpu']}, {machine['memory']} RAM, Linux {machine['kernel']}\n"
            f"- Python {machine['python']}; {pk}\n"
            "- Peers: `opentelemetry-instrumentation-openai-v2` 2.4b0 + `opentelemetry-util-genai` 1.1b0"
            " (env `main`, bench/.venvs/otel), `openlit` 1.45.0 with openai 2.54.0 / anthropic 0.125.0"
            " (env `old`, bench/.venvs/old); both built by `bench/venvs.py` with exact pins.\n"
        )
    sections.insert(6, footprint())
    # 5a and 5b (the app's footprint) follow section 5, the daemon's.
    sections[7:7] = [sections.pop(-2), sections.pop(-1)]
    parts += sections
    if NOTES.exists():
        parts.append(NOTES.read_text())
    DOC.write_text("\n".join(parts))
    return DOC
