"""The server speculates as its plan says: with a draft model from its catalog, answers are unchanged."""
from __future__ import annotations

import httpx

from serving_helpers import TINY, RunningServer
from sqlm.server import ServerSettings, create_app


def test_a_draft_model_in_the_catalog_drafts_for_the_served_model(tiny_llama, tmp_path_factory):
    import sqlm
    from conftest import TINY_ENGINE
    from tiny_llama import write_tiny_llama

    small = write_tiny_llama(tmp_path_factory.mktemp("small_tiny"), seed=3, layers=1)
    home = tmp_path_factory.mktemp("home")
    with sqlm.connect(home) as con:
        con.sql(f"CREATE MODEL small FROM '{small.gguf_path}'")
    body = {"model": TINY, "prompt": "the quick brown fox the quick brown fox", "max_tokens": 12, "temperature": 0}
    texts = {}
    for mode in ("off", "draft"):
        app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                         settings=ServerSettings(catalog_path=str(home), speculative=mode))
        assert f"choice speculative = {'draft small' if mode == 'draft' else 'off'}" in app.state.explain_text
        with RunningServer(app) as server:
            response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        texts[mode] = response.json()["choices"][0]["text"]
    assert texts["draft"] == texts["off"]
