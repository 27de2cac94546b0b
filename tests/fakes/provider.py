"""A fake OpenAI + Anthropic server on loopback, for tests and benchmarks.

Serves Chat Completions, Responses, Embeddings, legacy Completions (OpenAI,
under any prefix, e.g. ``/v1``) and Anthropic Messages, as JSON or SSE, with
behaviour scripted per request by the ``x-fake-scenario`` header:

- ``status:CODE`` — always answer CODE (JSON error body, ``retry-after: 0``);
- ``fail-then-ok:CODE:N`` — the first N requests with this scenario and the
  same ``x-fake-key`` header answer CODE, then success;
- ``slow:SECONDS`` — wait before answering;
- ``drop`` — streams: two content events, then the connection is cut;
  JSON: the connection is closed without an answer;
- ``no-usage`` — no usage anywhere (JSON or stream);
- ``fixture:NAME`` — the body of ``tests/fixtures/responses/NAME.json`` or
  ``NAME.sse`` verbatim.

``x-fake-chunk-delay: SECONDS`` spaces stream events. The response model is
the request model with ``-snap`` appended (so tests can tell them apart), or
the value of ``x-fake-response-model`` (e.g. a dated snapshot a price table knows).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "responses"

# Usage the fake reports (raw, provider-shaped) and what costwatch must normalize it to.
CHAT_USAGE = {
    "prompt_tokens": 25,
    "completion_tokens": 9,
    "total_tokens": 34,
    "prompt_tokens_details": {"cached_tokens": 10, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0},
}
RESPONSES_USAGE = {
    "input_tokens": 31,
    "input_tokens_details": {"cached_tokens": 8},
    "output_tokens": 12,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 43,
}
EMBEDDINGS_USAGE = {"prompt_tokens": 6, "total_tokens": 6}
ANTHROPIC_USAGE = {
    "input_tokens": 14,
    "cache_creation_input_tokens": 20,
    "cache_read_input_tokens": 100,
    "output_tokens": 11,
}
TEXT_PIECES = ["Hel", "lo ", "from ", "the ", "fake"]
TEXT = "".join(TEXT_PIECES)


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeProvider:
    """``with FakeProvider() as fake:`` → ``fake.url``, ``fake.openai_url``, ``fake.requests``."""

    host: str = "127.0.0.1"
    requests: list[LoggedRequest] = field(default_factory=list)
    _counters: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeProvider:
        fake = self

        class Handler(_Handler):
            provider = fake

        self._server = _Server((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._counters.clear()

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _bump(self, scenario: str, key: str) -> int:
        with self._lock:
            n = self._counters.get((scenario, key), 0)
            self._counters[(scenario, key)] = n + 1
            return n


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients closing streams early is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else ~40 ms per response (Nagle + delayed ACK)
    provider: FakeProvider

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.provider._log(LoggedRequest("POST", self.path, headers, body))
        scenario = headers.get("x-fake-scenario", "")
        delay = float(headers.get("x-fake-chunk-delay") or 0)
        path = self.path.split("?", 1)[0].rstrip("/")

        if scenario.startswith("slow:"):
            time.sleep(float(scenario.split(":", 1)[1]))
        if scenario.startswith("status:"):
            return self._error(int(scenario.split(":")[1]))
        if scenario.startswith("fail-then-ok:"):
            _, code, times = scenario.split(":")
            if self.provider._bump(scenario, headers.get("x-fake-key", "")) < int(times):
                return self._error(int(code))

        api = _api(path)
        if api is None:
            return self._error(404)
        stream = bool(isinstance(body, dict) and body.get("stream"))
        if scenario.startswith("fixture:"):
            return self._fixture(scenario.split(":", 1)[1], delay)
        if scenario == "drop" and not stream:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        model = self.headers.get("x-fake-response-model") or str(body.get("model") or "unknown") + "-snap"
        usage = scenario != "no-usage"
        if not stream:
            return self._json(200, _json_body(api, model, usage, body), api)
        events = _stream_events(api, model, usage, body)
        return self._sse(events, api, delay, drop=scenario == "drop")

    # ---- writers -------------------------------------------------------------------------

    def _common_headers(self, api: str | None) -> None:
        if api == "messages":
            self.send_header("anthropic-ratelimit-requests-limit", "4000")
            self.send_header("anthropic-ratelimit-requests-remaining", "3999")
            self.send_header("anthropic-ratelimit-tokens-limit", "400000")
            self.send_header("anthropic-ratelimit-tokens-remaining", "399000")
            self.send_header("request-id", "req_fake")
        else:
            self.send_header("x-ratelimit-limit-requests", "10000")
            self.send_header("x-ratelimit-remaining-requests", "9999")
            self.send_header("x-ratelimit-limit-tokens", "2000000")
            self.send_header("x-ratelimit-remaining-tokens", "1999000")
            self.send_header("x-request-id", "req_fake")

    def _json(self, status: int, payload: Any, api: str | None, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self._common_headers(api)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int) -> None:
        payload = {
            "type": "error",
            "error": {"message": f"fake error {status}", "type": f"fake_{status}", "code": None},
        }
        self._json(status, payload, None, {"retry-after": "0", "retry-after-ms": "1"})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _sse(self, events: list[bytes], api: str | None, delay: float, drop: bool = False) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self._common_headers(api)
        self.end_headers()
        content_seen = 0
        for event in events:
            if delay:
                time.sleep(delay)
            self._chunk(event)
            if drop and _is_content(event):
                content_seen += 1
                if content_seen >= 2:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _fixture(self, name: str, delay: float) -> None:
        json_path, sse_path = FIXTURES / f"{name}.json", FIXTURES / f"{name}.sse"
        if json_path.exists():
            return self._json(200, json.loads(json_path.read_text()), None)
        blocks = [b + b"\n\n" for b in sse_path.read_bytes().split(b"\n\n") if b.strip()]
        return self._sse(blocks, None, delay)


def _is_content(event: bytes) -> bool:
    """A stream event carrying generated text (where ``drop`` counts to two)."""
    return (
        (b'"delta":{"content":"' in event and b'"content":""' not in event)
        or b"output_text.delta" in event
        or b"content_block_delta" in event
    )


def _api(path: str) -> str | None:
    for suffix, api in (
        ("/chat/completions", "chat"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
        ("/completions", "completions"),
        ("/messages", "messages"),
    ):
        if path.endswith(suffix):
            return api
    return None


def _json_body(api: str, model: str, usage: bool, req: dict) -> dict:
    now = 1700000000  # fixed, so results compare equal across runs
    if api == "chat":
        body: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if usage:
            body["usage"] = CHAT_USAGE
        return body
    if api == "completions":
        body = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": now,
            "model": model,
            "choices": [{"index": 0, "text": TEXT, "logprobs": None, "finish_reason": "stop"}],
        }
        if usage:
            body["usage"] = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        return body
    if api == "embeddings":
        inputs = req.get("input") if isinstance(req.get("input"), list) else [req.get("input")]
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]}
                for i in range(len(inputs))
            ],
            "model": model,
        }
        if usage:
            body["usage"] = EMBEDDINGS_USAGE
        return body
    if api == "responses":
        return _response_object(model, "completed", usage)
    body = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage:
        body["usage"] = ANTHROPIC_USAGE
    return body


def _response_object(model: str, status: str, usage: bool) -> dict:
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": model,
        "output": []
        if status == "in_progress"
        else [
            {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": RESPONSES_USAGE if usage and status != "in_progress" else None,
    }


def _sse_event(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


def _stream_events(api: str, model: str, usage: bool, req: dict) -> list[bytes]:
    if api == "chat":
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        extra = ',"usage":null' if include else ""

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            base = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [choice],
            }
            text = json.dumps(base, separators=(",", ":"))
            return f"data: {text[:-1]}{extra}}}\n\n".encode()

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in TEXT_PIECES]
        events.append(chunk({}, "stop"))
        if include and usage:
            final = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": CHAT_USAGE,
            }
            events.append(_sse_event(final))
        events.append(b"data: [DONE]\n\n")
        return events
    if api == "responses":
        events = [
            _sse_event(
                {
                    "type": "response.created",
                    "sequence_number": 0,
                    "response": _response_object(model, "in_progress", usage),
                },
                "response.created",
            )
        ]
        for i, piece in enumerate(TEXT_PIECES):
            events.append(
                _sse_event(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": i + 1,
                        "item_id": "msg_fake",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                    },
                    "response.output_text.delta",
                )
            )
        done = {
            "type": "response.completed",
            "sequence_number": len(TEXT_PIECES) + 1,
            "response": _response_object(model, "completed", usage),
        }
        events.append(_sse_event(done, "response.completed"))
        return events
    if api == "completions":
        events = [
            _sse_event(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}],
                }
            )
            for piece in TEXT_PIECES
        ]
        return [*events, b"data: [DONE]\n\n"]
    # Anthropic Messages
    start_usage = (
        {
            "input_tokens": ANTHROPIC_USAGE["input_tokens"],
            "cache_creation_input_tokens": ANTHROPIC_USAGE["cache_creation_input_tokens"],
            "cache_read_input_tokens": ANTHROPIC_USAGE["cache_read_input_tokens"],
            "output_tokens": 1,
        }
        if usage
        else None
    )
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if start_usage:
        message["usage"] = start_usage
    events = [
        _sse_event({"type": "message_start", "message": message}, "message_start"),
        _sse_event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        _sse_event({"type": "ping"}, "ping"),
    ]
    for piece in TEXT_PIECES:
        events.append(
            _sse_event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
        )
    events.append(_sse_event({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if usage:
        delta["usage"] = {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}
    events.append(_sse_event(delta, "message_delta"))
    events.append(_sse_event({"type": "message_stop"}, "message_stop"))
    return events
