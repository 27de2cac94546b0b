"""``python -m bench [--quick] [which…]``: run benchmark sections, then rewrite docs/benchmarks.md.

Sections: instructions (instructions per call under callgrind), overhead, callpath (the patch's own cost,
a diagnostic for overhead), ingest, query, killswitch, spool, fleet (PostgreSQL fleet mode), imports (an
app's ``import costwatch.autoinstrument``), installs (site-packages of each install) (default: all, in that
order); ``footprint`` runs ingest and query, where the daemon's RSS is sampled, then imports and installs.
Each section's raw results go to ``bench/.results/NAME.json``; the report is rebuilt from every saved
section, so a section can be rerun on its own.

instructions also measures the peers (otel-openai-v2, openlit) in their own environments
(``bench/.results/instructions_peers.json``) unless ``--no-peers``; ``--peers-only`` measures
just them, ``--cells chat/sync,messages/sync`` restricts it to some API/mode cells.
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import sys
import time
import traceback

from bench import common, instructions, report

SECTIONS = (
    "instructions", "overhead", "callpath", "ingest", "query", "killswitch", "spool", "fleet", "imports", "installs",
)  # fmt: skip
ALIASES = {"footprint": ("ingest", "query", "imports", "installs")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke run; figures are marked quick)"
    )
    parser.add_argument("--no-report", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--cells",
        help="instructions: only these API/mode cells, e.g. chat/sync,chat/stream,messages (= every mode)",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="instructions: also measure the peers (otel, openlit) in their environments (default: yes)",
    )
    parser.add_argument(
        "--peers-only",
        action="store_true",
        help="instructions: the peer environments only (bench/.results/instructions_peers.json)",
    )
    parser.add_argument("which", nargs="*", help=f"sections: {', '.join(SECTIONS)}, footprint (default all)")
    args = parser.parse_args(argv)
    chosen: list[str] = []
    for name in args.which or SECTIONS:
        for section in ALIASES.get(name, (name,)):
            if section not in SECTIONS:
                parser.error(f"unknown section {name!r}")
            if section not in chosen:
                chosen.append(section)
    options = (
        (" --quick" if args.quick else "")
        + (f" --cells {args.cells}" if args.cells else "")
        + ("" if args.peers else " --no-peers")
        + (" --peers-only" if args.peers_only else "")
    )
    command = "python -m bench" + options + "".join(f" {w}" for w in args.which)
    # What users run is installed with its bytecode compiled (pip does it). A checkout run
    # with PYTHONDONTWRITEBYTECODE=1 (set on the machines of these figures) would instead
    # compile every costwatch module in every process it starts: 17 ms more for the CLI.
    compileall.compile_dir(str(common.ROOT / "costwatch"), quiet=1)
    try:
        cells = instructions.parse_cells(args.cells)
    except ValueError as exc:
        parser.error(str(exc))
    failed = 0
    for section in chosen:
        started = time.time()
        print(f"== {section}{' (quick)' if args.quick else ''}", flush=True)
        try:
            module = importlib.import_module(f"bench.{section}")
            kwargs = {}
            if section == "instructions":
                kwargs = dict(cells=cells, peers=args.peers, peers_only=args.peers_only)
            data = module.run(args.quick, log=lambda msg: print(msg, flush=True), **kwargs)
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        elapsed = round(time.time() - started, 1)
        # A section may return several results files (instructions: its peers apart)
        for name, part in data.pop("_sections", {section: data}).items():
            part.update(
                section=name,
                command=command,
                started_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
                elapsed_s=elapsed,
                machine=common.machine(),
            )
            common.save(name, part)
        print(f"== {section} done in {elapsed} s", flush=True)
    if not args.no_report:
        path = report.write()
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
