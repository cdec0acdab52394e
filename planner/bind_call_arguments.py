"""The named arguments of one generate() / classify() call: constants, type-checked, turned into SamplingParams.

Every refusal names the argument and points at it in the SQL text; an option the chosen decoding would not read
(beam search's ignored sampling options, length_penalty without beams) is refused rather than dropped.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from sqlglot import exp

from operators.requests import SamplingParams, StructuredOutput
from planner.errors import SqlError
from planner.sql.dialect import Sqlm
from planner.sql.nodes import LLMCall
from runtime.structured import StructuredOutputError
from runtime.structured import check as check_structured

DEFAULT_MAX_TOKENS = 64
OPTION_KINDS = {int: "integer", float: "number", bool: "boolean", str: "string", list: "list of strings"}
# the sampling options beam search does not read (structured output aside)
BEAM_IGNORES = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                "repetition_penalty")


class CallArguments:
    """error(message, node): the binder's positioned SqlError; constant(node): a literal's Python value."""

    def __init__(self, call: LLMCall, error: Callable[[str, exp.Expr | None], SqlError],
                 constant: Callable[[exp.Expr], object]):
        self.call, self.error, self.constant = call, error, constant
        self.name = call.sql_name().lower()

    def option(self, key: str, default, kind: type | tuple[type, ...]):
        """The named argument's constant value (`default` where it is not given), of `kind`: int, float, bool,
        str, list (of strings), or a tuple of them."""
        value = self.call.option(key)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, exp.Array):
            const = [self.constant(v) for v in value.expressions]
            wrong = next((v for v, c in zip(value.expressions, const) if not isinstance(c, str)), None)
            ok, where = list in kinds and wrong is None, wrong or value
        else:
            const = self.constant(value)
            if float in kinds and isinstance(const, int) and not isinstance(const, bool):
                const = float(const)
            # a bool is an int to Python, never to SQL
            ok = any(isinstance(const, k) and not (k is not bool and isinstance(const, bool)) for k in kinds
                     if k is not list)
            where = value
        if not ok:
            wanted = " or ".join(OPTION_KINDS[k] for k in kinds)
            raise self.error(f"{self.name}(): {key} must be {wanted}, got {value.sql(dialect=Sqlm)}", where)
        return const

    def sampling(self) -> SamplingParams:
        stop = self.option("stop", (), (str, list))
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if any(s == "" for s in stop):
            raise self.error(f"{self.name}(): stop strings must not be empty "
                             "(an empty one would end every output at once)", self.call.option("stop"))
        try:
            params = SamplingParams(
                structured=self.structured(),
                max_tokens=self.option("max_tokens", DEFAULT_MAX_TOKENS, int),
                temperature=self.option("temperature", 0.0, float),
                top_p=self.option("top_p", 1.0, float),
                top_k=self.option("top_k", 0, int),
                seed=self.option("seed", None, int),
                presence_penalty=self.option("presence_penalty", 0.0, float),
                frequency_penalty=self.option("frequency_penalty", 0.0, float),
                repetition_penalty=self.option("repetition_penalty", 1.0, float),
                min_p=self.option("min_p", 0.0, float),
                beam_width=self.option("beam_width", 1, int),
                length_penalty=self.option("length_penalty", 1.0, float),
                stop=stop,
            )
        except ValueError as e:  # its message starts with the argument's name
            raise self.error(f"generate(): {e}", self.call.option(str(e).split()[0]) or self.call) from None
        self.check_beam_options(params)
        return params

    def check_beam_options(self, params: SamplingParams) -> None:
        """Beam search (runtime/beam_search.py) reads only beam_width, max_tokens, length_penalty and n, and
        sampling never reads length_penalty: an option the chosen decoding would ignore is refused by name."""
        plain = SamplingParams()
        for kw in self.call.args.get("options") or []:
            key = kw.this.name.lower()
            if params.beam_width > 1 and (key in StructuredOutput.KINDS or key in BEAM_IGNORES
                                          and getattr(params, key) != getattr(plain, key)):
                raise self.error(f"generate(): {key} cannot be combined with beam_width", kw.expression)
            if params.beam_width == 1 and key == "length_penalty" and params.length_penalty != plain.length_penalty:
                raise self.error("generate(): length_penalty ranks beams: it needs beam_width > 1", kw.expression)

    def structured(self) -> StructuredOutput | None:
        """The one structured-output option of a generate() call, checked (schema, regex, grammar) here."""
        given = [k for k in StructuredOutput.KINDS if self.call.option(k) is not None]
        if not given:
            return None
        if len(given) > 1:
            raise self.error(f"generate(): give one of {', '.join(StructuredOutput.KINDS)}, not "
                             f"{' and '.join(given)}", self.call.option(given[1]))
        kind, node = given[0], self.call.option(given[0])
        if kind == "json_object":
            if self.option(kind, False, bool) is not True:
                raise self.error("generate(): json_object takes true", node)
            spec = StructuredOutput(kind)
        elif kind == "choice":
            choices = self.option(kind, None, list)
            if not choices:
                raise self.error("generate(): choice must be a non-empty list of strings, like ['yes', 'no']", node)
            spec = StructuredOutput(kind, json.dumps(choices))
        else:
            spec = StructuredOutput(kind, self.option(kind, None, str))
        try:
            check_structured(spec)
        except StructuredOutputError as e:
            raise self.error(f"generate(): {e}", node) from None
        return spec
