"""An instrumented app process for the limits tests: the real openai SDK, threads hammering the fake.

``python -m tests.limits.worker '<json config>'`` prints one JSON line of counts. Config keys:
``base_url``, ``threads``, ``calls`` (per thread), ``model``, ``max_tokens`` ([lo, hi], random per
call), ``user``, ``users`` (a list: each call picks one), ``scenario`` (x-fake-scenario),
``hold`` (sleep this long after the calls, before exiting), ``seed``, ``shapes`` (request shapes
to pick from per call: text, cjk, image_url, image_inline, tools), ``old_bound`` (reserve input
as body bytes / 4, the bound before issue 19, for comparison).
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time

import costwatch.autoinstrument  # noqa: F401  (instrument from COSTWATCH_* like any app)


def main() -> None:
    import openai

    import costwatch

    cfg = json.loads(sys.argv[1])
    headers = {"x-fake-response-model": cfg.get("response_model", cfg["model"])}
    if cfg.get("scenario"):
        headers["x-fake-scenario"] = cfg["scenario"]
    client = openai.OpenAI(
        base_url=cfg["base_url"], api_key="sk-test", default_headers=headers, max_retries=2
    )
    lo, hi = cfg.get("max_tokens", [16, 16])
    counts = {"ok": 0, "budget": 0, "rate": 0, "other": 0, "openai_error": 0}
    lock = threading.Lock()
    rng = random.Random(cfg.get("seed", 0))
    times: list[float] = []

    if cfg.get("old_bound"):  # the reservation before issue 19, for comparison: body bytes / 4
        from costwatch.instrumentation.limits import sizing

        sizing.input_bound = lambda body, provider, model: -(-len(body) // 4)

    def shaped(shape: str, kwargs: dict) -> object:
        """A message's content of one shape (``shapes`` config: text, cjk, image_url, image_inline, tools)."""
        if shape == "cjk":
            return "東京都の天気は晴れです。" * rng.randint(1, 40)
        if shape == "image_url":
            detail = rng.choice(["high", "low", "auto"])
            url = "https://img.example/cat.png"
            return [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ]
        if shape == "image_inline":
            w, h = rng.randint(64, 4096), rng.randint(64, 4096)
            png = (
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
                + w.to_bytes(4, "big")
                + h.to_bytes(4, "big")
                + bytes(rng.randint(100, 3000))
            )
            url = "data:image/png;base64," + base64.b64encode(png).decode()
            return [{"type": "image_url", "image_url": {"url": url, "detail": rng.choice(["high", "low"])}}]
        if shape == "tools":
            kwargs["tools"] = [
                {"type": "function", "function": {"name": f"tool_{i}", "description": "does a thing",
                                                  "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}
                for i in range(rng.randint(1, 4))
            ]  # fmt: skip
        return "hello " * rng.randint(1, 40)

    sdk_error: type[Exception] = openai.OpenAIError
    if cfg.get("sdk") == "anthropic":
        import anthropic

        sdk_error = anthropic.AnthropicError
        aclient = anthropic.Anthropic(
            base_url=cfg["base_url"].removesuffix("/v1"),
            api_key="sk-test",
            default_headers=headers,
            max_retries=2,
        )

    def one(user: str | None) -> str:
        kwargs: dict = {"user": user} if user else {}
        messages = [{"role": "user", "content": shaped(rng.choice(cfg.get("shapes") or ["text"]), kwargs)}]
        try:
            if cfg.get("sdk") == "anthropic":
                aclient.messages.create(model=cfg["model"], messages=messages, max_tokens=rng.randint(lo, hi))
            elif cfg.get("stream"):
                stream = client.chat.completions.create(
                    model=cfg["model"],
                    messages=messages,
                    max_tokens=rng.randint(lo, hi),
                    stream=True,
                    stream_options={"include_usage": True},
                    **kwargs,
                )
                for _ in stream:
                    pass
            else:
                client.chat.completions.create(
                    model=cfg["model"], messages=messages, max_tokens=rng.randint(lo, hi), **kwargs
                )
        except costwatch.BudgetExhausted as exc:
            assert isinstance(exc, sdk_error)
            return "budget"
        except costwatch.RateLimited as exc:
            assert isinstance(exc, sdk_error)
            return "rate"
        except sdk_error:
            return "openai_error"
        return "ok"

    def run() -> None:
        end = time.monotonic() + cfg.get("duration", 0)
        n = 0
        while n < cfg.get("calls", 10) or time.monotonic() < end:
            n += 1
            if cfg.get("pause"):
                time.sleep(cfg["pause"])
            users = cfg.get("users")
            user = rng.choice(users) if users else cfg.get("user")
            t0 = time.time()
            outcome = one(user)
            with lock:
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome == "ok":
                    times.append(time.time() - t0)

    t_start = time.time()
    if cfg.get("async"):  # one asyncio task per "thread": waits must not block the event loop
        import asyncio

        aclient = openai.AsyncOpenAI(
            base_url=cfg["base_url"], api_key="sk-test", default_headers=headers, max_retries=2
        )

        async def task() -> None:
            for _ in range(cfg.get("calls", 10)):
                try:
                    await aclient.chat.completions.create(
                        model=cfg["model"], messages=[{"role": "user", "content": "hi"}], max_tokens=16
                    )
                    counts["ok"] += 1
                except costwatch.RateLimited:
                    counts["rate"] += 1
                except costwatch.BudgetExhausted:
                    counts["budget"] += 1

        async def ticker() -> int:  # counts event-loop turns while the tasks wait
            turns = 0
            while not done.is_set():
                await asyncio.sleep(0.05)
                turns += 1
            return turns

        async def main_async() -> None:
            tick = asyncio.create_task(ticker())
            await asyncio.gather(*(task() for _ in range(cfg.get("threads", 1))))
            done.set()
            counts["loop_turns"] = await tick

        done = asyncio.Event()
        asyncio.run(main_async())
    threads = [threading.Thread(target=run) for _ in range(0 if cfg.get("async") else cfg.get("threads", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    costwatch.flush(5)
    print(
        json.dumps({**counts, "max_latency_s": max(times, default=0.0), "elapsed_s": time.time() - t_start}),
        flush=True,
    )
    time.sleep(cfg.get("hold", 0))


if __name__ == "__main__":
    main()
