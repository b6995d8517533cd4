"""BentoML's request timeout (`traffic={"timeout": ...}`) without its memory leak.

BentoML 1.4's TimeoutMiddleware (bentoml/_internal/server/http/traffic.py) schedules
`loop.call_later(timeout, ...)` for every request and never cancels it. An asyncio timer keeps
the `contextvars.Context` current when it was scheduled, and by then BentoML's and
OpenTelemetry's middlewares have put the request's span and request context in it: every
request (its Starlette Request, uvicorn cycle, span, headers: ~15 KB) stayed in memory until its
timer fired, `timeout` seconds later. Measured in the soak (benchmarks/serve_load.py --soak) at
~40 requests/s with the 300 s timeout: the worker's RSS grew for five minutes, by ~200 MB,
before it levelled off, and a snapshot of the worker held ~2,000 finished requests.

`TimeoutMiddleware` below has the same behaviour (504 with the same body when the response has
not started within `timeout` seconds) but schedules its timer in an empty context and cancels it
when the request ends. `install()` puts it where BentoML looks for the class when it builds its
middleware stack; the service calls it at import time, in every worker.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging

log = logging.getLogger("stretchysnake.serving")


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class TimeoutMiddleware:
    """ASGI middleware: a 504 when the response has not started within `timeout` seconds."""

    def __init__(self, app, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        # an empty context: the timer must not keep this request's context variables alive
        timer = loop.call_later(self.timeout, _time_out, started, context=contextvars.Context())

        async def send_and_mark(message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
        try:
            try:
                await started
            except asyncio.TimeoutError:
                if task.cancel():
                    from starlette.responses import JSONResponse
                    await JSONResponse({"error": f"Not able to process the request in "
                                                 f"{self.timeout} seconds"},
                                       status_code=504)(scope, receive, send)
                return
            await task
        finally:
            timer.cancel()


def install() -> bool:
    """Replace BentoML's TimeoutMiddleware by ours (idempotent). False, with a warning, when
    this BentoML has no such class (the fix is then not needed, or needs a new look)."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        log.warning("bentoml._internal.server.http.traffic not found: BentoML's own request "
                    "timeout is used")
        return False
    if traffic.TimeoutMiddleware is TimeoutMiddleware:
        return True
    if not hasattr(traffic.TimeoutMiddleware, "_set_timer_out"):
        log.warning("BentoML's TimeoutMiddleware has changed; it is left as it is")
        return False
    global replaced
    replaced = traffic.TimeoutMiddleware
    traffic.TimeoutMiddleware = TimeoutMiddleware
    return True


replaced = None  # BentoML's class, once install() has replaced it
