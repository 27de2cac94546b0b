"""Loading `alerts/*.yml`: YAML to a validated `RuleSet`, or errors that name file, line and field.

pydantic's error location is walked through the YAML node tree, whose marks
carry line numbers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from costwatch.daemon.rules.models import (
    RULE_KINDS,
    BudgetRule,
    FileRule,
    ForecastRule,
    RateLimitRule,
    RuleSet,
    RulesFile,
)

log = logging.getLogger("costwatch.rules")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RuleError(Exception):
    """Raised by `load_rules`; `errors` holds one "file:line: field: message" string each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def check_rules(directory: Path | str) -> list[str]:
    """What `costwatch rules check [DIR]` prints: [] when every file is valid."""
    try:
        load_rules(Path(directory))
    except RuleError as exc:
        return exc.errors
    return []


def load_rules(directory: Path | str, environ: Mapping[str, str] | None = None) -> RuleSet:
    """Load and validate every `*.yml`/`*.yaml` in `directory`; all-or-nothing.

    A file with ``enabled: false`` is validated on its own and then left out
    (that is how `alerts/example.yml` ships); a Prometheus rule file (top-level
    ``groups:``) is skipped, so both kinds can share the `alerts/` directory.
    """
    directory = Path(directory)
    env = os.environ if environ is None else environ
    if not directory.is_dir():
        raise RuleError([f"{directory}: not a directory"])
    errors: list[str] = []
    active = _Collector()
    for path in sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")]):
        parsed = _load_file(path, env, errors)
        if parsed is None:
            continue
        model, root = parsed
        if model.enabled:
            active.add(path, model, root, errors)
        else:
            alone = _Collector()
            alone.add(path, model, root, errors)
            alone.check_references(errors)
    active.check_references(errors)
    if errors:
        raise RuleError(errors)
    return active.ruleset


class _Collector:
    """Merges files into one RuleSet, remembering where each rule came from for error lines."""

    def __init__(self) -> None:
        self.ruleset = RuleSet()
        self.origins: list[tuple[str, yaml.Node, int, FileRule]] = []  # (file, root node, index, rule)

    def add(self, path: Path, model: RulesFile, root: yaml.Node, errors: list[str]) -> None:
        for index, rule in enumerate(model.rules):
            line = _line(root, ("rules", index))
            if rule.name in self.ruleset.sources:
                errors.append(
                    f"{path}:{_line(root, ('rules', index, 'name'))}: rules[{index}].name: "
                    f"duplicate rule name "
                    f"{rule.name!r} (first defined at {self.ruleset.sources[rule.name]})"
                )
                continue
            self.ruleset.sources[rule.name] = f"{path}:{line}"
            if isinstance(rule, RateLimitRule):
                self.ruleset.rate_limits.append(rule)
            else:
                self.ruleset.rules.append(rule)
            self.origins.append((str(path), root, index, rule))
        for cname, channel in model.channels.items():
            if cname in self.ruleset.channels:
                errors.append(
                    f"{path}:{_line(root, ('channels', cname))}: channels.{cname}: duplicate channel name"
                )
            self.ruleset.channels[cname] = channel

    def check_references(self, errors: list[str]) -> None:
        """Channel names and forecast budgets may live in other files: checked once all are read."""
        budgets = {r.name: r for r in self.ruleset.rules if isinstance(r, BudgetRule)}
        for file, root, index, rule in self.origins:
            for i, cname in enumerate(rule.notify):
                if cname not in self.ruleset.channels:
                    errors.append(
                        _at(file, root, ("rules", index, "notify", i), f"unknown channel {cname!r}")
                    )
            if isinstance(rule, ForecastRule):
                target = budgets.get(rule.budget)
                if target is None:
                    errors.append(
                        _at(file, root, ("rules", index, "budget"), f"no budget rule {rule.budget!r}")
                    )
                elif rule.forecast.exhausts_before_window_end and not target.calendar:
                    loc = ("rules", index, "forecast", "exhausts_before_window_end")
                    msg = (
                        f"budget {rule.budget!r} has a rolling window, which never ends: use exhausts_within"
                    )
                    errors.append(_at(file, root, loc, msg))


