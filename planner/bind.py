"""Binder: a SELECT's AST, names resolved against the catalog, to the naive logical plan.

The naive plan is the textbook one; making it fast is the rules' job:

    Scan / Join -> every model call -> Filter(WHERE) -> [Project -> Aggregate -> Filter(HAVING)]
                -> Sort -> Limit -> Project(SELECT list)

Every error names the problem and where it is in the SQL text.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import networkx as nx
import pyarrow as pa
from sqlglot import exp

from catalog.errors import ModelError
from operators import logical as L
from planner.bind_call_arguments import CallArguments
from planner.bind_relational import TableResolver, bind_expression_subqueries, bind_relational, relational_leaf
from planner.errors import SqlError, error_at
from planner.graph import Plan
from catalog.sources import SourceError, TableSource, kind_of
from planner.sql.dialect import Sqlm
from planner.sql.nodes import LLMCall, LLMGenerate


def _is_text(kind: pa.DataType) -> bool:
    """Strings in any of Arrow's layouts (a pandas categorical arrives dictionary-encoded)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


class Unsupported(SqlError):
    """A construct sqlm's binder does not represent; in a model-free subquery DuckDB runs it whole instead."""


class CatalogView(Protocol):
    """What the binder asks of the catalog (the connection provides it)."""

    def table(self, name: str) -> TableSource | None: ...
    def model(self, name: str) -> object: ...  # a catalog.store.ModelEntry; raises ModelError
    # a file read by a table function or a quoted name; raises SourceError, or PermissionError where the
    # connection's policy refuses the path
    def file(self, kind: str, path: str) -> TableSource: ...


@dataclass(frozen=True)
class ScopeColumn:
    alias: str
    name: str
    internal: str
    type: pa.DataType | None
    hidden: bool = False  # reached only by its qualified name: a USING column's copies beside the merged one


