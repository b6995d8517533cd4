"""serving.timeout: BentoML's request timeout without keeping finished requests in memory.

A request's context variables (BentoML and OpenTelemetry put the request and its span there)
hold a marker object; after the request the marker must be gone. BentoML's own middleware keeps
it until the timeout fires: that test is the reason for the fix, and fails (telling us to drop
it) once BentoML cancels its timer."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

from serving import timeout

REQUEST = contextvars.ContextVar("request")


class Marker:
    pass


async def quick_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)
    await quick_app(scope, receive, send)


async def one_request(middleware):
    """Like an outer middleware: the request in a context variable, then the call. The marker's
    weak reference and what was sent."""
    marker = Marker()
    REQUEST.set(marker)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware({"type": "http", "method": "GET", "path": "/"}, receive, send)
    return weakref.ref(marker), sent


def run_request(middleware_cls, app, timeout_s):
    async def main():
        # a fresh task, and so a fresh context copy, as the server gives every request
        ref, sent = await asyncio.create_task(one_request(middleware_cls(app, timeout_s)))
        await asyncio.sleep(0)
        gc.collect()
        return ref() is None, sent
    return asyncio.run(main())


def test_a_finished_request_is_not_kept_alive():
    released, sent = run_request(timeout.TimeoutMiddleware, quick_app, 300)
    assert sent[0]["status"] == 200 and released


def test_bentomls_own_middleware_keeps_it_alive_until_the_timeout():
    from bentoml._internal.server.http import traffic
    original = timeout.replaced or traffic.TimeoutMiddleware  # the service may have installed
    released, sent = run_request(original, quick_app, 300)
    assert sent[0]["status"] == 200
    assert not released, "BentoML now releases finished requests: serving.timeout can go"


def test_a_slow_request_still_gets_504():
    released, sent = run_request(timeout.TimeoutMiddleware, slow_app, 0.2)
    assert sent[0]["status"] == 504 and b"0.2 seconds" in sent[1]["body"]


def test_install_replaces_the_class_bentoml_builds_its_stack_from():
    from bentoml._internal.server.http import traffic
    assert timeout.install() and timeout.install()  # idempotent
    assert traffic.TimeoutMiddleware is timeout.TimeoutMiddleware
