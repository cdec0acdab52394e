"""The `sqlm` sqlglot dialect: DuckDB's, plus sqlm's statements and LLM calls as real AST nodes.

Nothing falls back to sqlglot's `Command`: a statement the dialect does not know is
a syntax error with its position.

>>> import sqlglot
>>> type(sqlglot.parse_one("EXPLAIN (FORMAT JSON) SELECT 1", read=Sqlm)).__name__
'Explain'
>>> sqlglot.parse_one("SELECT generate('smollm2', 'Hi ' || name, max_tokens => 8) FROM t", read=Sqlm).sql(Sqlm)
"SELECT GENERATE('smollm2', 'Hi ' || name, max_tokens => 8) FROM t"
"""
from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.generators.duckdb import DuckDBGenerator
from sqlglot.parsers.duckdb import DuckDBParser
from sqlglot.tokens import TokenType

from planner.sql.nodes import CreateModel, Explain, LLMCall, LLMClassify, LLMGenerate, Reset

_EXPLAIN_OPTIONS = {"FORMAT", "VERBOSE", "ANALYZE"}


class SqlmParser(DuckDBParser):
    FUNCTION_PARSERS = {
        **DuckDBParser.FUNCTION_PARSERS,
        "GENERATE": lambda self: self._parse_llm_call(LLMGenerate),
        "CLASSIFY": lambda self: self._parse_llm_call(LLMClassify),
    }
    SHOW_PARSERS = {
        **DuckDBParser.SHOW_PARSERS,
        "MODELS": lambda self: self.expression(exp.Show(this="MODELS")),
        "SETTINGS": lambda self: self.expression(exp.Show(this="SETTINGS")),
    }
    from sqlglot.trie import new_trie
    SHOW_TRIE = new_trie(key.split(" ") for key in SHOW_PARSERS)
    del new_trie

    def _parse_statement(self) -> exp.Expr | None:
        # EXPLAIN and RESET are plain words to the tokenizer (see SqlmTokenizer)
        if self._curr and self._curr.token_type == TokenType.VAR:
            word = self._curr.text.upper()
            if word == "EXPLAIN":
                self._advance()
                return self._parse_explain()
            if word == "RESET":
                self._advance()
                return self._parse_reset()
        return super()._parse_statement()

    def _parse_as_command(self, start) -> exp.Expr:
        self.raise_error(f"unsupported statement {start.text.upper()!r}", start)
        return exp.Command(this=start.text)  # unreachable at ErrorLevel.IMMEDIATE

    def _parse_explain(self) -> Explain:
        analyze = bool(self._match_text_seq("ANALYZE"))
        fmt, verbose = "TEXT", False
        if self._curr and self._curr.token_type == TokenType.L_PAREN and self._next \
                and self._next.text.upper() in _EXPLAIN_OPTIONS:
            self._advance()
            while True:
                word = self._curr.text.upper() if self._curr else ""
                if word == "FORMAT":
                    self._advance()
                    fmt = self._curr.text.upper() if self._curr else ""
                    if fmt not in ("TEXT", "JSON"):
                        self.raise_error("EXPLAIN FORMAT must be TEXT or JSON")
                    self._advance()
                elif word == "VERBOSE":
                    self._advance()
                    verbose = True
                elif word == "ANALYZE":
                    self._advance()
                    analyze = True
                else:
                    self.raise_error("expected an EXPLAIN option: FORMAT TEXT|JSON, VERBOSE or ANALYZE")
                if not self._match(TokenType.COMMA):
                    break
            if not self._match(TokenType.R_PAREN):
                self.raise_error("expected ')' after the EXPLAIN options")
        query = super()._parse_statement()
        if not isinstance(query, exp.Query):
            self.raise_error("EXPLAIN expects a SELECT query")
        return self.expression(Explain(this=query, analyze=analyze, format=fmt, verbose=verbose))

    def _parse_reset(self) -> Reset:
        scope = None
        if self._curr is not None and self._curr.text.upper() in ("GLOBAL", "SESSION") and self._next is not None:
            scope = self._curr.text.upper()
            self._advance()
        name = self._parse_id_var(any_token=True)
        if name is None:
            self.raise_error("RESET expects a setting name or ALL")
        return self.expression(Reset(this=exp.to_identifier(name.name.lower()), kind=scope))

    def _parse_create(self) -> exp.Expr:
        start = self._prev
        index = self._index
        replace = bool(self._match_pair(TokenType.OR, TokenType.REPLACE))
        if self._curr and self._curr.text.upper() == "MODEL":
            self._advance()
            return self._parse_create_model(replace)
        self._retreat(index)
        self._prev = start
        return super()._parse_create()

    def _parse_create_model(self, replace: bool) -> CreateModel:
        name = self._parse_id_var()
        if name is None:
            self.raise_error("CREATE MODEL expects a model name")
        if not self._match(TokenType.FROM):
            self.raise_error("CREATE MODEL expects FROM 'path'")
        path = self._parse_string()
        if path is None:
            self.raise_error("CREATE MODEL expects the model path as a string")
        options = []
        if self._match(TokenType.WITH):
            if not self._match(TokenType.L_PAREN):
                self.raise_error("expected '(' after WITH")
            options = self._parse_csv(self._parse_model_option)
            if not self._match(TokenType.R_PAREN):
                self.raise_error("expected ')' to close the WITH options")
        return self.expression(CreateModel(this=name, path=path, options=options, replace=replace))

    def _parse_model_option(self) -> exp.Expr:
        key = self._parse_id_var(any_token=True)
        if key is None or not self._match(TokenType.EQ):
            self.raise_error("expected key = value in the WITH options")
        value = self._parse_primary() or self._parse_id_var(any_token=True)
        if isinstance(value, exp.Identifier):
            value = exp.Literal.string(value.name)
        return self.expression(exp.Property(this=exp.to_identifier(key.name.lower()), value=value))

    def _parse_llm_call(self, node: type[LLMCall]) -> LLMCall:
        start = self._prev  # the '('
        args, tokens, starts = [], [], []  # each argument and the token it starts at, for error positions
        while self._curr and self._curr.token_type != TokenType.R_PAREN:
            tokens.append(self._curr)
            starts.append(self._index)
            args.append(self._parse_lambda())
            if not self._match(TokenType.COMMA):
                break
        name = node.sql_name().lower()
        first_kw = next((i for i, a in enumerate(args) if isinstance(a, exp.Kwarg)), len(args))
        for i in range(first_kw, len(args)):
            if not isinstance(args[i], exp.Kwarg):
                self.raise_error(f"{name}(): positional argument after a named one", tokens[i])
        positional, options = args[:first_kw], args[first_kw:]
        for arg, first in zip(args, starts):  # NULL, TRUE, [] carry no position of their own: where they start
            parts = [(arg.this, first), (arg.expression, first + 2)] if isinstance(arg, exp.Kwarg) else [(arg, first)]
            for part, index in parts:  # a named argument: its name, then its value after `=>`
                if part is not None and index < len(self._tokens) \
                        and all(n.meta.get("start") is None for n in part.walk()):
                    token = self._tokens[index]
                    part.meta.update(line=token.line, col=token.col, start=token.start, end=token.end)
        required = [k for k, required in node.arg_types.items() if required]
        if len(positional) != len(required):
            self.raise_error(f"{name}() takes {len(required)} positional arguments "
                             f"({', '.join(required)}), got {len(positional)}", start)
        seen = set()
        for kw, token in zip(options, tokens[first_kw:]):
            key = kw.this.name.lower()
            if key not in node.NAMED:
                self.raise_error(f"{name}(): unknown argument {key!r}; expected one of {', '.join(node.NAMED)}", token)
            if key in seen:
                self.raise_error(f"{name}(): argument {key!r} given twice", token)
            seen.add(key)
        if not self._curr or self._curr.token_type != TokenType.R_PAREN:
            self.raise_error(f"expected ')' to close {name}()")
        return self.expression(node(**dict(zip(required, positional)), options=options))


