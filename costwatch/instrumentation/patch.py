"""The ``send`` patch on httpx2 / httpx ``Client`` and ``AsyncClient``.

Patched at class level, so clients built before ``instrument()``, clients the
user passes as ``http_client`` and custom transports are all seen. The patch
stays installed until ``uninstrument()``; when no state is active it is a
pass-through. Unrecognized URLs cost one ``method`` comparison and a few
``str.endswith`` calls.

Hot path (≤ ~10 µs): recognize the endpoint, read two request headers and
two contextvars, store references and clock readings in a `CallRecord`, wrap
the response stream for ``stream=True``, submit. Parsing and normalization
happen in ``CallRecord.to_event()`` on the emitter thread.

Logical call id. Neither SDK sends an idempotency key by default and both
build a new ``Request`` per attempt, but both number attempts in the
``x-stainless-retry-count`` header and run all attempts of one call
sequentially in the same thread / asyncio task. So: an attempt with retry
count 0 (or no header, e.g. raw httpx calls) starts a new `CallId` and stores
it with the URL path in the ``_current_call`` contextvar; an attempt with a
count > 0 reuses the contextvar's `CallId` when the path matches. A
``contextvars`` value set inside a sync function or a coroutine awaited in the
same task stays visible to the next attempt, and concurrent calls in other
threads/tasks have their own context. When the request carries an
``Idempotency-Key`` header (an SDK configured to send one), it becomes the call
id (read in the background, when the first attempt's event is built).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from costwatch.context import current_attribution
from costwatch.instrumentation import limits, spans
from costwatch.instrumentation.killswitch import blocked_error
from costwatch.instrumentation.providers import AZURE_OPENAI, CHAT, Endpoint, azure_deployment, recognize
from costwatch.instrumentation.record import CallId, CallRecord, guard
from costwatch.instrumentation.sse import UsageChunkFilter
from costwatch.instrumentation.streams import stream_classes

# Hosts where inject_stream_usage="openai" adds stream_options.include_usage.
INJECT_USAGE_HOSTS: frozenset[str] = frozenset({"api.openai.com"})

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_USER_RE = re.compile(rb'"(?:user|user_id)"\s*:\s*"([^"\\]{1,256})"')
_STREAM_TRUE_RE = re.compile(rb'"stream"\s*:\s*true')

_current_call: ContextVar[tuple[CallId, str] | None] = ContextVar("costwatch_call", default=None)


@dataclass(frozen=True)
class State:
    """What the patch needs while instrumentation is on."""

    emitter: Any
    app: str
    inject_stream_usage: str  # openai | all | off


_state: State | None = None
_originals: dict[tuple[type, str], Any] = {}
_limiter: limits.Limiter | None = None  # hard budgets and rate limits (None with emitter doubles)


LIBRARIES = ("httpx2", "httpx")


def libraries() -> list[ModuleType]:
    """httpx2 and httpx, whichever are imported (neither is assumed, neither is imported here)."""
    return [sys.modules[name] for name in LIBRARIES if sys.modules.get(name) is not None]


class _PatchOnImport:
    """Patches httpx2 / httpx when the app imports them after ``instrument()``.

    Importing them ourselves would cost the app their import time even when it never
    uses one of them (``httpx`` alone brings its CLI's ``rich``, ``click`` and ``pygments``:
    most of ``import costwatch.autoinstrument``'s time). The finder only wraps the real
    loader's ``exec_module``; the module is patched right after it ran.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in LIBRARIES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            try:
                if _state is not None:
                    _patch_library(module)
            except Exception:
                guard.report("patch.on_import")

        loader.exec_module = exec_and_patch  # type: ignore[union-attr]
        return spec


_finder = _PatchOnImport()


def install(state: State) -> None:
    """Patch every client class once; later calls only swap the state."""
    global _state, _limiter
    _state = state
    if _limiter is None or _limiter.emitter is not state.emitter:
        _close_limiter()
        try:
            _limiter = limits.Limiter.for_emitter(state.emitter, state.app)
        except Exception:
            guard.report("limits.start")
    for lib in libraries():
        _patch_library(lib)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _patch_library(lib: ModuleType) -> None:
    sync_proxy, async_proxy = stream_classes(lib)
    for cls, factory, proxy in (
        (lib.Client, _make_sync_send, sync_proxy),
        (lib.AsyncClient, _make_async_send, async_proxy),
    ):
        if (cls, "send") not in _originals:
            original = cls.__dict__["send"]
            _originals[(cls, "send")] = original
            cls.send = factory(original, proxy)


def uninstall() -> None:
    """Restore the exact original function objects."""
    global _state
    _state = None
    _close_limiter()
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)
    for (cls, name), original in list(_originals.items()):
        setattr(cls, name, original)
        del _originals[(cls, name)]


def is_installed() -> bool:
    return _state is not None


def _close_limiter() -> None:
    global _limiter
    limiter, _limiter = _limiter, None
    if limiter is not None:
        try:
            limiter.close()
        except Exception:
            guard.report("limits.close")


def _make_sync_send(original: Any, proxy: type) -> Any:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state
        if state is None or request.method != "POST":
            return original(self, request, *args, **kwargs)
        try:
            record, request, error = _begin(state, request, kwargs.get("stream", False))
        except Exception:
            guard.report("begin")
            return original(self, request, *args, **kwargs)
        if error is not None:
            raise error
        if record is None:
            return original(self, request, *args, **kwargs)
        if type(record) is limits.LimitedCallRecord:
            error = limits.admit_sync(record)
            if error is not None:
                raise error
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            record.finish("error", type(exc))
            raise
        _end(record, response, proxy)
        return response

    return functools.update_wrapper(send, original)


