"""What stands in front of every endpoint: the API key and the request body's size.

An ASGI middleware, so a refused request costs no parsing at all:

- with an API key (`sqlm serve --api-key K`, or SQLM_API_KEY), every endpoint but /health and /metrics
  needs `Authorization: Bearer K` (OpenAI's and vLLM's scheme): 401 otherwise;
- a body larger than `max_body_bytes` is a 413 before it is read: at once from its Content-Length, else
  as soon as the bytes received pass the limit. At most the limit is ever held in memory;
- an exception no handler turned into a response becomes a JSON 500 here, and nothing is re-raised: the
  keep-alive connection stays usable (Starlette's last-resort handler re-raises, and uvicorn then
  drops the connection the client's next request was going to use).
"""
from __future__ import annotations

import hmac
import json
import logging

log = logging.getLogger("sqlm.server")

OPEN_PATHS = frozenset({"/health", "/metrics"})
DEFAULT_MAX_BODY_BYTES = 4 << 20


class RequestGuard:
    def __init__(self, app, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.app, self.api_key, self.max_body_bytes = app, api_key or None, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            return await _error(send, 401, "Missing or invalid API key: send 'Authorization: Bearer <key>'",
                                "authentication_error", "invalid_api_key", {"www-authenticate": "Bearer"})
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await self._too_large(send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self._run(scope, receive, send)
        body = bytearray()
        while True:  # read the body here, so a liar's Content-Length or a chunked flood stops at the limit
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        return await self._run(scope, _replay(bytes(body), receive), send)

    async def _run(self, scope, receive, send):
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line: a 500 with a message, never a dropped connection
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _error(send, 500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None,
                             keep_alive=True)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _too_large(self, send) -> None:
        await _error(send, 413, f"Request body too large: the limit is {self.max_body_bytes:,} bytes "
                                "(sqlm serve --max-body-bytes)", "invalid_request_error", "request_too_large")


def _content_length(scope) -> int | None:
    value = dict(scope["headers"]).get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _replay(body: bytes, receive):
    """A receive() that hands the app the body read already, then waits on the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _error(send, status: int, message: str, kind: str, code: str | None, headers: dict | None = None,
                 keep_alive: bool = False) -> None:
    """keep_alive: the request was read whole, so the connection can serve the next one; a refused
    body (401, 413) may be unread, so that connection closes."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if not keep_alive:
        raw.append((b"connection", b"close"))
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
