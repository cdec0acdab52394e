"""POST /v1/sql: a statement in the CLI's dialect, the result as JSON rows or an Arrow IPC stream.

Requests run on a few worker threads (WORKERS), each owning a Connection of its own, so
the event loop never waits on a query and a long query does not hold up the others (the
catalog's transactions order their writes). Each request is a session of its own: it
starts from the catalog's settings, and a SET lasts until the request ends. The connection runs
under a sandbox policy (sqlm.policy): no file access unless --sql-files, no DDL unless
--sql-write, never SET GLOBAL. Model calls on the served model join the server's engine
(the shared engine), so its weights load once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import math
import threading

import pyarrow as pa
from fastapi.responses import Response

from runtime.engine_loop import EngineFailure
from sqlm.server.errors import APIError, bad_request

ARROW_STREAM = "application/vnd.apache.arrow.stream"
WORKERS = 4  # concurrent /v1/sql requests; model calls on the served model share its engine's batch


def _user_errors() -> tuple[type[BaseException], ...]:
    from catalog.errors import ModelError
    from catalog.settings import SettingError
    from catalog.sources import SourceError
    from planner.errors import SqlError
    from runtime.errors import PromptTooLongError
    from runtime.relational import RelationalError

    return (SqlError, ModelError, SettingError, SourceError, PromptTooLongError, RelationalError, ValueError)


class SqlService:
    def __init__(self, catalog_path: str | None = None, shared_engine=None, policy=None):
        """shared_engine: a runtime.llm_ops.SharedEngine, the server's; policy: a sqlm.policy.SqlPolicy
        (default: the sandbox, no files, no DDL)."""
        from sqlm.policy import SqlPolicy

        self.catalog_path = catalog_path
        self.shared_engine = shared_engine
        self.policy = policy if policy is not None else SqlPolicy.sandbox()
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sqlm-sql")
        self._local = threading.local()  # each worker thread's Connection
        self._connections = []
        self._lock = threading.Lock()

    def _connection(self):
        con = getattr(self._local, "con", None)
        if con is None:
            import sqlm

            con = self._local.con = sqlm.connect(self.catalog_path, shared_engine=self.shared_engine,
                                                 policy=self.policy)
            with self._lock:
                self._connections.append(con)
        return con

    def _run(self, query: str):
        con = self._connection()
        con.reset_session()  # this request's session: no SET or TEMP table of an earlier one
        result = con.sql(query)
        return result.arrow(), result.message

    async def execute(self, query: str) -> tuple[pa.Table, str | None]:
        try:
            return await asyncio.wrap_future(self._workers.submit(self._run, query))
        except EngineFailure as e:
            raise APIError(503, str(e), type="server_error", code="engine_unavailable")
        except _user_errors() as e:
            raise bad_request(str(e), param="query", code="sql_error")
        except PermissionError as e:
            raise APIError(403, str(e), type="permission_error", param="query", code="sql_forbidden")
        except OSError as e:
            raise APIError(400, f"{type(e).__name__}: {e}", param="query", code="sql_error")

    def close(self) -> None:
        self._workers.shutdown(wait=True)  # no query runs past here
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()


def wants_arrow(accept: str | None) -> bool:
    return ARROW_STREAM in (accept or "")


def arrow_response(table: pa.Table) -> Response:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue(), media_type=ARROW_STREAM)


def _json_value(value):
    """value with every NaN or infinite float as None: JSON has neither (JavaScript's JSON.parse rejects the
    NaN / Infinity Python writes); the Arrow response keeps them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def json_response(table: pa.Table, message: str | None) -> Response:
    body = {
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "rows": _json_value(table.to_pylist()),
        "num_rows": table.num_rows,
        "message": message,
    }
    return Response(json.dumps(body, default=str, ensure_ascii=False, allow_nan=False), media_type="application/json")
