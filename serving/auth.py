"""An optional API key: with STRETCHYSNAKE_API_KEY set, the protected paths (/classify and
/profile; /metrics too with STRETCHYSNAKE_METRICS_NEED_KEY=true) answer 401 unless the request
carries `Authorization: Bearer <key>`. The probes (/livez, /readyz) and the documentation
(/, /docs.json) stay open.

An ASGI middleware, so that the check runs before anything reads the body: a request without
the key costs its headers, not its upload (no byte of it is read or stored). The key is
compared in constant time (hmac.compare_digest) and never logged: the 401 says only whether a
key was sent. Standard library only.
"""
from __future__ import annotations

import hmac
import json

PROTECTED = ("/classify", "/profile")
METRICS = "/metrics"


def protected_paths(metrics_need_key: bool) -> tuple[str, ...]:
    """The paths the key guards: PROTECTED, and /metrics when STRETCHYSNAKE_METRICS_NEED_KEY."""
    return PROTECTED + ((METRICS,) if metrics_need_key else ())


def _bearer(headers) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (None when there is none)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return b""
    return None


class ApiKeyMiddleware:
    """ASGI middleware: 401 on the protected paths unless the bearer token is `key`."""

    def __init__(self, app, key: str, protected: tuple[str, ...] = PROTECTED):
        if not key:
            raise ValueError("an empty API key protects nothing")
        self.app = app
        self._key = key.encode("utf-8")
        self.protected = tuple(protected)

    def __repr__(self) -> str:  # never the key
        return f"ApiKeyMiddleware(protected={self.protected})"

    def _guards(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.protected)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._guards(scope.get("path", "")):
            return await self.app(scope, receive, send)
        token = _bearer(scope.get("headers", ()))
        if token is not None and hmac.compare_digest(token, self._key):
            return await self.app(scope, receive, send)
        message = ("this server needs an API key: send the header 'Authorization: Bearer "
                   "<key>'" if token is None else "the API key sent is not this server's")
        body = json.dumps({"error": message, "code": "unauthorized", "status": 401}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="stretchysnake"')]})
        await send({"type": "http.response.body", "body": body})
