"""The fastest loopback stand-in for the OpenAI API we can make in Python: raw asyncio, canned bodies.

``python -m bench.fastserver [--port N]`` prints its URL and serves until killed.
Answers any ``POST .../chat/completions`` with the canned body of
``tests.fakes.provider`` (same usage numbers): JSON, or SSE when the body
says ``"stream": true`` (with the usage chunk when ``include_usage`` is in
the body). ``POST .../responses`` and ``POST .../messages`` (Anthropic) get
the canned Responses body / stream of ``tests.fakes.provider`` and the
recorded Anthropic fixtures of ``tests/fixtures/responses``. No JSON parsing, no per-request allocation beyond slicing: the
server's own latency must not hide the instrumentation's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

from tests.fakes.provider import FIXTURES, _json_body, _stream_events

_MODEL = "gpt-4o-mini-2024-07-18"
_ANTHROPIC_HEADERS = (
    b"anthropic-ratelimit-requests-limit: 4000\r\nanthropic-ratelimit-requests-remaining: 3999\r\n"
    b"anthropic-ratelimit-tokens-limit: 400000\r\nanthropic-ratelimit-tokens-remaining: 399000\r\n"
    b"request-id: req_fake\r\n"
)
_HEADERS = (
    b"x-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n"
    b"x-ratelimit-limit-tokens: 2000000\r\nx-ratelimit-remaining-tokens: 1999000\r\n"
    b"x-request-id: req_fake\r\n"
)


def _json_response(api: str = "chat") -> bytes:
    if api == "messages":
        data = json.loads((FIXTURES / "anthropic_claude-sonnet-4.json").read_text())
    else:
        data = _json_body(api, _MODEL, True, {})
    body = json.dumps(data, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + (_ANTHROPIC_HEADERS if api == "messages" else _HEADERS)
        + b"\r\n"
        + body
    )


def _sse_response(include_usage: bool, api: str = "chat") -> bytes:
    req = {"stream": True, "stream_options": {"include_usage": include_usage}}
    out = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        + (_ANTHROPIC_HEADERS if api == "messages" else _HEADERS)
        + b"\r\n"
    ]
    if api == "messages":
        raw = (FIXTURES / "anthropic_stream_claude-sonnet-4.sse").read_bytes()
        events = [b + b"\n\n" for b in raw.split(b"\n\n") if b.strip()]
    else:
        events = _stream_events(api, _MODEL, True, req)
    for event in events:
        out.append(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


JSON = _json_response()
SSE = _sse_response(False)
SSE_USAGE = _sse_response(True)
RESPONSES_JSON = _json_response("responses")
RESPONSES_SSE = _sse_response(True, "responses")
MESSAGES_JSON = _json_response("messages")
MESSAGES_SSE = _sse_response(True, "messages")
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Protocol(asyncio.Protocol):
    __slots__ = ("buf", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            i = head.lower().find(b"content-length:")
            length = (
                int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
                if i >= 0
                else 0
            )
            total = end + 4 + length
            if len(buf) < total:
                break
            body = buf[end + 4 : total]
            buf = buf[total:]
            stream = b'"stream":true' in body or b'"stream": true' in body
            target = head[: head.find(b" HTTP/")]
            if not head.startswith(b"POST"):
                out.append(NOT_FOUND)
            elif target.endswith(b"/responses"):
                out.append(RESPONSES_SSE if stream else RESPONSES_JSON)
            elif target.endswith(b"/messages"):
                out.append(MESSAGES_SSE if stream else MESSAGES_JSON)
            elif stream:
                out.append(SSE_USAGE if b"include_usage" in body else SSE)
            else:
                out.append(JSON)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    server = await loop.create_server(_Protocol, sock=sock)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
