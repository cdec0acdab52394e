"""Servers for the tests: uvicorn on 127.0.0.1 in a thread, on a socket bound before it starts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from operators.engine_config import EngineConfig  # noqa: E402
from serving_helpers import TINY, RunningServer  # noqa: E402
from sqlm.server import ServerSettings, create_app  # noqa: E402

TINY_ENGINE = EngineConfig(kv_cache_memory=8 << 20, kv_block_size=16, max_batch_size=64, prefill_chunk_tokens=256)


@pytest.fixture(scope="session")
def tiny_server(tiny_llama):
    # /v1/sql may read the tiny model's files (CREATE MODEL) and write to the catalog; the sandbox's
    # defaults are tested on a server of its own (test_sql_sandbox.py)
    app = create_app(str(tiny_llama.hf_dir), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(sql_files=str(tiny_llama.hf_dir.parent), sql_write=True))
    with RunningServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_reference(tiny_llama):
    """(model, tokenizer) of the same tiny model, for the reference generation loop."""
    from catalog.loader import load_model
    from operators.llama import build_model

    loaded = load_model(tiny_llama.hf_dir)
    return build_model(loaded, "fp32"), loaded.tokenizer


SMOLLM2_ENGINE = EngineConfig(kv_cache_memory=256 << 20, kv_block_size=16, max_batch_size=32, prefill_chunk_tokens=256)


@pytest.fixture(scope="session")
def smollm2_server(smollm2):
    app = create_app("smollm2", SMOLLM2_ENGINE)
    with RunningServer(app) as server:
        yield server


