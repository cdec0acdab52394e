"""`sqlm serve --kernels tvm --weight-format native`: the same greedy text as the torch reference loop."""
from __future__ import annotations

from serving_helpers import TINY, RunningServer, chat_ids, reference_text

from sqlm.server import ServerSettings, create_app

HELLO = "the quick brown fox"


def test_tvm_native_server_matches_the_reference_loop(tiny_llama, tiny_reference):
    from conftest import TINY_ENGINE

    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(weight_format="native", kernels="tvm"))
    model = app.state.model
    assert model.weight_format == "native" and model.ops.name == "tvm"
    ref_model, tokenizer = tiny_reference
    with RunningServer(app) as server:
        reply = server.client().chat.completions.create(model=TINY, messages=[{"role": "user", "content": HELLO}],
                                                        max_tokens=16, temperature=0)
    text, _ = reference_text(ref_model, tokenizer, chat_ids(tokenizer, HELLO), 16)
    assert reply.choices[0].message.content == text
