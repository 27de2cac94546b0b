"""The daemon's state file: written before a kill-switch change is acknowledged, never in its way."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from costwatch import statefile
from costwatch.daemon.killswitch import KillSwitchRegistry
from costwatch.daemon.mirror import StateMirror


def _registry() -> KillSwitchRegistry:
    return KillSwitchRegistry(lambda fn: None)  # persistence is the store's business, not this test's


def test_every_change_is_in_the_file_when_engage_returns(tmp_path: Path) -> None:
    registry = _registry()
    path = statefile.path_for(tmp_path, 7801)
    mirror = StateMirror(path, registry, tmp_path / "cw.duckdb", hard_limits=lambda: 3)
    mirror.start()
    try:
        first = statefile.read(path)
        assert first is not None and first.killswitch.engaged == [] and first.hard_limits == 3
        assert first.db == str(tmp_path / "cw.duckdb")
        switch = registry.engage({"app": "svc"}, "runaway loop", "cli")
        mirrored = statefile.read(path)  # no wait: written in the thread that engaged it
        assert mirrored is not None and [s.id for s in mirrored.killswitch.engaged] == [switch.id]
        assert mirrored.killswitch.version == registry.state().version > first.killswitch.version
        registry.lift({"app": "svc"}, "cli")
        assert statefile.read(path).killswitch.engaged == []  # type: ignore[union-attr]
        assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed, not left behind
    finally:
        mirror.shutdown()


def test_hard_limit_count_follows_the_rules(tmp_path: Path) -> None:
    count = {"n": 0}
    path = statefile.path_for(tmp_path, 7802)
    mirror = StateMirror(path, _registry(), tmp_path / "cw.duckdb", hard_limits=lambda: count["n"])
    mirror.refresh_s = 0.05
    mirror.start()
    try:
        count["n"] = 2
        deadline = time.monotonic() + 5
        while statefile.read(path).hard_limits != 2 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert statefile.read(path).hard_limits == 2  # type: ignore[union-attr]
    finally:
        mirror.shutdown()


def test_an_unwritable_state_dir_never_stops_an_engage(tmp_path: Path, caplog: Any) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    registry = _registry()
    mirror = StateMirror(statefile.path_for(blocker, 7803), registry, tmp_path / "cw.duckdb")
    with caplog.at_level(logging.WARNING, logger="costwatch.daemon.mirror"):
        mirror.start()
        registry.engage({}, "still engaged", "cli")
        registry.engage({"app": "a"}, "and this one", "cli")
    assert len(registry.state().engaged) == 2 and mirror.writes == 0
    assert len([r for r in caplog.records if "cannot write the state file" in r.message]) == 1  # once


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"killswitch": 5}'])
def test_a_damaged_file_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "daemon-7707.json"
    path.write_bytes(content)
    assert statefile.read(path) is None
