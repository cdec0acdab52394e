"""The API key and the body-size limit in front of every endpoint (sqlm/server/guard.py)."""
from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from serving_helpers import TINY, RunningServer

from sqlm.server import ServerSettings, create_app
from sqlm.server.guard import RequestGuard


def echo_app(**guard) -> TestClient:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/boom")
    async def boom():
        raise RuntimeError("a bug")
    app.add_middleware(RequestGuard, **guard)
    return TestClient(app)


def test_a_body_over_the_limit_is_413_before_it_is_read():
    client = echo_app(max_body_bytes=1000)
    assert client.post("/v1/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    refused = client.post("/v1/echo", content=b"x" * 1001)
    assert refused.status_code == 413 and "1,000 bytes" in refused.json()["error"]["message"]


def test_a_chunked_body_without_length_stops_at_the_limit():
    client = echo_app(max_body_bytes=1000)
    chunks = (b"y" * 300 for _ in range(10))  # no Content-Length: sent chunked
    assert client.post("/v1/echo", content=chunks).status_code == 413
    assert client.post("/v1/echo", content=(b"y" * 300 for _ in range(3))).json() == {"bytes": 900}


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic sekrit"}, 401),
    ({"Authorization": "Bearer sekrit"}, 200),
    ({"authorization": "bearer sekrit"}, 200),
])
def test_the_api_key_is_a_bearer_token(headers, status):
    client = echo_app(api_key="sekrit")
    response = client.post("/v1/echo", content=b"{}", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200  # health stays open for load balancers


def test_the_server_needs_its_key_on_completions_and_sql(tiny_llama, tmp_path):
    from conftest import TINY_ENGINE

    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(catalog_path=str(tmp_path / "catalog.db"), api_key="K"))
    body = {"model": TINY, "prompt": "hi", "max_tokens": 2}
    with RunningServer(app) as server:
        anonymous = httpx.post(f"{server.url}/v1/completions", json=body)
        wrong_sql = httpx.post(f"{server.url}/v1/sql", json={"query": "SELECT 1"}, headers={"Authorization": "Bearer k"})
        allowed = httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": "Bearer K"})
        sql = httpx.post(f"{server.url}/v1/sql", json={"query": "SELECT 1 AS one"}, headers={"Authorization": "Bearer K"})
        health = httpx.get(f"{server.url}/health")
    assert (anonymous.status_code, wrong_sql.status_code) == (401, 401)
    assert allowed.status_code == 200 and sql.status_code == 200 and health.status_code == 200


def test_serve_warns_when_exposed_without_a_key():
    from sqlm.server import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3")


def test_a_500_is_json_and_the_keep_alive_connection_still_serves(caplog):
    app = echo_app().app
    with RunningServer(app) as server, httpx.Client(base_url=server.url) as client:
        boom = client.post("/v1/boom", content=b"{}")
        after = client.post("/v1/echo", content=b"abc")  # the same connection, not reset
    assert boom.status_code == 500 and "RuntimeError: a bug" in boom.json()["error"]["message"]
    assert after.status_code == 200 and after.json() == {"bytes": 3}


def test_a_deeply_nested_json_body_is_a_400(tiny_server):
    body = ("[" * 100_000 + "]" * 100_000).encode()
    r = httpx.post(f"{tiny_server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
