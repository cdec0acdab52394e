"""The tokenizer built from GGUF metadata agrees with transformers' on SmolLM2; streaming decode is exact."""
import pytest

from catalog.tokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days; 12345 + 678 = 13023.",
    "Ünïcödé façade — naïve café, Straße, Ærøskøbing",
    "日本語のテキストと中文混合",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷",
    "  leading spaces\n\ttabs and\r\nnewlines   ",
    "def f(x):\n    return x ** 2  # comment",
    "<|im_start|>user\nhi<|im_end|>",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    from catalog.registry import default_model_path

    path = default_model_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(smollm2, hf_tokenizer, text):
    ids = smollm2.tokenizer.encode(text)
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2.tokenizer.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids)


def test_chat_template_matches_transformers(smollm2, hf_tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    assert smollm2.tokenizer.apply_chat_template(messages) == hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_reassembles_text(smollm2, text):
    tok = smollm2.tokenizer
    detok = IncrementalDetokenizer(tok, skip_special_tokens=False)
    pieces = [detok.push(i) for i in tok.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_spell_the_text_byte_for_byte(smollm2, text):
    """Even where a token is part of a multi-byte character (its own decoded text is U+FFFD)."""
    tokenizer = smollm2.tokenizer
    ids = tokenizer.encode(text)
    assert b"".join(tokenizer.token_bytes(i) for i in ids).decode("utf-8") == tokenizer.decode(ids, False)


def test_token_bytes_of_sentencepiece_pieces():
    from tokenizers import Tokenizer as HFTokenizer, models

    from catalog.tokenizer import Tokenizer

    vocab = {"<unk>": 0, "<0xF0>": 1, "<0x9F>": 2, "\u2581hi": 3}
    tokenizer = Tokenizer(HFTokenizer(models.WordLevel(vocab, unk_token="<unk>")))
    assert [tokenizer.token_bytes(i) for i in (1, 2, 3)] == [b"\xf0", b"\x9f", b" hi"]
