"""Tokenizer wrapper: encode/decode, chat templates through jinja2, incremental detokenization."""
from __future__ import annotations

import functools
import re
from datetime import date

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback tokens


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's): printable Latin-1 bytes stand for themselves,
    the others for chr(256 + k) in byte order. Character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class ChatTemplateError(ValueError):
    pass


def _raise(message: str):
    raise ChatTemplateError(message)


class Tokenizer:
    def __init__(
        self,
        backend: HFTokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_token_ids: tuple[int, ...] = (),
        add_bos: bool = False,
    ):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        ids = set(eos_token_ids)
        if eos_token and backend.token_to_id(eos_token) is not None:
            ids.add(backend.token_to_id(eos_token))
        self.eos_token_ids = frozenset(ids)
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for, which its decoded text cannot show when it is part of a multi-byte
        character (OpenAI logprobs' `bytes`): byte-level BPE's pieces map back byte by byte; SentencePiece's
        byte-fallback pieces <0xNN> are that byte and its '▁' a space; an added token is its text."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if isinstance(self.backend.decoder, decoders.ByteLevel):
            alphabet = _byte_level_alphabet()
            if all(c in alphabet for c in piece):
                return bytes(alphabet[c] for c in piece)
            return piece.encode("utf-8")
        if match := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            # No template in the model: plain concatenation of the turns.
            return "\n".join(m["content"] for m in messages) + ("\n" if add_generation_prompt else "")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: date.today().strftime(fmt)
            try:
                self._template = env.from_string(self.chat_template)
            except jinja2.TemplateSyntaxError as e:
                raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, user_text: str) -> list[int]:
        """One user turn through the chat template, ready for generation."""
        prompt = self.apply_chat_template([{"role": "user", "content": user_text}])
        # The template writes the BOS itself where the model wants one.
        return self.encode(prompt, add_special_tokens=False)


class IncrementalDetokenizer:
    """Turns a token stream into text, never emitting half of a multi-byte character.

    Decodes a short window of recent tokens and emits only text past what was already
    emitted, holding back while the tail is an incomplete UTF-8 sequence (U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # tokens whose text has been emitted
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""