class Binder:
    def __init__(self, catalog: CatalogView, sql: str) -> None:
        self.catalog, self.sql = catalog, sql
        self.llm_count = 0
        # the CTEs visible where the binder is: name -> (its SELECT, the CTEs visible to that SELECT)
        self.ctes: dict[str, tuple[exp.CTE, dict]] = {}
        self.tables = TableResolver(self)  # what subqueries in expressions read, registered by name

    def error(self, message: str, node: exp.Expr | None) -> SqlError:
        return error_at("Binder error", message, node, self.sql)

    def unsupported(self, what: str, node: exp.Expr | None) -> Unsupported:
        e = error_at("Binder error", f"{what} is not supported in a query with model calls: compute it in a "
                     f"CTE or subquery without them", node, self.sql)
        return Unsupported(e.kind, e.message, e.line, e.col, self.sql)

    # -- FROM ---------------------------------------------------------------------------
    def bind_from(self, plan: Plan, select: exp.Select) -> tuple[int, list[ScopeColumn]]:
        from_ = select.args.get("from_")
        if from_ is None:  # SELECT without FROM: one row, no columns
            table = pa.table({"__row": [0]})
            src = TableSource("values", "(one row)", table.schema, table=table, row_count=1)
            return plan.add(L.Scan(src, "", ("__row",))), []
        node, scope = self.bind_relation(plan, from_.this)
        for join in select.args.get("joins") or []:
            call = join.args.get("on") and join.args["on"].find(LLMCall)
            if call:
                raise self.error(f"{call.sql_name().lower()}() is not supported in a JOIN condition: compute it "
                                 f"in a subquery in FROM, or filter on it in WHERE", call)
            if (join.kind or "").upper() in ("SEMI", "ANTI"):
                node = self.bind_semi_join(plan, join, node, scope)
                continue
            right, right_scope = self.bind_relation(plan, join.this)
            node, scope = self.bind_join(plan, join, node, scope, right, right_scope)
        return node, scope

    def bind_relation(self, plan: Plan, rel: exp.Expr) -> tuple[int, list[ScopeColumn]]:
        alias = rel.alias_or_name if not isinstance(rel, exp.Values) else (rel.alias or "values")
        if isinstance(rel, exp.Subquery):
            return self.bind_subquery(plan, rel.this, rel.alias or "subquery", rel)
        if isinstance(rel, exp.Table) and not rel.args.get("db") and rel.name.lower() in self.ctes:
            return self.bind_cte(plan, rel)
        if isinstance(rel, exp.Values):
            source = self.values_source(rel)
        elif isinstance(rel, exp.Table) and isinstance(rel.this, exp.Anonymous) or isinstance(rel.this, exp.Func):
            source = self.function_source(rel.this)
            fn = rel.this
            alias = rel.alias or (fn.name if isinstance(fn, exp.Anonymous) else fn.sql_name()).lower()
        elif isinstance(rel, exp.Table):
            source = self.named_source(rel)
            alias = rel.alias or rel.name
        else:
            raise self.error(f"unsupported table expression {rel.sql()!r}", rel)
        names = [f.name for f in source.schema]
        col_aliases = [c.name for c in (rel.args.get("alias").args.get("columns") or [])] if rel.args.get("alias") else []
        if col_aliases:
            if len(col_aliases) != len(names):
                raise self.error(f"{alias} has {len(names)} columns but {len(col_aliases)} names were given", rel)
        scan = L.Scan(source, alias, tuple(names))
        node = plan.add(scan)
        visible = col_aliases or names
        scope = [ScopeColumn(alias, v, f"{alias}.{n}", source.schema.field(n).type) for v, n in zip(visible, names)]
        return node, scope

    def named_source(self, table: exp.Table) -> TableSource:
        name = table.name
        if kind_of(name) is not None and isinstance(table.this, exp.Identifier) and table.this.quoted:
            return self.file(kind_of(name), name, table)
        src = self.catalog.table(name)
        if src is None:
            raise self.error(f"unknown table {name!r} (register it with con.register(), "
                             f"or read a file with read_parquet('...') / read_csv('...'))", table)
        return src

    def function_source(self, fn: exp.Expr) -> TableSource:
        name = (fn.name if isinstance(fn, exp.Anonymous) else fn.sql_name()).lower()
        kinds = {"read_parquet": "parquet", "read_csv": "csv", "read_csv_auto": "csv", "read_json": "json",
                 "read_json_auto": "json", "parquet_scan": "parquet"}
        if name not in kinds:
            raise self.error(f"unknown table function {name}()", fn)
        args = [a for a in [fn.args.get("this")] + list(fn.expressions or []) if isinstance(a, exp.Expr)]
        if not args or not isinstance(args[0], exp.Literal) or not args[0].is_string:
            raise self.error(f"{name}() expects a file path string", fn)
        if len(args) > 1:  # an option sqlm would ignore is refused by name, never silently dropped
            extra = args[1]
            option = extra.this.name if isinstance(extra, (exp.Kwarg, exp.PropertyEQ, exp.EQ)) else extra.sql()
            raise self.error(f"{name}(): option {option!r} is not supported (only the file path is)", extra)
        return self.file(kinds[name], args[0].this, fn)

    def file(self, kind: str, path: str, node: exp.Expr) -> TableSource:
        try:
            return self.catalog.file(kind, path)
        except (SourceError, PermissionError) as e:
            raise self.error(str(e), node) from None

    def values_source(self, values: exp.Values) -> TableSource:
        rows = [[self.constant(v) for v in row.expressions] for row in values.expressions]
        width = len(rows[0])
        if any(len(r) != width for r in rows):
            raise self.error("VALUES rows have different lengths", values)
        names = [c.name for c in (values.args.get("alias").args.get("columns") or [])] if values.args.get("alias") else []
        names = names or [f"col{i}" for i in range(width)]
        try:
            table = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise self.error(f"VALUES column has mixed types: {e}", values) from None
        alias = values.alias or "values"
        return TableSource("values", alias, table.schema, table=table, row_count=table.num_rows)

    def constant(self, e: exp.Expr) -> object:
        if isinstance(e, exp.Literal):
            return e.this if e.is_string else (float(e.this) if any(ch in e.this for ch in ".eE") else int(e.this))
        if isinstance(e, exp.Boolean):
            return e.this
        if isinstance(e, exp.Null):
            return None
        if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal):
            return -self.constant(e.this)
        raise self.error(f"expected a constant, got {e.sql()!r}", e)

    def bind_subquery(self, plan: Plan, select: exp.Expr, alias: str, rel: exp.Expr) -> tuple[int, list[ScopeColumn]]:
        """A query in FROM (a subquery or a CTE's body) under `alias`, its columns renamed by the alias's column
        list where `rel` has one. Each reference binds the query anew (CTEs are inlined, as DuckDB and
        PostgreSQL do for CTEs without side effects), so filters and LIMITs above reach into it."""
        alias_node = rel.args.get("alias")
        renamed = [c.name for c in (alias_node.args.get("columns") or [])] if alias_node else []
        before = set(plan.graph.nodes)
        try:
            node, names = self.bind_select_into(plan, select)
        except Unsupported:
            if next(iter(select.find_all(LLMCall)), None) is not None:
                raise
            plan.graph.remove_nodes_from(set(plan.graph.nodes) - before)
            leaf, columns = relational_leaf(self, select, alias, renamed)
            return plan.add(leaf), [ScopeColumn(alias, v, internal, t) for v, internal, t in columns]
        if renamed:
            if len(renamed) > len(names):
                raise self.error(f"{alias} has {len(names)} columns but {len(renamed)} names were given", rel)
            names = [(new, internal) for new, (_, internal) in zip(renamed, names)] + names[len(renamed):]
        outputs = tuple((f"{alias}.{n}", exp.column(internal, quoted=True)) for n, internal in names)
        proj = plan.add(L.Project(outputs))
        plan.graph.add_edge(node, proj, slot=0)
        scope = [ScopeColumn(alias, n, f"{alias}.{n}", None) for n, _ in names]
        return proj, scope

    def bind_cte(self, plan: Plan, table: exp.Table) -> tuple[int, list[ScopeColumn]]:
        cte, visible = self.ctes[table.name.lower()]
        outer, self.ctes = self.ctes, visible  # the CTE's body sees the CTEs defined before it
        try:
            node, scope = self.bind_subquery(plan, cte.this, table.name, cte)
        finally:
            self.ctes = outer
        alias = table.alias
        if not alias:
            return node, scope
        outputs = tuple((f"{alias}.{c.name}", exp.column(c.internal, quoted=True)) for c in scope)
        proj = plan.add(L.Project(outputs))
        plan.graph.add_edge(node, proj, slot=0)
        return proj, [ScopeColumn(alias, c.name, f"{alias}.{c.name}", c.type) for c in scope]

    def define_ctes(self, with_: exp.With) -> None:
        """Make the WITH list's CTEs visible to the rest of the query, each one to those after it."""
        if with_.args.get("recursive"):
            raise self.error("WITH RECURSIVE is not supported", with_)
        for cte in with_.expressions:
            name = cte.alias_or_name.lower()
            if not isinstance(cte.this, (exp.Select, exp.SetOperation)):
                raise self.error(f"the CTE {cte.alias_or_name} must be a SELECT, got {cte.this.key.upper()}", cte)
            if cte.args.get("materialized") is not None:
                raise self.error("MATERIALIZED / NOT MATERIALIZED is not supported on a CTE", cte)
            self.ctes = {**self.ctes, name: (cte, self.ctes)}

    def bind_join(self, plan, join: exp.Join, left, left_scope, right, right_scope):
        using = list(join.args.get("using") or [])
        if (join.method or "").upper() == "NATURAL":  # USING the column names the two sides share
            right_names = {c.name.lower() for c in right_scope if not c.hidden}
            using = [exp.to_identifier(c.name) for c in left_scope if not c.hidden and c.name.lower() in right_names]
            if not using:
                raise self.error("NATURAL JOIN: the two sides have no column name in common (use CROSS JOIN "
                                 "for a cross product)", join)
        scope = left_scope + right_scope
        kind = (join.side or "inner").lower() if join.args.get("on") or using else "cross"
        if join.kind and join.kind.upper() == "CROSS":
            kind = "cross"
        left_names = {c.internal for c in left_scope}
        left_keys, right_keys, residual = [], [], []
        on = join.args.get("on")
        pairs = self.using_columns(using, left_scope, right_scope)
        for lc, rc in pairs:
            left_keys.append(exp.column(lc.internal, quoted=True))
            right_keys.append(exp.column(rc.internal, quoted=True))
        if on is not None:
            for conj in on.flatten() if isinstance(on, exp.And) else [on]:
                bound = self.resolve(conj, scope)
                if isinstance(bound, exp.EQ):
                    a, b = bound.this, bound.expression
                    ra, rb = L.referenced_columns(a), L.referenced_columns(b)
                    if ra and rb and ra <= left_names and not (rb & left_names):
                        left_keys.append(a), right_keys.append(b)
                        continue
                    if ra and rb and rb <= left_names and not (ra & left_names):
                        left_keys.append(b), right_keys.append(a)
                        continue
                residual.append(bound)
        node = plan.add(L.Join(kind, tuple(left_keys), tuple(right_keys),
                               exp.and_(*residual) if residual else None))
        plan.graph.add_edge(left, node, slot=0)
        plan.graph.add_edge(right, node, slot=1)
        return self.merge_using(plan, node, kind, pairs, left_scope, right_scope) if pairs else (node, scope)

    def using_columns(self, names: list[exp.Identifier], left_scope, right_scope) -> list[tuple[ScopeColumn, ...]]:
        """USING (c, ...): each name's column on the left and on the right."""
        return [tuple(self.lookup(exp.Column(this=name.copy()), side) for side in (left_scope, right_scope))
                for name in names]

    @staticmethod
    def merge_using(plan, node, kind, pairs, left_scope, right_scope):
        """After JOIN ... USING (c), an unqualified c names one column (as in DuckDB and PostgreSQL): the left's,
        or for a RIGHT / FULL join COALESCE(left.c, right.c); the copies stay reachable as t.c and u.c."""
        rights = {rc.internal for _, rc in pairs}
        right_scope = [replace(c, hidden=True) if c.internal in rights else c for c in right_scope]
        if kind in ("inner", "left"):
            return node, left_scope + right_scope
        merged = {lc.internal: ScopeColumn("", lc.name, f"__using_{node}_{i}", lc.type)
                  for i, (lc, _) in enumerate(pairs)}
        keep = tuple((c, exp.column(c, quoted=True)) for c in plan.columns(node))
        coalesced = tuple((merged[lc.internal].internal, exp.func("coalesce", exp.column(lc.internal, quoted=True),
                                                                  exp.column(rc.internal, quoted=True)))
                          for lc, rc in pairs)
        project = plan.add(L.Project(keep + coalesced))
        plan.graph.add_edge(node, project, slot=0)
        scope = []
        for c in left_scope:
            scope += [merged[c.internal], replace(c, hidden=True)] if c.internal in merged else [c]
        return project, scope + right_scope

    def bind_semi_join(self, plan: Plan, join: exp.Join, left: int, scope: list[ScopeColumn]) -> int:
        """SEMI / ANTI JOIN keeps the left rows with (without) a match, each once, and none of the right's
        columns: a filter [NOT] EXISTS (SELECT 1 FROM right WHERE condition) over the left."""
        kind = join.kind.upper()
        before = set(plan.graph.nodes)
        _, right_scope = self.bind_relation(plan, join.this)  # its columns only: the filter's subquery reads it
        added = set(plan.graph.nodes) - before
        calls = [n for n in added if isinstance(plan.op(n), (L.Generate, L.Classify))]
        plan.graph.remove_nodes_from(added)
        if calls:
            instead = "JOIN it" if kind == "SEMI" else "LEFT JOIN it and keep the rows without a match"
            raise self.error(f"{kind} JOIN over a query with model calls is not supported: {instead}", join.this)
        right = join.this.copy()
        qualifier = right_scope[0].alias if right_scope else right.alias_or_name
        if not right.alias:
            right.set("alias", exp.TableAlias(this=exp.to_identifier(qualifier)))

        def ref(c: ScopeColumn) -> exp.Expr:
            """In the subquery a left column is the plan's column (a correlated reference), a right one qualified."""
            return exp.column(c.name, table=qualifier) if any(c is r for r in right_scope) \
                else exp.column(c.internal, quoted=True)

        def swap(n: exp.Expr) -> exp.Expr:
            if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star) and n.find_ancestor(exp.Select) is None:
                return ref(self.lookup(n, scope + right_scope))
            return n

        if join.args.get("using"):
            pairs = self.using_columns(join.args["using"], scope, right_scope)
            condition = exp.and_(*(ref(lc).eq(ref(rc)) for lc, rc in pairs))
        elif join.args.get("on") is not None:
            condition = join.args["on"].transform(swap)
        else:
            raise self.error(f"{kind} JOIN needs ON or USING", join)
        exists = exp.Exists(this=exp.select("1").from_(right).where(condition))
        node = plan.add(L.Filter((self.resolve(exists if kind == "SEMI" else exp.not_(exists), scope),)))
        plan.graph.add_edge(left, node, slot=0)
        return node

    # -- names --------------------------------------------------------------------------
    def resolve(self, e: exp.Expr, scope: list[ScopeColumn]) -> exp.Expr:
        """A copy of `e` with every column replaced by the plan's internal column (in its subqueries: the
        correlated references)."""
        def swap(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star) \
                    and node.find_ancestor(exp.Select) is None:
                return self.column(node, scope)
            return node
        return bind_expression_subqueries(self, e.copy(), scope, self.tables).transform(swap, copy=False)

    def column(self, col: exp.Column, scope: list[ScopeColumn]) -> exp.Expr:
        return exp.column(self.lookup(col, scope).internal, quoted=True)

    def lookup(self, col: exp.Column, scope: list[ScopeColumn]) -> ScopeColumn:
        name, table = col.name, col.table
        matches = [c for c in scope if c.name.lower() == name.lower()
                   and (c.alias.lower() == table.lower() if table else not c.hidden)]
        if not matches:
            # a model call's output column is the binder's, not a name the user can write
            known = ", ".join(sorted({c.name for c in scope if not c.internal.startswith("__llm_")})) or "(none)"
            raise self.error(f"unknown column {col.sql()!r} (available: {known})", col)
        if len(matches) > 1:
            raise self.error(f"column {name!r} is ambiguous: qualify it with one of "
                             f"{', '.join(c.alias for c in matches)}", col)
        return matches[0]

    def type_of(self, e: exp.Expr, scope: list[ScopeColumn]) -> pa.DataType | None:
        """The Arrow type of a bound expression where it is plain to see; None when unsure."""
        if isinstance(e, exp.Column):
            return next((c.type for c in scope if c.internal == e.name), None)
        if isinstance(e, exp.Literal):
            return pa.string() if e.is_string else pa.float64() if "." in e.this else pa.int64()
        if isinstance(e, (exp.DPipe, exp.Concat, exp.Lower, exp.Upper, exp.Trim, exp.Substring)):
            return pa.string()
        if isinstance(e, exp.Cast):
            return pa.string() if e.to.is_type(*exp.DataType.TEXT_TYPES) else None
        if isinstance(e, (exp.Boolean, exp.Predicate, exp.Not, exp.And, exp.Or)):
            return pa.bool_()
        if isinstance(e, exp.Paren):
            return self.type_of(e.this, scope)
        return None

    # -- model calls --------------------------------------------------------------------
    def bind_llm(self, call: LLMCall, scope: list[ScopeColumn], guard: exp.Expr | None = None,
                 after=None) -> L.Generate | L.Classify:
        """guard: the condition under which the call's value is used (its CASE branch); elsewhere its prompt is
        NULL, and a NULL prompt costs no model call. after: binds the arguments of a call that runs once per
        group, over the Aggregate's output (None: once per row, over `scope`)."""
        model_arg = call.args["model"]
        if not (isinstance(model_arg, exp.Literal) and model_arg.is_string):
            raise self.error(f"{call.sql_name().lower()}(): the model must be a name in quotes, like 'smollm2'", model_arg)
        try:
            entry = self.catalog.model(model_arg.this)
        except ModelError as e:
            raise self.error(str(e), model_arg) from None
        output = f"__llm_{self.llm_count}"
        self.llm_count += 1
        text_key = "prompt" if isinstance(call, LLMGenerate) else "text"
        arg = call.args[text_key]
        kind = self.type_of(self.resolve(arg, scope), scope)
        if kind is not None and not _is_text(kind):
            raise self.error(f"{call.sql_name().lower()}(): the {text_key} must be text, got {kind} "
                             f"({arg.sql()}); cast it with CAST(... AS VARCHAR)", arg)
        bind = after or (lambda e: self.resolve(e, scope))
        text = bind(arg)
        if guard is not None:
            text = exp.Case(ifs=[exp.If(this=bind(guard), true=text)])
        args = CallArguments(call, self.error, self.constant)
        if isinstance(call, LLMGenerate):
            n = args.option("n", 1, int)
            if not 1 <= n <= 16:
                raise self.error(f"generate(): n must be in [1, 16], got {n}", call.option("n"))
            return L.Generate(entry.name, text, args.sampling(), bool(args.option("chat", True, bool)), output,
                              priority=args.option("priority", 0, int), n=n)
        labels = call.args["labels"]
        if not isinstance(labels, exp.Array) or not labels.expressions or not all(
                isinstance(x, exp.Literal) and x.is_string for x in labels.expressions):
            raise self.error("classify(): labels must be a list of strings, like ['positive', 'negative']", labels)
        names = tuple(x.this for x in labels.expressions)
        if len(names) < 2 or len(set(names)) != len(names):
            raise self.error("classify(): give at least two distinct labels", labels)
        default = f"Classify the text. Answer with exactly one of: {', '.join(names)}."
        return L.Classify(entry.name, text, names, args.option("instruction", default, str), output,
                          priority=args.option("priority", 0, int))

    def extract_llm_calls(self, exprs: list[exp.Expr], scope, found: dict[str, tuple[L.Generate | L.Classify, exp.Expr]],
                          after=None) -> list[L.Generate | L.Classify]:
        """Register every distinct model call in `exprs` (by its SQL text) in `found`; returns the new ones. A call
        used only inside CASE / IF branches runs only for the rows that take one of them. after: binds an
        expression over an Aggregate's output, for the calls that run once per group."""
        occurrences: dict[str, tuple[LLMCall, list[exp.Expr | None]]] = {}
        for e in exprs:
            for call in e.find_all(LLMCall):
                if self.in_subquery(call, e):
                    continue  # its subquery's binding refuses it, by name
                inner = [c for c in call.find_all(LLMCall) if c is not call]
                if inner:
                    raise self.error("a model call inside another model call's arguments is not supported", inner[0])
                if after is None and any(call.find_all(exp.AggFunc)):
                    raise self.error("a model call over an aggregate is not supported", call)
                occurrences.setdefault(call.sql(), (call, []))[1].append(branch_guard(call, e))
        new = []
        for key, (call, guards) in occurrences.items():
            if key not in found:
                guard = None if any(g is None for g in guards) else exp.or_(*guards) if len(guards) > 1 else guards[0]
                found[key] = (self.bind_llm(call, scope, guard, after), call)
                new.append(found[key][0])
        return new

    def aggregates(self, e: exp.Expr) -> list[exp.AggFunc | exp.Filter]:
        """The aggregate calls of this query level in `e` (not its subqueries'), each with its FILTER clause."""
        return [a.parent if isinstance(a.parent, exp.Filter) else a for a in e.find_all(exp.AggFunc)
                if not self.in_subquery(a, e) and not self.in_window(a, e)]

    @staticmethod
    def in_window(node: exp.Expr, root: exp.Expr) -> bool:
        while node is not None and node is not root:
            node = node.parent
            if isinstance(node, exp.Window):
                return True
        return False

    @staticmethod
    def in_subquery(node: exp.Expr, root: exp.Expr) -> bool:
        while node is not None and node is not root:
            node = node.parent
            if isinstance(node, exp.Select) and node is not root:
                return True
        return False

    @staticmethod
    def replace_llm_calls(e: exp.Expr, found) -> exp.Expr:
        def swap(node):
            if isinstance(node, LLMCall) and node.sql() in found:
                return exp.column(found[node.sql()][0].output, quoted=True)
            return node
        return e.copy().transform(swap, copy=False)

    # -- SELECT -------------------------------------------------------------------------
    def bind_select(self, select: exp.Expr) -> Plan:
        plan = Plan(nx.DiGraph(), -1, ())
        if next(iter(select.find_all(LLMCall)), None) is None:  # no model call: the relational engine's alone
            node, plan.output_names, plan.tables = bind_relational(self, select)
            plan.root = plan.add(node)
            return plan
        root, names = self.bind_select_into(plan, select)
        plan.root = root  # always the SELECT list's Project: rules move what is below it, never it
        plan.output_names = tuple(n for n, _ in names)
        plan.tables = tuple(self.tables.tables.items())
        return plan

    def bind_select_into(self, plan: Plan, select: exp.Expr) -> tuple[int, list[tuple[str, str]]]:
        """Adds the query's nodes; returns its top node and (output name, internal column) pairs."""
        if isinstance(select, exp.SetOperation):
            return self.bind_set_operation(plan, select)
        if not isinstance(select, exp.Select):
            raise self.error(f"a model call inside {select.key.upper()} is not supported yet: compute it in a "
                             f"CTE or a subquery of one SELECT", select)
        self.check_representable(select)
        outer_ctes = self.ctes
        if select.args.get("with_"):
            self.define_ctes(select.args["with_"])
        try:
            return self.bind_select_body(plan, select)
        finally:
            self.ctes = outer_ctes  # a query's CTEs are not visible outside it

    def bind_set_operation(self, plan: Plan, setop: exp.SetOperation) -> tuple[int, list[tuple[str, str]]]:
        """UNION / INTERSECT / EXCEPT [ALL]: both sides bound as queries (their columns are __out_0, __out_1, ...
        alike), combined by position; ORDER BY and LIMIT of the whole apply above."""
        kind = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}[type(setop)]
        outer_ctes = self.ctes
        if setop.args.get("with_"):
            self.define_ctes(setop.args["with_"])
        try:
            left, names = self.bind_select_into(plan, setop.this)
            right, right_names = self.bind_select_into(plan, setop.expression)
        finally:
            self.ctes = outer_ctes
        if setop.args.get("by_name"):
            (left, right), names = self.align_by_name(plan, (left, right), (names, right_names))
        elif len(names) != len(right_names):
            raise self.error(f"each side of {kind} must have the same number of columns "
                             f"({len(names)} and {len(right_names)})", setop)
        node = plan.add(L.SetOp(kind, bool(setop.args.get("distinct"))))
        plan.graph.add_edge(left, node, slot=0)
        plan.graph.add_edge(right, node, slot=1)

        def then(op) -> None:
            nonlocal node
            new = plan.add(op)
            plan.graph.add_edge(node, new, slot=0)
            node = new
        order = setop.args.get("order")
        if order:
            lowered = [n.lower() for n, _ in names]
            keys = []
            for o in order.expressions:
                target = o.this
                if isinstance(target, exp.Literal) and not target.is_string and 0 < int(target.this) <= len(names):
                    index = int(target.this) - 1
                elif isinstance(target, exp.Column) and not target.table and target.name.lower() in lowered:
                    index = lowered.index(target.name.lower())
                else:
                    raise self.error(f"ORDER BY of a {kind} must name an output column or its position", o)
                keys.append(L.SortKey(exp.column(names[index][1], quoted=True), bool(o.args.get("desc")),
                                      bool(o.args.get("nulls_first"))))
            then(L.Sort(tuple(keys)))
        self.bind_limit(then, setop)
        return node, names

    @staticmethod
    def align_by_name(plan: Plan, nodes: tuple[int, int], sides: tuple[list, list]) -> tuple[tuple, list]:
        """UNION BY NAME: each side projected to the left's columns then the right's others, by name (case
        insensitive); a column a side lacks is NULL there, as in DuckDB."""
        names = list(dict.fromkeys(n.lower() for side in sides for n, _ in side))
        shown = {}
        for side in reversed(sides):  # the left's spelling wins
            shown.update({n.lower(): n for n, _ in side})
        aligned = []
        for node, side in zip(nodes, sides):
            internal = {n.lower(): i for n, i in side}
            outputs = tuple((f"__out_{k}", exp.column(internal[n], quoted=True) if n in internal else exp.null())
                            for k, n in enumerate(names))
            aligned.append(plan.add(L.Project(outputs)))
            plan.graph.add_edge(node, aligned[-1], slot=0)
        return tuple(aligned), [(shown[n], f"__out_{k}") for k, n in enumerate(names)]

    def check_representable(self, select: exp.Select) -> None:
        """Raise Unsupported for what the logical plan has no node for (rather than binding it wrongly)."""
        checks = [("a WINDOW clause", select.args.get("windows")), ("QUALIFY", select.args.get("qualify")),
                  ("DISTINCT ON", (select.args.get("distinct") or exp.Distinct()).args.get("on"))]
        group = select.args.get("group")
        if group is not None:
            checks.append(("GROUP BY ALL", group if group.args.get("all") else None))
            checks.append(("GROUP BY ROLLUP / CUBE / GROUPING SETS",
                           next(iter(group.find_all(exp.Rollup, exp.Cube, exp.GroupingSets)), None) or next(
                               (group.args.get(k) for k in ("rollup", "cube", "grouping_sets") if group.args.get(k)),
                               None)))
        for item in select.expressions:
            star = item if isinstance(item, exp.Star) else item.this if isinstance(item, exp.Column) else None
            if isinstance(star, exp.Star) and any(star.args.get(k) for k in ("except_", "except", "replace", "rename")):
                checks.append(("SELECT * EXCLUDE / REPLACE", item))
        from_ = select.args.get("from_")
        for rel in ([from_.this] if from_ is not None else []) + [j.this for j in select.args.get("joins") or []]:
            if not isinstance(rel, (exp.Table, exp.Subquery, exp.Values)) or rel.args.get("pivots"):
                checks.append((f"{rel.key.upper()} in FROM", rel))
            checks.append(("USING SAMPLE / TABLESAMPLE", rel.args.get("sample")))
        checks.append(("USING SAMPLE / TABLESAMPLE", select.args.get("sample")))
        for join in select.args.get("joins") or []:
            method, side, kind = (join.method or "").upper(), (join.side or "").upper(), (join.kind or "").upper()
            if method in ("ASOF", "POSITIONAL") or kind in ("SEMI", "ANTI") and (method or side):
                checks.append((" ".join(w for w in (method, side, kind, "JOIN") if w), join))
        for what, node in checks:
            if node:
                raise self.unsupported(what, node if isinstance(node, exp.Expr) else select)

    def bind_select_body(self, plan: Plan, select: exp.Select) -> tuple[int, list[tuple[str, str]]]:
        node, scope = self.bind_from(plan, select)

        def then(op) -> int:
            nonlocal node
            new = plan.add(op)
            plan.graph.add_edge(node, new, slot=0)
            node = new
            return new

        items = self.expand_star(select.expressions, scope)
        names = self.output_names(items)
        aliases = {n.lower(): self.unalias(e) for n, e in zip(names, items)}  # GROUP BY may name them
        where = select.args.get("where")
        group = select.args.get("group")
        having = select.args.get("having")
        order = select.args.get("order")

        raw_select = [self.unalias(e) for e in items]
        raw_where = [where.this] if where else []
        raw_group = [self.group_expr(g, aliases) for g in (group.expressions if group else [])]
        raw_having = [having.this] if having else []
        raw_order = [self.order_expr(o.this, names, raw_select, scope) for o in (order.expressions if order else [])]
        has_aggs = any(self.aggregates(e) for e in raw_select + raw_having) or group is not None
        found: dict[str, tuple] = {}
        # with GROUP BY, a call outside the aggregates runs once per group, after them (bind_aggregate)
        per_row = raw_where + raw_group + [a for e in raw_select + raw_having + raw_order for a in self.aggregates(e)] \
            if has_aggs else raw_select + raw_where + raw_group + raw_having + raw_order
        for op in self.extract_llm_calls(per_row, scope, found):
            then(op)

        def bind_expr(e: exp.Expr) -> exp.Expr:
            llm_scope = scope + [ScopeColumn("", op.output, op.output, pa.string()) for op, _ in found.values()]
            return self.resolve(self.replace_llm_calls(e, found), llm_scope)

        if where is not None:
            if self.aggregates(where.this):
                raise self.error("aggregates are not allowed in WHERE (use HAVING)", where)
            then(L.Filter(tuple(self.conjuncts(bind_expr(where.this)))))

        if has_aggs:
            select_exprs, order_exprs, having_expr = self.bind_aggregate(
                then, scope, found, raw_select, raw_group, raw_having, raw_order, bind_expr)
        else:
            select_exprs = [bind_expr(e) for e in raw_select]
            order_exprs = [bind_expr(e) for e in raw_order]
            having_expr = None
        if having_expr is not None:
            then(L.Filter(tuple(self.conjuncts(having_expr))))
        select_exprs, order_exprs = self.bind_windows(plan, node, then, select_exprs, order_exprs)

        distinct = select.args.get("distinct") is not None
        internal = [f"__out_{i}" for i in range(len(names))]
        limited = order or select.args.get("limit") or select.args.get("offset")
        unnest = next((e for e in raw_select if L.Project.makes_rows(e)), None)
        if unnest is not None and limited and not distinct:  # the LIMIT would count rows before unnest() makes more
            raise self.unsupported("unnest() in the select list with ORDER BY / LIMIT / OFFSET", unnest)
        if order and not distinct:
            then(L.Sort(tuple(L.SortKey(e, bool(o.args.get("desc")), bool(o.args.get("nulls_first")))
                              for e, o in zip(order_exprs, order.expressions))))
            self.bind_limit(then, select)
            then(L.Project(tuple(zip(internal, select_exprs))))
        elif distinct:
            then(L.Project(tuple(zip(internal, select_exprs))))
            then(L.Aggregate(tuple(internal), ()))
            if order:
                by_name = {n.lower(): i for i, n in enumerate(names)}
                keys = []
                for o in order.expressions:
                    target = o.this
                    idx = by_name.get(target.name.lower()) if isinstance(target, exp.Column) else None
                    if idx is None:
                        raise self.error("ORDER BY of a SELECT DISTINCT must name a selected column", o)
                    keys.append(L.SortKey(exp.column(internal[idx], quoted=True), bool(o.args.get("desc"))))
                then(L.Sort(tuple(keys)))
            self.bind_limit(then, select)
        else:
            self.bind_limit(then, select)
            then(L.Project(tuple(zip(internal, select_exprs))))
        return node, list(zip(names, internal))

    @staticmethod
    def bind_windows(plan: Plan, node: int, then, select_exprs, order_exprs):
        """Window functions computed by a Project of their own, over the rows after WHERE / GROUP BY / HAVING
        and before ORDER BY / LIMIT (no filter or LIMIT passes below it: Project.has_window)."""
        windows: dict[str, tuple[str, exp.Expr]] = {}

        def lift(e: exp.Expr) -> exp.Expr:
            def swap(n):
                if isinstance(n, exp.Window) and n.find_ancestor(exp.Select) is None:
                    windows.setdefault(n.sql(), (f"__win_{len(windows)}", n.copy()))
                    return exp.column(windows[n.sql()][0], quoted=True)
                return n
            return e.transform(swap)
        select_exprs, order_exprs = [lift(e) for e in select_exprs], [lift(e) for e in order_exprs]
        if windows:
            keep = tuple((c, exp.column(c, quoted=True)) for c in plan.columns(node))
            then(L.Project(keep + tuple(windows.values())))
        return select_exprs, order_exprs

    def bind_aggregate(self, then, scope, found, raw_select, raw_group, raw_having, raw_order, bind_expr):
        """Pre-project group keys and aggregate inputs, aggregate, run the model calls over the groups, and
        rewrite what reads the result."""
        groups = [bind_expr(g) for g in raw_group]
        group_sql = {g.sql(): f"__g_{i}" for i, g in enumerate(groups)}
        calls: dict[str, L.AggregateCall] = {}
        for e in raw_select + raw_having + raw_order:
            for agg in self.aggregates(e):
                if agg.sql() not in calls:
                    calls[agg.sql()] = self.aggregate_call(agg, len(calls), bind_expr)
        pre = [(c, g) for g, c in zip(groups, group_sql.values())]
        inputs = sorted(set().union(*(a.inputs for a in calls.values())) - set(group_sql.values())) if calls else []
        pre += [(c, exp.column(c, quoted=True)) for c in inputs]  # what the aggregates read, passed through
        then(L.Project(tuple(pre) or (("__row", exp.Literal.number(1)),)))
        then(L.Aggregate(tuple(group_sql.values()), tuple(calls.values())))
        per_group: set[str] = set()  # the model calls run after the Aggregate

        def after(e: exp.Expr) -> exp.Expr:
            markers = {}

            def to_marker(node):  # outermost first: a model call over an aggregate, an aggregate over a call
                if isinstance(node, LLMCall) and node.sql() in found:
                    return exp.column(found[node.sql()][0].output, quoted=True)
                if isinstance(node, (exp.AggFunc, exp.Filter)) and node.sql() in calls \
                        and node.find_ancestor(exp.Select) is None:
                    marker = exp.Placeholder(this=f"agg{len(markers)}")
                    markers[marker.sql()] = calls[node.sql()].output
                    return marker
                return node
            bound = bind_expr(e.copy().transform(to_marker, copy=False))

            def to_columns(node):
                if node.sql() in group_sql:
                    return exp.column(group_sql[node.sql()], quoted=True)
                if isinstance(node, exp.Placeholder) and node.sql() in markers:
                    return exp.column(markers[node.sql()], quoted=True)
                return node
            result = bound.transform(to_columns, copy=False)
            for col in result.find_all(exp.Column):
                if L.is_plan_column(col) and not col.name.startswith(("__g_", "__agg_")) and col.name not in per_group:
                    call = next((c for op, c in found.values() if op.output == col.name), None)
                    what = f"column {col.name.split('.')[-1]!r}" if call is None else \
                        call.sql_name().lower() + call.sql(dialect=Sqlm)[len(call.sql_name()):]
                    where = e if call is None else next((c for c in e.find_all(LLMCall) if c.sql() == call.sql()), e)
                    raise self.error(f"{what} must appear in GROUP BY or inside an aggregate", where)
            return result

        for op in self.extract_llm_calls(raw_select + raw_having + raw_order, scope, found, after):
            per_group.add(op.output)
            then(op)
        having = after(raw_having[0]) if raw_having else None
        return [after(e) for e in raw_select], [after(e) for e in raw_order], having

    def aggregate_call(self, agg: exp.AggFunc | exp.Filter, index: int, bind_expr) -> L.AggregateCall:
        """Any aggregate the relational engine knows (count, sum, avg, string_agg, quantile, ... with DISTINCT,
        ORDER BY or FILTER), over the plan's columns."""
        args = [*agg.this.iter_expressions(), agg.expression] if isinstance(agg, exp.Filter) else agg.iter_expressions()
        if any(self.aggregates(a) for a in args):
            raise self.error("an aggregate inside another aggregate is not allowed", agg)
        return L.AggregateCall(bind_expr(agg), f"__agg_{index}")

    def bind_limit(self, then, select: exp.Select) -> None:
        limit, offset = select.args.get("limit"), select.args.get("offset")
        if limit is None and offset is None:
            return
        options = limit.args.get("limit_options") if limit is not None else None
        for option, what in (("percent", "LIMIT / FETCH ... PERCENT"), ("with_ties", "WITH TIES")):
            if options is not None and options.args.get(option):
                raise self.unsupported(what, limit)
        if isinstance(limit, exp.Fetch):  # FETCH FIRST n ROWS ONLY; no n is one row
            count = self.constant(limit.args["count"]) if limit.args.get("count") is not None else 1
        else:
            count = self.constant(limit.expression) if limit is not None else None
        skip = self.constant(offset.expression) if offset is not None else 0
        for value, node in ((count, limit), (skip, offset)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise self.error("LIMIT and OFFSET take a non-negative integer", node)
        then(L.Limit(count, skip))

    # -- helpers ------------------------------------------------------------------------
    def expand_star(self, items: list[exp.Expr], scope: list[ScopeColumn]) -> list[exp.Expr]:
        out = []
        for e in items:
            star_table = e.table if isinstance(e, exp.Column) and isinstance(e.this, exp.Star) else None
            if isinstance(e, exp.Star) or star_table:
                cols = [c for c in scope if c.alias.lower() == star_table.lower()] if star_table else \
                    [c for c in scope if not c.hidden]
                if star_table and not cols:
                    raise self.error(f"unknown table {star_table!r} in {e.sql()}", e)
                out += [exp.column(c.name, table=c.alias or None) for c in cols]
            else:
                out.append(e)
        return out

    @staticmethod
    def unalias(e: exp.Expr) -> exp.Expr:
        return e.this if isinstance(e, exp.Alias) else e

    @staticmethod
    def output_names(items: list[exp.Expr]) -> list[str]:
        names = []
        for e in items:
            if isinstance(e, exp.Alias):
                names.append(e.alias)
            elif isinstance(e, exp.Column):
                names.append(e.name)
            else:
                names.append(e.sql(dialect=Sqlm))
        return names

    def group_expr(self, g: exp.Expr, aliases: dict[str, exp.Expr]) -> exp.Expr:
        if isinstance(g, exp.Literal) and not g.is_string:  # GROUP BY 1
            return list(aliases.values())[int(g.this) - 1]
        if isinstance(g, exp.Column) and not g.table and g.name.lower() in aliases:
            target = aliases[g.name.lower()]
            if not (isinstance(target, exp.Column) and target.name.lower() == g.name.lower()):
                return target
        return g

    def order_expr(self, o: exp.Expr, names: list[str], raw_select: list[exp.Expr],
                   scope: list[ScopeColumn]) -> exp.Expr:
        """ORDER BY 2 and ORDER BY <output alias> mean the select item; anything else is an expression, in which
        a name no input column has may be an output alias (ORDER BY g COLLATE nocase)."""
        if isinstance(o, exp.Literal) and not o.is_string:
            index = int(o.this) - 1
            if not 0 <= index < len(raw_select):
                raise self.error(f"ORDER BY position {o.this} is not in the select list", o)
            return raw_select[index]
        lowered = [n.lower() for n in names]
        if isinstance(o, exp.Column) and not o.table:
            if o.name.lower() in lowered:
                return raw_select[lowered.index(o.name.lower())]
            return o
        inputs = {c.name.lower() for c in scope if not c.hidden}

        def alias(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Column) and not node.table and node.find_ancestor(exp.Select) is None \
                    and node.name.lower() in lowered and node.name.lower() not in inputs:
                return raw_select[lowered.index(node.name.lower())].copy()
            return node
        return o.transform(alias)

    @staticmethod
    def conjuncts(e: exp.Expr) -> list[exp.Expr]:
        return list(e.flatten()) if isinstance(e, exp.And) else [e]


def _taken(condition: exp.Expr) -> exp.Expr:
    """The branch is taken: the condition is true (NULL is not)."""
    return exp.Coalesce(this=condition.copy(), expressions=[exp.false()])


def branch_guard(call: exp.Expr, root: exp.Expr) -> exp.Expr | None:
    """The condition under which `call`'s value is used, from the CASE WHEN / IF branches around it in `root`;
    None when it is always used (or a branch condition itself calls a model)."""
    conditions: list[exp.Expr] = []
    node = call
    while node is not root and node.parent is not None:
        parent = node.parent
        if isinstance(parent, exp.If) and node is parent.args.get("true"):
            case = parent.parent if isinstance(parent.parent, exp.Case) else None
            if case is None:  # IF(c, a, b)
                conditions.append(_taken(parent.this))
            else:
                ifs = case.args["ifs"]
                conditions.append(_taken(_when(case, parent)))
                conditions += [exp.not_(_taken(_when(case, i))) for i in ifs[:ifs.index(parent)]]
        elif isinstance(parent, exp.If) and node is parent.args.get("false"):
            conditions.append(exp.not_(_taken(parent.this)))
        elif isinstance(parent, exp.Case) and node is parent.args.get("default"):
            conditions += [exp.not_(_taken(_when(parent, i))) for i in parent.args["ifs"]]
        node = parent
    if not conditions or any(c.find(LLMCall) for c in conditions):
        return None
    return exp.and_(*conditions)


def _when(case: exp.Case, branch: exp.If) -> exp.Expr:
    """A branch's condition: `WHEN c` of a searched CASE, `x = v` of `CASE x WHEN v`."""
    return branch.this if case.this is None else exp.EQ(this=case.this.copy(), expression=branch.this.copy())


def bind(select: exp.Expr, catalog: CatalogView, sql: str) -> Plan:
    return Binder(catalog, sql).bind_select(select)
