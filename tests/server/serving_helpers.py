"""Helpers for the server tests: a uvicorn server on 127.0.0.1 in a thread, and reference outputs."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

TINY = "tiny"


class RunningServer:
    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)

    def metrics(self) -> dict[str, float]:
        """/metrics as {sample name: value}, summed over label values (e.g. over finish reasons)."""
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics, summed over the labels not given."""
        total = 0.0
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

def reference_text(model, tokenizer, prompt_ids, max_tokens: int, **sampling) -> tuple[str, str]:
    """(text, finish_reason) of the reference single-sequence loop: the ground truth for the server."""
    from runtime.generate import generate
    from operators.requests import GenerationRequest, SamplingParams

    request = GenerationRequest(tuple(prompt_ids), SamplingParams(max_tokens=max_tokens, **sampling))
    result = generate(model, tokenizer, request)
    return result.text, result.finish_reason


def chat_ids(tokenizer, content: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}])
    return tokenizer.encode(text, add_special_tokens=False)
