"""The Host check against DNS rebinding (costwatch/daemon/hosts.py), on a real uvicorn server.

Every route's refusal is enumerated in tests/security/test_access.py; here: what passes, what
does not, the error, the setting.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pydantic
import pytest

from costwatch.daemon.hosts import HostCheck, host_name
from costwatch.settings import DaemonSettings
from tests.daemon.conftest import StartDaemon


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one request sent byte for byte (httpx and http.client always add a Host)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    header = f"Host: {host}\r\n" if host is not None else ""
    version = "1.1" if host is not None else "1.0"
    return raw_request(port, f"GET {path} HTTP/{version}\r\n{header}Connection: close\r\n\r\n".encode())


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:7707", "127.0.0.1"),
        ("localhost", "localhost"),
        ("LocalHost:80", "localhost"),
        ("[::1]:7707", "::1"),
        ("[0:0::1]", "::1"),
        ("::1", "::1"),
        ("evil.example:7707", "evil.example"),
        ("localhost:", None),
        ("localhost:x", None),
        ("[::1]7707", None),
        ("a b", None),
        ("user@localhost", None),
        ("", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_check_without_a_server() -> None:
    check = HostCheck(lambda *a: None, bind_host="0.0.0.0", allowed_hosts=["cw.internal", "10.0.0.5"])  # type: ignore[arg-type, return-value]
    for ok in (
        "127.0.0.1:1",
        "127.9.9.9",
        "localhost:7707",
        "[::1]:7707",
        "cw.internal:7707",
        "10.0.0.5:7707",
    ):
        assert check.allows(ok.encode()), ok
    # A wildcard bind adds no name: "0.0.0.0" is not a name a client should use.
    for bad in (
        "evil.example:7707",
        "0.0.0.0:7707",
        "cw.internal.evil.example",
        "127.0.0.1.nip.io",
        "10.0.0.6",
    ):
        assert not check.allows(bad.encode()), bad
    assert HostCheck(lambda *a: None, bind_host="192.168.1.10").allows(b"192.168.1.10:7707")  # type: ignore[arg-type, return-value]
    assert HostCheck(lambda *a: None, bind_host="cw.lan").allows(b"CW.lan:7707")  # type: ignore[arg-type, return-value]


def test_rebinding_host_refused_on_a_real_server(daemon) -> None:
    for path in ("/metrics", "/healthz", "/v1/killswitch", "/"):
        status, body = get(daemon.port, path, "evil.example:7707")
        assert status == 421, (path, body)
        error = json.loads(body)["error"]
        assert "\n" not in error
        assert (
            "'evil.example:7707'" in error and "allowed_hosts" in error and "COSTWATCH_ALLOWED_HOSTS" in error
        )


def test_loopback_names_pass(daemon) -> None:
    port = daemon.port
    for host in (
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"localhost:{port}",
        "localhost",
        f"[::1]:{port}",
        "127.0.1.1",
    ):
        assert get(port, "/metrics", host)[0] == 200, host


def test_request_without_host_passes(daemon) -> None:
    """HTTP/1.0 without Host: browsers always send one, so this is no rebinding (docs/api.md)."""
    status, body = get(daemon.port, "/healthz", None)
    assert status == 200, body


def test_several_host_headers_are_refused(daemon) -> None:
    status, body = raw_request(
        daemon.port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    assert status in (400, 421), body  # h11 may refuse it before the app does


def test_configured_name_passes(start_daemon: StartDaemon) -> None:
    d = start_daemon(allowed_hosts=["costwatch.internal", "10.1.2.3"])
    assert get(d.port, "/metrics", f"costwatch.internal:{d.port}")[0] == 200
    assert get(d.port, "/v1/killswitch", "10.1.2.3:7707")[0] == 200
    assert get(d.port, "/metrics", "other.internal")[0] == 421


def test_the_host_of_the_daemons_own_url_passes(start_daemon: StartDaemon) -> None:
    """``url`` (COSTWATCH_URL / config) is where clients are told to find the daemon: a configured name."""
    d = start_daemon(url="http://costwatch.example:7707")
    assert get(d.port, "/metrics", "costwatch.example:7707")[0] == 200
    assert get(d.port, "/metrics", "evil.example:7707")[0] == 421


def test_star_turns_the_check_off(start_daemon: StartDaemon) -> None:
    d = start_daemon(allowed_hosts=["*"])
    assert get(d.port, "/metrics", "anything.example")[0] == 200


def test_allowed_hosts_from_environment_and_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COSTWATCH_ALLOWED_HOSTS", "cw.internal, 10.0.0.5,[fe80::1]")
    assert DaemonSettings(state_dir=tmp_path).allowed_hosts == ["cw.internal", "10.0.0.5", "fe80::1"]
    monkeypatch.setenv("COSTWATCH_ALLOWED_HOSTS", '["CW.Internal"]')
    assert DaemonSettings(state_dir=tmp_path).allowed_hosts == ["cw.internal"]
    monkeypatch.delenv("COSTWATCH_ALLOWED_HOSTS")
    config = tmp_path / "config.toml"
    config.write_text('allowed_hosts = ["metrics.lan"]\n')
    monkeypatch.setenv("COSTWATCH_CONFIG", str(config))
    assert DaemonSettings(state_dir=tmp_path).allowed_hosts == ["metrics.lan"]


@pytest.mark.parametrize("bad", ["cw.internal:7707", "http://cw.internal", "cw.internal/x", "a b"])
def test_allowed_hosts_refuses_what_is_not_a_name(bad: str, tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="allowed_hosts"):
        DaemonSettings(state_dir=tmp_path, allowed_hosts=[bad])
