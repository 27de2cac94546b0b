"""Reading the Grafana dashboard JSON: panels, PromQL targets, template variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Grafana's built-in variables, and what the tests put in their place.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES_RE = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Target:
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(
                Target(
                    panel["id"],
                    panel["title"],
                    panel["type"],
                    target.get("refId", ""),
                    target.get("expr", ""),
                )
            )
    return out


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def variable_query(var: Mapping[str, Any]) -> str:
    query = var.get("query")
    if isinstance(query, dict):
        return str(query.get("query", ""))
    return str(query or "")


def used_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VAR_RE.finditer(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` (built-ins included)."""
    merged = {**BUILTINS, **values}

    def repl(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in merged:
            raise KeyError(f"no value for template variable ${name}")
        return merged[name]

    return VAR_RE.sub(repl, text)


# -- the structural check (an equivalent of Grafana's schema for what this dashboard uses) ----
PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table"}
REQUIRED_VARIABLES = {"datasource", "app", "model", "request_model", "provider", "host"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def check(board: Mapping[str, Any]) -> list[str]:
    """Everything wrong with ``board``, one line each (empty when it is fine)."""
    problems: list[str] = []
    problems += _check_top_level(board)
    problems += _check_panels(board)
    problems += _check_grid(board)
    problems += _check_variables(board)
    return problems


def _check_top_level(board: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time", "annotations", "__inputs"):
        if key not in board:
            problems.append(f"missing top-level key {key!r}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 39:
        problems.append(f"schemaVersion {board.get('schemaVersion')!r} < 39")
    uid = board.get("uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= 40:
        problems.append(f"uid {uid!r} must be a string of 1 to 40 characters")
    if board.get("id") is not None:
        problems.append("id must be null in an exported dashboard (Grafana assigns one)")
    inputs = {i.get("name"): i for i in board.get("__inputs", [])}
    ds_input = inputs.get("DS_PROMETHEUS", {})
    if ds_input.get("type") != "datasource" or ds_input.get("pluginId") != "prometheus":
        problems.append("__inputs lacks a prometheus datasource input DS_PROMETHEUS")
    return problems


def _check_panels(board: Mapping[str, Any]) -> list[str]:
    problems = []
    ids = [p.get("id") for p in iter_panels(board)]
    if not all(isinstance(i, int) for i in ids):
        problems.append(f"panel ids must be integers: {ids}")
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes:
        problems.append(f"duplicate panel ids: {dupes}")
    for panel in iter_panels(board):
        name = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{name}: type {panel.get('type')!r} is not one of {sorted(PANEL_TYPES)}")
        if not panel.get("title"):
            problems.append(f"{name}: no title")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{name}: datasource {panel.get('datasource')} is not {DATASOURCE}")
        panel_targets = panel.get("targets") or []
        if not panel_targets:
            problems.append(f"{name}: no query")
        ref_ids = [t.get("refId") for t in panel_targets]
        if not all(ref_ids) or len(ref_ids) != len(set(ref_ids)):
            problems.append(f"{name}: refIds must be present and unique: {ref_ids}")
        for target in panel_targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{name}: target {target.get('refId')} has no expr")
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{name}: target {target.get('refId')} datasource {target.get('datasource')}")
    kinds = {p.get("type") for p in iter_panels(board)}
    if not kinds >= {"stat", "timeseries", "bargauge", "table"}:
        problems.append(f"panel types {sorted(map(str, kinds))} lack one of stat/timeseries/bargauge/table")
    return problems


def _check_grid(board: Mapping[str, Any]) -> list[str]:
    problems = []
    boxes = []
    for panel in iter_panels(board):
        g = panel.get("gridPos") or {}
        name = f"panel {panel.get('id')} ({panel.get('title')!r})"
        if not {"x", "y", "w", "h"} <= set(g):
            problems.append(f"{name}: gridPos {g} lacks x/y/w/h")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1:
            problems.append(f"{name}: gridPos {g} out of range")
        if g["x"] + g["w"] > 24:
            problems.append(f"{name}: gridPos {g} exceeds 24 columns")
        boxes.append((name, g))
    for i, (a, ga) in enumerate(boxes):
        for b, gb in boxes[i + 1 :]:
            if (
                ga["x"] < gb["x"] + gb["w"]
                and gb["x"] < ga["x"] + ga["w"]
                and ga["y"] < gb["y"] + gb["h"]
                and gb["y"] < ga["y"] + ga["h"]
            ):
                problems.append(f"{a} and {b} overlap: {ga} / {gb}")
    return problems


def _check_variables(board: Mapping[str, Any]) -> list[str]:
    problems = []
    defined = variables(board)
    order = list(defined)
    missing = REQUIRED_VARIABLES - set(defined)
    if missing:
        problems.append(f"template variables missing: {sorted(missing)}")
    ds = defined.get("datasource", {})
    if ds and (ds.get("type") != "datasource" or ds.get("query") != "prometheus"):
        problems.append("$datasource must be a datasource variable of type prometheus")
    for name in sorted((REQUIRED_VARIABLES - {"datasource"}) & set(defined)):
        var = defined[name]
        match = LABEL_VALUES_RE.match(variable_query(var))
        if var.get("type") != "query" or var.get("datasource") != DATASOURCE or match is None:
            problems.append(f"${name} must be a label_values() query on {DATASOURCE}")
        elif match.group("label") != name:
            problems.append(f"${name} lists label {match.group('label')!r}")
        if not var.get("includeAll") or var.get("allValue") != ".*":
            problems.append(f"${name} needs includeAll with allValue '.*'")
    # A variable's query may only use variables defined before it (Grafana resolves in order).
    for i, name in enumerate(order):
        for dep in used_variables(variable_query(defined[name])):
            if dep not in order[:i]:
                problems.append(f"${name} uses ${dep}, which is not defined before it")
    known = set(defined) | set(BUILTINS)
    used: dict[str, set[str]] = {}
    for target in targets(board):
        for name in used_variables(target.expr):
            used.setdefault(name, set()).add(target.panel_title)
    for panel in iter_panels(board):
        for name in used_variables(json.dumps(panel.get("datasource", ""))):
            used.setdefault(name, set()).add(panel.get("title", ""))
    for name, where in sorted(used.items()):
        if name not in known:
            problems.append(f"${name} is used by {sorted(where)} but not defined")
    unused = (REQUIRED_VARIABLES - {"datasource"}) - set(used)
    if unused:
        problems.append(f"template variables no panel uses: {sorted(unused)}")
    return problems
