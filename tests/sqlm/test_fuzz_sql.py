"""Random SQL at a sandboxed connection: every answer is a result or a clear error, never a crash (an exception
that is not the front end's own) or a hang (hypothesis)."""
from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.errors import ModelError
from catalog.settings import SettingError
from catalog.sources import SourceError
from planner.errors import SqlError
from runtime.relational import RelationalError

WORDS = ["SELECT", "FROM", "WHERE", "t", "id", "s", "x", "(", ")", ",", "*", "+", "/", "0", "1", "'a'", "AND", "OR",
         "NOT", "NULL", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "ON", "=", "<", "WITH", "AS", "q", "generate(",
         "'tiny'", "=>", "max_tokens", "SET", "GLOBAL", "RESET", "COPY", "TO", "CREATE TABLE", "EXPLAIN", ";",
         "count(", "sum(", "CAST(", "VARCHAR", "CASE", "WHEN", "THEN", "END", "IN", "'\\ud800'", "read_csv(", "\"",
         "1e309", "--", "/*"]
USER_ERRORS = (SqlError, ModelError, SettingError, SourceError, RelationalError, ValueError, PermissionError, OSError)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    import sqlm
    from sqlm.policy import SqlPolicy

    c = sqlm.connect(tmp_path_factory.mktemp("fuzz") / "home", policy=SqlPolicy.sandbox())
    c.register("t", pa.table({"id": [1, 2, 3], "s": ["a", "b", None], "x": [0.5, 0.0, -1.0]}))
    yield c
    c.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=14))
def test_random_sql_is_a_result_or_a_clear_error(con, words):
    try:
        con.sql(" ".join(words))
    except USER_ERRORS as e:
        assert str(e)
