"""/v1/sql is a sandbox by default: no file reads or writes, no DDL, no global settings; each request is a
session of its own. --sql-files opens one directory, --sql-write the catalog's DDL."""
from __future__ import annotations

import httpx
import pytest

from serving_helpers import TINY, RunningServer

from sqlm.server import ServerSettings, create_app

SECRET = "hunter2-top-secret"


@pytest.fixture(scope="module")
def sandbox(tiny_llama, tmp_path_factory):
    from conftest import TINY_ENGINE

    root = tmp_path_factory.mktemp("sandbox")
    (root / "secret.csv").write_text(f"password\n{SECRET}\n")
    files = root / "shared"
    files.mkdir()
    (files / "ok.csv").write_text("x\n1\n2\n")
    (files / "escape").symlink_to(root)  # a symlink out of the opened directory
    closed = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                        settings=ServerSettings(catalog_path=str(root / "catalog.db")))
    opened = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                        settings=ServerSettings(catalog_path=str(root / "catalog.db"), sql_files=str(files)))
    with RunningServer(closed) as closed_server, RunningServer(opened) as opened_server:
        yield root, closed_server, opened_server


def sql(server, query: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/sql", json={"query": query}, timeout=60)


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('{root}/secret.csv')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_parquet('{root}/catalog.db')",
    'SELECT * FROM "{root}/secret.csv"',
])
def test_reading_files_is_refused_and_nothing_of_them_is_answered(sandbox, query):
    root, closed, _ = sandbox
    r = sql(closed, query.format(root=root))
    assert r.status_code in (400, 403)
    assert SECRET not in r.text and "root:" not in r.text
    assert "file access" in r.json()["error"]["message"]


def test_copy_and_ddl_and_global_settings_are_refused(sandbox):
    root, closed, _ = sandbox
    target = root / "written.csv"
    for query in (f"COPY (SELECT 1 AS x) TO '{target}'", 'CREATE TABLE "../../x" AS SELECT 1 AS a',
                  "CREATE TABLE t AS SELECT 1 AS a", f"CREATE MODEL m FROM '{root}/secret.csv'",
                  "SET GLOBAL kv_cache_memory = '1KB'", "RESET GLOBAL ALL"):
        r = sql(closed, query)
        assert r.status_code in (400, 403), query
    assert not target.exists() and not (root.parent.parent / "x").exists()
    assert sql(closed, "SHOW TABLES").json()["rows"] == []


def test_set_lasts_one_request(sandbox):
    _, closed, _ = sandbox
    assert sql(closed, "SET max_batch_size = 3; SHOW SETTINGS").status_code == 200
    rows = sql(closed, "SHOW SETTINGS").json()["rows"]
    assert next(r for r in rows if r["name"] == "max_batch_size")["value"] == "auto"


def test_sql_files_opens_one_directory_only(sandbox):
    root, _, opened = sandbox
    assert sql(opened, "SELECT sum(x) AS s FROM read_csv('ok.csv')").json()["rows"] == [{"s": 3}]
    for query in ("SELECT * FROM read_csv('../secret.csv')", f"SELECT * FROM read_csv('{root}/secret.csv')",
                  "SELECT * FROM read_csv('escape/secret.csv')", "COPY (SELECT 1 AS x) TO '/tmp/sqlm-outside.csv'"):
        r = sql(opened, query)
        assert r.status_code in (400, 403), query
        assert SECRET not in r.text
    assert sql(opened, "COPY (SELECT 7 AS x) TO 'out.csv'").status_code == 200
    assert (root / "shared" / "out.csv").read_text().splitlines()[-1] == "7"


def test_a_long_query_does_not_hold_up_the_others(tmp_path):
    import asyncio
    import threading

    from sqlm.server.sql_api import SqlService

    service = SqlService(str(tmp_path / "catalog.db"))
    release = threading.Event()
    run = service._run

    def held(query):  # the 'slow' query waits until the fast one has been answered
        if "slow" in query:
            assert release.wait(30)
        return run(query)
    service._run = held

    async def both():
        slow = asyncio.ensure_future(service.execute("SELECT 'slow' AS s"))
        fast, _ = await asyncio.wait_for(service.execute("SELECT 1 AS one"), 30)
        assert not slow.done() and fast.to_pylist() == [{"one": 1}]
        release.set()
        return (await slow)[0].to_pylist()
    try:
        assert asyncio.run(both()) == [{"s": "slow"}]
    finally:
        release.set()
        service.close()
