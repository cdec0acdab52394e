"""`sqlm serve` as a user runs it: a separate process on 127.0.0.1, stopped with SIGTERM (its refusals and
--explain, which never serve, in-process)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "sqlm.cli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_answers_openai_requests_and_stops_cleanly(tiny_llama):
    port = free_port()
    process = serve("--model", str(tiny_llama.hf_dir), "--served-model-name", "tiny", "--port", str(port),
                    "--kv-cache-memory", "8MB", "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("`sqlm serve` did not become healthy")
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as a process killed by it would.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr


def test_serve_with_an_unknown_model_exits_with_a_message(tmp_path, capsys):
    from sqlm.server import main

    assert main(["--model", "no-such-model", "--home", str(tmp_path / "home")]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_serve_explain_prints_the_engines_plan_and_exits(tiny_llama, tmp_path, capsys):
    from sqlm.server import main

    assert main(["--model", str(tiny_llama.hf_dir), "--kv-cache-memory", "8MB", "--max-batch-size", "5",
                 "--speculative", "ngram", "--home", str(tmp_path / "home"), "--explain"]) == 0
    stdout = capsys.readouterr().out
    assert "BatchedGenerate" in stdout and "choice max_batch_size = 5" in stdout and "choice kv_block_size" in stdout
    assert "choice speculative = ngram" in stdout and "[forced by SET]" in stdout


def test_serve_takes_a_prefill_dtype():
    from sqlm.server import parser

    assert parser().parse_args(["--prefill-dtype", "bf16"]).prefill_dtype == "bf16"
    assert parser().parse_args([]).prefill_dtype is None  # the catalog's setting
    with pytest.raises(SystemExit):
        parser().parse_args(["--prefill-dtype", "fp16"])
