"""AST nodes the `sqlm` dialect adds to sqlglot's: statements and the LLM calls."""
from __future__ import annotations

from sqlglot import exp


class Explain(exp.Expression):
    """EXPLAIN [ANALYZE] [(FORMAT TEXT|JSON, VERBOSE)] <query>."""
    arg_types = {"this": True, "analyze": False, "format": False, "verbose": False}


class CreateModel(exp.Expression):
    """CREATE [OR REPLACE] MODEL name FROM 'path' [WITH (key = value, ...)]."""
    arg_types = {"this": True, "path": True, "options": False, "replace": False}


class Reset(exp.Expression):
    """RESET [GLOBAL | SESSION] knob | ALL; GLOBAL also forgets the catalog's persisted value(s)."""
    arg_types = {"this": True, "kind": False}


class LLMCall(exp.Expression, exp.Func):
    """Base of the model-calling functions; `options` holds the `name => value` arguments."""
    NAMED: tuple[str, ...] = ()

    def option(self, name: str) -> exp.Expr | None:
        for kw in self.args.get("options") or []:
            if kw.this.name.lower() == name:
                return kw.expression
        return None


class LLMGenerate(LLMCall):
    """generate(model, prompt [, max_tokens => n, temperature => t, top_p => p, top_k => k,
    seed => s, stop => 'text', chat => true|false, priority => n,
    json_schema => '{...}' | json_object => true | regex => 'pattern' | choice => ['a', 'b'] | grammar => 'lark'])."""
    arg_types = {"model": True, "prompt": True, "options": False}
    _sql_names = ["GENERATE"]
    NAMED = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "chat", "priority",
             "json_schema", "json_object", "regex", "choice", "grammar",
             "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "n", "beam_width", "length_penalty")


class LLMClassify(LLMCall):
    """classify(model, text, ['label', ...] [, instruction => '...', priority => n])."""
    arg_types = {"model": True, "text": True, "labels": True, "options": False}
    _sql_names = ["CLASSIFY"]
    NAMED = ("instruction", "priority")
