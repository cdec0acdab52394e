"""Random JSON at the server's endpoints: every answer is a 2xx or a 4xx, never a 500, and the server keeps
answering (hypothesis)."""
from __future__ import annotations

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tiny", "other", 3]), "prompt": JSON, "messages": JSON, "max_tokens": JSON,
    "n": JSON, "temperature": JSON, "stop": JSON, "stream": JSON, "logprobs": JSON, "query": JSON})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/sql"]), body=FIELDS | JSON)
def test_random_json_never_gets_a_500(tiny_server, path, body):
    response = httpx.post(f"{tiny_server.url}{path}", json=body, timeout=60)
    assert response.status_code < 500, response.text
    assert httpx.get(f"{tiny_server.url}/health", timeout=5).status_code == 200