def _line(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    return int(_at("", root, loc, "").split(":")[1])


# libyaml when PyYAML was built with it (the wheels are): the pure-Python loader is an order of
# magnitude slower.
_YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers in errors) and the data, from one parse."""
    loader = _YAML_LOADER(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _load_file(path: Path, env: Mapping[str, str], errors: list[str]) -> tuple[RulesFile, yaml.Node] | None:
    try:
        text = path.read_text()
        root, data = _parse_yaml(text)
    except OSError as exc:
        errors.append(f"{path}:1: {exc.strerror}")
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        errors.append(f"{path}:{line}: YAML syntax: {exc.problem or exc}")
        return None
    except UnicodeDecodeError as exc:
        errors.append(f"{path}:1: not UTF-8 text (byte {exc.start}): rule files must be UTF-8")
        return None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        errors.append(f"{path}:1: unreadable YAML: {str(exc).splitlines()[0]}")
        return None
    if data is None:
        return RulesFile(), yaml.MappingNode("tag:yaml.org,2002:map", [])
    if not isinstance(data, dict):
        errors.append(f"{path}:1: the file must be a mapping with `channels:` and/or `rules:`")
        return None
    if "groups" in data and "rules" not in data and "channels" not in data:
        log.info("%s: a Prometheus rule file (top-level `groups:`), not costwatch rules: skipped", path)
        return None
    enabled = data.get("enabled", True) is not False
    channels = data.get("channels")
    if isinstance(channels, dict):
        for cname, channel in channels.items():
            if isinstance(channel, dict) and isinstance(channel.get("url"), str):
                missing = [] if enabled else None  # a disabled file may name variables that are not set
                channel["url"] = _substitute(channel["url"], env, missing)
                for var in missing or []:
                    errors.append(
                        _at(
                            str(path),
                            root,
                            ("channels", cname, "url"),
                            f"environment variable {var} is not set",
                        )
                    )
    try:
        return RulesFile.model_validate(data), root
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "rules" and loc[2] in RULE_KINDS:
                loc = loc[:2] + loc[3:]  # pydantic adds the discriminator value: rules.0.budget.limit
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "union_tag_invalid":
                msg = f"kind must be one of {', '.join(RULE_KINDS)}"
            elif err["type"] == "union_tag_not_found":
                msg = f"missing `kind` (one of {', '.join(RULE_KINDS)})"
                loc = (*loc, "kind")
            errors.append(_at(str(path), root, loc, msg))
        return None


def _substitute(url: str, env: Mapping[str, str], missing: list[str] | None) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; unset variables without a default go to `missing`."""

    def repl(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in env:
            return env[var]
        if default is not None:
            return default
        if missing is not None:
            missing.append(var)
        return ""

    return _ENV.sub(repl, url)


def _at(file: str, root: yaml.Node, loc: tuple[Any, ...], message: str) -> str:
    """Format one error, pointing at the line of the deepest YAML key or item the location reaches."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1 if root.start_mark is not None else 1
    for part in loc:
        found = _child(node, part) if node is not None else None
        if found is None:
            break
        line, node = found[0] + 1, found[1]
    where = _loc_text(loc)
    return f"{file}:{line}: {where}: {message}" if where else f"{file}:{line}: {message}"


def _child(node: yaml.Node, part: Any) -> tuple[int, yaml.Node] | None:
    """(0-based line of the key or item, value node) for one step of an error location."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part) or (part == "for_" and key.value == "for"):
                return key.start_mark.line, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part].start_mark.line, node.value[part]
    return None


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = "for" if part == "for_" else str(part)
            text += f".{name}" if text else name
    return text
