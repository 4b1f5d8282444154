"""An ASGI middleware in front of every route: API key, body size, concurrency and time limits.

- `GENLOOP_API_KEY` set: every route except health checks and the web page's files needs
  `Authorization: Bearer <key>` (compared in constant time), else 401.
- Bodies over `max_body_bytes` get 413, before the handler reads them.
- `docs` off: BentoML's API docs page at / (which loads a third-party script) answers 404.
- More than `max_concurrency` API requests in flight get 429 (with Retry-After) at once, and one
  running past `timeout_s` gets 504; health checks are never queued behind them, so /readyz answers
  while the service is saturated.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

OPEN = ("/livez", "/readyz", "/healthz")  # no key: health checks
PAGE = "/ui"  # no key: the page and its static files (its requests carry the key)
LIMITED = ("/generate", "/feedback")
DOCS = ("/", "/docs.json")  # BentoML's API docs page and its OpenAPI file


class Guard:
    def __init__(
        self, app, max_body_bytes: int, max_concurrency: int, timeout_s: float, docs: bool = True
    ) -> None:
        self.app, self.max_body, self.timeout, self.docs = app, max_body_bytes, timeout_s, docs
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if not self.docs and (path in DOCS or path.startswith("/static_content/")):
            return await _reply(send, 404, "the API docs page is switched off (serve.docs: false)")
        if not (path in OPEN or path == PAGE or path.startswith(PAGE + "/")) and not self._authorised(
            headers
        ):
            return await _reply(send, 401, "missing or wrong API key (Authorization: Bearer <key>)",
                                [(b"www-authenticate", b"Bearer")])  # fmt: skip
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _reply(send, 413, f"request body over {self.max_body} bytes")
        receive = self._bounded(receive)
        if path not in LIMITED:
            try:
                return await self.app(scope, receive, send)
            except TooLarge:
                return await _reply(send, 413, f"request body over {self.max_body} bytes")
        if self.in_flight >= self.max_concurrency:
            return await _reply(send, 429, f"busy: {self.max_concurrency} requests in flight, retry shortly",
                                [(b"retry-after", b"1")])  # fmt: skip
        self.in_flight += 1
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout)
        except TooLarge:
            if not started:
                await _reply(send, 413, f"request body over {self.max_body} bytes")
        except TimeoutError:
            if not started:
                await _reply(send, 504, f"the request took longer than {self.timeout:g} s")
        finally:
            self.in_flight -= 1

    def _authorised(self, headers: dict) -> bool:
        key = os.environ.get("GENLOOP_API_KEY")
        if not key:
            return True
        given = headers.get(b"authorization", b"")
        return hmac.compare_digest(given, b"Bearer " + key.encode())

    def _bounded(self, receive):
        """Count body bytes as they arrive (chunked bodies have no Content-Length)."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise TooLarge
            return message

        return wrapped


class TooLarge(Exception):
    pass


async def _reply(send, status: int, error: str, headers: list | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