class SqlmGenerator(DuckDBGenerator):
    TRANSFORMS = {
        **DuckDBGenerator.TRANSFORMS,
        LLMGenerate: lambda self, e: self._llm_call_sql(e, ("model", "prompt")),
        LLMClassify: lambda self, e: self._llm_call_sql(e, ("model", "text", "labels")),
        Explain: lambda self, e: "EXPLAIN " + ("ANALYZE " if e.args.get("analyze") else "")
        + (f"(FORMAT {e.args.get('format')}{', VERBOSE' if e.args.get('verbose') else ''}) ")
        + self.sql(e, "this"),
        Reset: lambda self, e: f"RESET {e.args['kind'] + ' ' if e.args.get('kind') else ''}{self.sql(e, 'this')}",
        CreateModel: lambda self, e: "CREATE " + ("OR REPLACE " if e.args.get("replace") else "")
        + f"MODEL {self.sql(e, 'this')} FROM {self.sql(e, 'path')}"
        + (" WITH (" + ", ".join(f"{self.sql(p, 'this')} = {self.sql(p, 'value')}"
                                 for p in e.args["options"]) + ")" if e.args.get("options") else ""),
    }

    def _llm_call_sql(self, e: LLMCall, keys: tuple[str, ...]) -> str:
        args = [self.sql(e, k) for k in keys] + [self.sql(o) for o in e.args.get("options") or []]
        return f"{e.sql_name()}({', '.join(args)})"


class Sqlm(DuckDB):
    class Tokenizer(DuckDB.Tokenizer):
        KEYWORDS = {k: v for k, v in DuckDB.Tokenizer.KEYWORDS.items() if k not in ("EXPLAIN", "RESET")}

    Parser = SqlmParser
    Generator = SqlmGenerator