def _make_async_send(original: Any, proxy: type) -> Any:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state
        if state is None or request.method != "POST":
            return await original(self, request, *args, **kwargs)
        try:
            record, request, error = _begin(state, request, kwargs.get("stream", False))
        except Exception:
            guard.report("begin")
            return await original(self, request, *args, **kwargs)
        if error is not None:
            raise error
        if record is None:
            return await original(self, request, *args, **kwargs)
        if type(record) is limits.LimitedCallRecord:
            error = await limits.admit_async(record)
            if error is not None:
                raise error
        try:
            response = await original(self, request, *args, **kwargs)
        except BaseException as exc:
            record.finish("error", type(exc))
            raise
        _end(record, response, proxy)
        return response

    return functools.update_wrapper(send, original)


def _begin(state: State, request: Any, stream: bool) -> tuple[CallRecord | None, Any, BaseException | None]:
    """Recognize, group, check the kill switch, maybe inject include_usage → (record, request, error)."""
    url = request.url
    # The parsed path without `URL.path`'s percent-decoding pass (one Python call per request);
    # an encoded path still gets the decoded form.
    path = getattr(url, "_uri_reference", url).path
    if "%" in path:
        path = url.path
    endpoint = recognize(path)
    if endpoint is None:
        return None, request, None
    retry = _retry_count(request.headers)
    current = _current_call.get()
    if retry is not None and retry != "0" and current is not None and current[1] == path:
        call = current[0]
    else:
        call = CallId()
        _current_call.set((call, path))
    attribution = current_attribution()
    emitter = state.emitter
    limiter = _limiter
    gate = limiter.prepare(endpoint.provider, request, attribution) if limiter and limiter.active else None
    record = (CallRecord if gate is None else limits.LimitedCallRecord)(
        endpoint,
        request,
        bool(stream),
        state.app,
        call,
        retry,
        attribution,
        spans.current_context(),
        emitter.submit,
    )
    record.url_path = path
    if gate is not None:
        record.gate = gate  # type: ignore[attr-defined]
    killswitch = emitter.killswitch
    if killswitch.active:
        error = _check_killswitch(state, killswitch, record, endpoint, request, attribution)
        if error is not None:
            return record, request, error
    inject = state.inject_stream_usage
    if (
        stream
        and endpoint.api == CHAT
        and (inject == "all" or (inject == "openai" and url.host in INJECT_USAGE_HOSTS))
    ):
        rewritten = _inject_include_usage(request)
        if rewritten is not None:
            record.request = request = rewritten
            record.filter = UsageChunkFilter()
    return record, request, None


_RETRY_HEADER = b"x-stainless-retry-count"


def _retry_count(headers: Any) -> str | None:
    """``headers.get("x-stainless-retry-count")`` from httpx(2)'s raw list.

    ``Headers.get`` first works out the encoding of every header of the request (each
    decoded, per request); one ASCII value decodes the same whatever that encoding is.
    A repeated or non-ASCII value, or another headers type, goes through ``get`` as before.
    """
    items = getattr(headers, "_list", None)
    if type(items) is not list or (items and len(items[0]) != 3):
        return headers.get("x-stainless-retry-count")
    found = None
    for _, lower, value in items:
        if lower == _RETRY_HEADER:
            if found is not None:
                return headers.get("x-stainless-retry-count")
            found = value
    if found is None:
        return None
    return found.decode("ascii") if found.isascii() else headers.get("x-stainless-retry-count")


def _end(record: CallRecord, response: Any, proxy: type) -> None:
    try:
        record.response = response
        if record.stream:
            response.stream = proxy(response.stream, record)
        else:
            record.finish("complete")
    except Exception:
        guard.report("end")


def _check_killswitch(
    state: State, killswitch: Any, record: CallRecord, endpoint: Endpoint, request: Any, attribution: Any
) -> BaseException | None:
    body = _body(request)
    model = None
    if killswitch.needs_model:
        match = _MODEL_RE.search(body)
        model = match.group(1).decode("utf-8", "replace") if match else None
        if model is None and endpoint.provider == AZURE_OPENAI:
            model = azure_deployment(request.url.path)
    user = attribution.user if attribution is not None else None
    if user is None:
        match = _USER_RE.search(body)
        user = match.group(1).decode("utf-8", "replace") if match else None
    switch = killswitch.blocking(state.app, endpoint.provider, model, user)
    if switch is None:
        return None
    record.blocked = True
    record.block_reason = switch.reason or switch.describe()
    record.finish("blocked")
    return blocked_error(switch)


def _body(request: Any) -> bytes:
    try:
        return request.content or b""
    except Exception:
        return b""


def _inject_include_usage(request: Any) -> Any:
    """A copy of a chat streaming request with stream_options.include_usage, or None."""
    body = _body(request)
    if not body or b"include_usage" in body or not _STREAM_TRUE_RE.search(body):
        return None
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("stream") is not True:
        return None
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return None
    data["stream_options"] = {**(options or {}), "include_usage": True}
    content = json.dumps(data, separators=(",", ":")).encode()
    headers = request.headers.copy()
    headers["Content-Length"] = str(len(content))
    return type(request)(
        request.method, request.url, headers=headers, content=content, extensions=dict(request.extensions)
    )
