"""An ASGI middleware in front of every route: API key, body size, concurrency and time limits.

- `GENLOOP_API_KEY` set: every route except health checks and the web page's files needs
  `Authorization: Bearer <key>` (compared in constant time), else 401.
- Bodies over `max_body_bytes` get 413, before the handler reads them.
- `docs` off: BentoML's API docs page at / (which loads a third-party script) answers 404.
- An API request counts once its whole body has arrived (a body still arriving after `timeout_s`
  gets 408), so clients sending slowly hold no slot.
- More than `max_concurrency` API requests in flight get 429 (with Retry-After) at once, and one
  running past `timeout_s` gets 504; health checks are never queued behind them, so /readyz answers
  while the service is saturated.
- The API routes take JSON only: any other Content-Type gets 415 (BentoML picks its parser from the
  header, and a form parser answers a malformed multipart body with a 500).
- Every 4xx answer, on every route, has one shape, {"error": "<one line>"}: BentoML's validation errors
  (a list of pydantic errors with documentation links), its list-wrapped exceptions and Starlette's
  plain-text 404 and 405 are rewritten.
- With `GENLOOP_SERVER_ID` set (by deploy), every answer carries it as `x-genloop-server`: while a new
  deployment starts beside the old one on a shared port, deploy tells their answers apart.
- The OpenAPI document (/docs.json) gains what this guard answers (401, 413, 415, 429, 504), the
  required body, and a link from a generated sample to rating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os

OPEN = ("/livez", "/readyz", "/healthz")  # no key: health checks
PAGE = "/ui"  # no key: the page and its static files (its requests carry the key)
LIMITED = ("/generate", "/feedback")
DOCS = ("/", "/docs.json")  # BentoML's API docs page and its OpenAPI file
SERVER_ID = os.environ.get("GENLOOP_SERVER_ID", "").encode()


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
        if SERVER_ID:
            send = _tagged(send)
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
        if path == "/docs.json":
            return await self.app(scope, receive, _rewrite_json(send, _document))
        if path not in LIMITED:
            try:
                return await self.app(scope, receive, _one_error_shape(send))
            except TooLarge:
                return await _reply(send, 413, f"request body over {self.max_body} bytes")
        if scope["method"] == "POST" and (problem := _not_json(headers.get(b"content-type"))):
            return await _reply(send, 415, problem)
        # The body first, within the time limit: a client trickling it in holds no slot meanwhile.
        try:
            body = await asyncio.wait_for(_whole_body(receive), self.timeout)
        except TooLarge:
            return await _reply(send, 413, f"request body over {self.max_body} bytes")
        except TimeoutError:
            return await _reply(send, 408, f"the request body did not arrive within {self.timeout:g} s")
        if body is None:
            return None  # the client went away
        receive = _replay(body, receive)
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
            await asyncio.wait_for(self.app(scope, receive, _one_error_shape(tracking_send)), self.timeout)
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


async def _whole_body(receive) -> bytes | None:
    """The request body (`receive` is bounded: TooLarge past max_body_bytes); None if the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive that hands the app the body already read, then passes on (for a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OneLineClientErrors:
    """A logging filter: BentoML logs every rejected request (400) with a full traceback; a client's
    mistake becomes one line saying what was wrong (never the input itself)."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _client_error(exc):
            return True
        record.msg = f"{record.getMessage()}: client error: {_summary(exc)}"
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno, record.levelname = 20, "INFO"
        return True


def _client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and exc.error_code.value < 500


def _summary(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_context=False, include_url=False)
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)[:500]
    return " ".join(str(exc).split())[:500]


def quiet_client_errors() -> None:
    import logging

    logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineClientErrors())


ANSWERS = {  # what Guard itself answers on the API routes, for the OpenAPI document
    "408": "The request body did not arrive within the service's time limit",
    "413": "Request body too large",
    "415": "Request body not sent as application/json",
    "429": "Too many requests in flight; retry after Retry-After seconds",
    "504": "The request took longer than the service's time limit",
}


def _document(doc: dict) -> dict:
    """Complete BentoML's OpenAPI document for the API routes: the JSON body is required, and the
    answers Guard gives are listed (401 only when an API key is set)."""
    answers = ANSWERS | ({"401": "Missing or wrong API key"} if os.environ.get("GENLOOP_API_KEY") else {})
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}
    for path in LIMITED:
        op = doc.get("paths", {}).get(path, {}).get("post")
        if op is None:
            continue
        if "requestBody" in op:
            op["requestBody"]["required"] = True
        for status, why in answers.items():
            op["responses"].setdefault(status, {"description": why, "content": error})
    gen, fb = (doc.get("paths", {}).get(p, {}).get("post") for p in LIMITED)
    if gen and fb:  # lets a stateful client (schemathesis) rate a sample it was given
        gen["responses"]["200"]["links"] = {"RateSample": {
            "operationId": fb["operationId"],
            "requestBody": {"sample_id": "$response.body#/samples/0/id", "rating": 5}}}  # fmt: skip
    return doc


def _rewrite_json(send, rewrite):
    """A send that passes a 200 JSON answer through rewrite(data) (for small, whole documents)."""
    start = None
    chunks: list[bytes] = []

    async def wrapped(message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] == 200:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        with contextlib.suppress(ValueError):  # not JSON: as it came
            body = json.dumps(rewrite(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _tagged(send):
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"x-genloop-server", SERVER_ID)]}
        await send(message)

    return wrapped


def _not_json(content_type: bytes | None) -> str | None:
    """Why a request body is not JSON by its Content-Type, or None. BentoML picks its parser from the
    header, not from the route: multipart/form-data and x-www-form-urlencoded go to a form parser
    (a 500 on a malformed one), anything else is read as JSON."""
    media = (content_type or b"").split(b";")[0].strip().lower()
    if media == b"application/json":
        return None
    got = media.decode("latin-1") or "none"
    return f"send a JSON body with Content-Type: application/json (got {got})"


def _one_error_shape(send):
    """Rewrite BentoML's 4xx bodies into {"error": "<one line>"}: its validation errors come as
    {"error": "1 validation error for X", "detail": [pydantic errors with doc URLs]}, and an
    InvalidArgument raised by a route as a one-element list [{"error": ...}]."""
    start = None
    chunks: list[bytes] = []

    async def wrapped(message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = json.dumps({"error": _error_line(b"".join(chunks))}).encode()
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _error_line(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip() or "bad request"
    if isinstance(data, list) and len(data) == 1:  # BentoML renders a 4xx BentoMLException as a list
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"]:
        problems = [_problem(e) for e in data["detail"] if isinstance(e, dict)]
        return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
    if isinstance(data, dict) and "error" in data:
        return " ".join(str(data["error"]).split())
    return " ".join(json.dumps(data).split())


def _problem(err: dict) -> str:
    """One pydantic error as `field: message`, without its input or documentation URL."""
    where = ".".join(str(p) for p in err.get("loc") or ())
    msg = " ".join(str(err.get("msg", "invalid value")).split()).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


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
