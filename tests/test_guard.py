"""The service's guard (API key, body size, concurrency, timeout) around a stand-in ASGI app."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.guard import Guard


async def slow_app(scope, receive, send, delay: float = 0.2) -> None:
    """Reads the whole body, waits, answers 200."""
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(guard: Guard, path: str, body: bytes = b"", headers: dict | None = None, chunked: bool = False):
    """One request through the guard; returns (status, json body or text)."""
    headers = {"content-type": "application/json"} | (headers or {})
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if not chunked:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "path": path, "method": "POST", "headers": raw}
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def run():
        await guard(scope, receive, send)

    return scope, run, sent


def result(sent: list[dict]) -> tuple[int, object]:
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def run_one(guard, path, **kw) -> tuple[int, object]:
    _, run, sent = call(guard, path, **kw)
    asyncio.run(run())
    return result(sent)


def make(**kw) -> Guard:
    opts = {"max_body_bytes": 4096, "max_concurrency": 2, "timeout_s": 5.0} | kw
    return Guard(lambda s, r, se: slow_app(s, r, se, 0.01), **opts)


def test_api_key_guards_everything_but_health_and_the_page(monkeypatch):
    monkeypatch.setenv("GENLOOP_API_KEY", "k3y")
    guard = make()
    for path in ("/generate", "/feedback", "/version", "/metrics", "/"):
        status, body = run_one(guard, path)
        assert status == 401 and "API key" in body["error"], path
        assert run_one(guard, path, headers={"Authorization": "Bearer nope"})[0] == 401
        assert run_one(guard, path, headers={"Authorization": "Bearer k3y"})[0] == 200
    for path in ("/readyz", "/livez", "/ui", "/ui/static/app.js"):
        assert run_one(guard, path)[0] == 200, path
    monkeypatch.delenv("GENLOOP_API_KEY")
    assert run_one(guard, "/generate")[0] == 200  # no key set: open


def test_oversize_bodies_get_413_with_or_without_content_length():
    guard = make()
    assert run_one(guard, "/generate", body=b"x" * 5000)[0] == 413
    status, body = run_one(guard, "/generate", body=b"x" * 5000, chunked=True)
    assert status == 413 and "over 4096 bytes" in body["error"]
    assert run_one(guard, "/generate", body=b"x" * 4000, chunked=True)[0] == 200


def test_overload_gets_429_and_health_still_answers():
    guard = Guard(
        lambda s, r, se: slow_app(s, r, se, 0.3), max_body_bytes=4096, max_concurrency=2, timeout_s=5
    )

    async def scenario():
        runs = [call(guard, "/generate") for _ in range(4)]
        health = call(guard, "/readyz")
        await asyncio.gather(*(run() for _, run, _ in runs), health[1]())
        return [result(sent)[0] for _, _, sent in runs], result(health[2])[0]

    codes, health = asyncio.run(scenario())
    assert sorted(codes) == [200, 200, 429, 429] and health == 200


def test_slow_requests_get_504():
    guard = Guard(
        lambda s, r, se: slow_app(s, r, se, 1.0), max_body_bytes=4096, max_concurrency=2, timeout_s=0.1
    )
    status, body = run_one(guard, "/generate")
    assert status == 504 and "longer than 0.1 s" in body["error"]
    assert guard.in_flight == 0  # the slot is released


@pytest.mark.parametrize("path", ["/", "/docs.json", "/static_content/swagger-ui.css"])
def test_docs_page_can_be_switched_off(path):
    assert run_one(make(docs=False), path)[0] == 404
    assert run_one(make(), path)[0] == 200


async def error_app(scope, receive, send, status=400, body=b""):
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    "ctype",
    [
        "multipart/form-data",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "",
        "application/vnd.bentoml+pickle",
    ],
)
def test_non_json_bodies_get_415(ctype):
    status, body = run_one(make(), "/feedback", body=b"{}", headers={"content-type": ctype})
    assert status == 415 and "application/json" in body["error"]
    assert (
        run_one(make(), "/generate", body=b"{}", headers={"content-type": "application/json; charset=utf-8"})[
            0
        ]
        == 200
    )


@pytest.mark.parametrize(
    ("status", "raw", "error"),
    [
        (
            400,
            b'{"error":"1 validation error for Input","detail":[{"type":"less_than_equal","loc":["rating"],'
            b'"msg":"Input should be less than or equal to 5","url":"https://errors.pydantic.dev/2.14/v/x"}]}',
            "rating: Input should be less than or equal to 5",
        ),
        (400, b'[{"error":"unknown label \'x\'"}]', "unknown label 'x'"),
        (404, b'[{"error":"unknown sample id"}]', "unknown sample id"),
        (405, b"Method Not Allowed", "Method Not Allowed"),
    ],
)
def test_4xx_bodies_get_one_shape(status, raw, error):
    guard = Guard(
        lambda s, r, se: error_app(s, r, se, status, raw), max_body_bytes=4096, max_concurrency=2, timeout_s=5
    )
    got = run_one(guard, "/generate")
    assert got == (status, {"error": error})
