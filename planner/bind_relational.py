"""The parts of a query without model calls, handed to the relational engine (DuckDB) as SQL.

A statement with no model call is one `Relational` node: DuckDB binds, plans and runs
it whole, so every SQL feature it has (joins of every kind, windows, set operations,
correlated subqueries, CTEs, casts, hundreds of functions) works with its semantics.
A subquery inside an expression of a model-calling query (`IN (SELECT ...)`, EXISTS,
a scalar subquery) stays SQL too: its correlated references to the outer query become
the plan's internal columns, and the tables it reads are registered by name.

sqlm resolves every table itself (the catalog, under the connection's policy); the
relational engine can read nothing else.
"""
from __future__ import annotations

import re

import pyarrow as pa
from sqlglot import exp

from catalog.sources import SourceError, TableSource, kind_of
from operators import logical as L
from planner.errors import SqlError
from planner.sql.nodes import LLMCall
from runtime.relational import RelationalError, RelationalSession

FILE_FUNCTIONS = {"read_parquet": "parquet", "read_csv": "csv", "read_csv_auto": "csv", "read_json": "json",
                  "read_json_auto": "json", "parquet_scan": "parquet"}


def cte_names(tree: exp.Expr) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def line_col(sql: str, offset: int) -> tuple[int, int]:
    line_start = sql.rfind("\n", 0, offset) + 1
    return sql.count("\n", 0, offset) + 1, offset - line_start + 1


def engine_error(e: RelationalError, sql: str, sent: str) -> SqlError:
    """DuckDB's error on the SQL sqlm sent, placed in the user's text: at the word it names, which the
    user wrote (the SQL sent is sqlm's rendering of it, so its offsets are not the user's)."""
    kind = "Binder error" if e.kind in ("Binder", "Catalog") else f"{e.kind} error"
    word = None
    if e.position is not None and e.position < len(sent):
        m = re.match(r'"?([A-Za-z_][\w.]*)', sent[e.position:])
        word = m.group(1).split(".")[-1] if m else None
    found = re.search(rf"\b{re.escape(word)}\b", sql, re.IGNORECASE) if word else None
    line, col = line_col(sql, found.start()) if found else (None, None)
    return SqlError(kind, e.message.replace("\n", " "), line=line, col=col, sql=sql)


class TableResolver:
    """Every table a piece of SQL reads, resolved in the catalog and registered under one name each.

    binder: planner.bind.Binder (for the catalog, the errors and the file policy)."""

    def __init__(self, binder) -> None:
        self.binder = binder
        self.tables: dict[str, TableSource] = {}

    def resolve(self, tree: exp.Expr, defined: set[str] = frozenset()) -> exp.Expr:
        """A copy of `tree` whose file reads are registered names; catalog names checked. defined: CTE
        names visible to it (lower case)."""
        tree = tree.copy()
        local = set(defined) | cte_names(tree)
        for table in list(tree.find_all(exp.Table)):
            fn = table.this
            if isinstance(fn, (exp.Anonymous, exp.Func)) and not isinstance(fn, exp.Identifier):
                self._replace_file(table, self.binder.function_source(fn),
                                   (fn.name if isinstance(fn, exp.Anonymous) else fn.sql_name()).lower())
                continue
            name = table.name
            if table.args.get("db") or not name:
                raise self.binder.error(f"unknown table {table.sql()!r}", table)
            if isinstance(table.this, exp.Identifier) and table.this.quoted and kind_of(name):
                self._replace_file(table, self.binder.named_source(table), re.sub(r"\W", "_", name.rsplit("/", 1)[-1]))
                continue
            if name.lower() in local:
                continue
            self.tables[name.lower()] = self.binder.named_source(table)
        return tree

    def _replace_file(self, table: exp.Table, source: TableSource, default_alias: str) -> None:
        name = f"__file_{len(self.tables)}"
        self.tables[name] = source
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(default_alias))
        table.replace(exp.Table(this=exp.to_identifier(name), alias=alias))

    def session(self) -> RelationalSession:
        """A DuckDB session with every resolved table registered (a source that cannot be opened, like a
        statistics-only test table, as an empty table of its schema: planning needs the schema only)."""
        db = RelationalSession(threads=1, sources=self.tables.values())
        for name, source in self.tables.items():
            try:
                db.register(name, source)
            except (OSError, ValueError, SourceError):
                db.register(name, source.schema.empty_table())
        return db


def _planned(binder, resolver: TableResolver, tree: exp.Expr) -> tuple[str, pa.Schema, float, str]:
    """(DuckDB SQL, result schema, estimated rows, DuckDB's plan outline) of a resolved tree."""
    query = tree.sql(dialect="duckdb")
    with resolver.session() as db:
        try:
            schema = db.schema(query)
        except RelationalError as e:
            raise engine_error(e, binder.sql, query) from None
        rows, outline = db.explain(query)
    return query, schema, rows if rows is not None else 1.0, outline


def bind_relational(binder, select: exp.Expr) -> tuple[L.Relational, tuple[str, ...], tuple]:
    """The model-free statement as one Relational node: (node, output names, tables it reads)."""
    resolver = TableResolver(binder)
    tree = resolver.resolve(select)
    query, schema, rows, outline = _planned(binder, resolver, tree)
    names = tuple(schema.names)
    items = tree.expressions if isinstance(tree, exp.Select) else []
    if items and not any(isinstance(i, exp.Star) or isinstance(i, exp.Column) and isinstance(i.this, exp.Star)
                         for i in items) and len(items) == len(names):
        names = tuple(binder.output_names(items))  # named as sqlm names a model query's columns
    node = L.Relational(query, names, tuple(resolver.tables), rows, outline)
    return node, names, tuple(resolver.tables.items())


def relational_leaf(binder, select: exp.Expr, alias: str, renamed: list[str]) -> tuple[L.Relational, list]:
    """A model-free query in a model query's FROM that sqlm's binder does not represent (QUALIFY, DISTINCT ON,
    ROLLUP, UNNEST, ...): DuckDB runs it whole, its columns named `alias.column` like a scan's.
    Returns the node and (visible name, internal name, Arrow type) per column."""
    tree = binder.tables.resolve(with_outer_ctes(binder, select))
    query, schema, rows, outline = _planned(binder, binder.tables, tree)
    if len(renamed) > len(schema.names):
        raise binder.error(f"{alias} has {len(schema.names)} columns but {len(renamed)} names were given", select)
    visible = renamed + schema.names[len(renamed):]
    columns = [(v, f"{alias}.{v}", f.type) for v, f in zip(visible, schema)]
    select_list = ", ".join(f"q.{exp.to_identifier(f.name, quoted=True).sql('duckdb')} AS "
                            f"{exp.to_identifier(internal, quoted=True).sql('duckdb')}"
                            for f, (_, internal, _) in zip(schema, columns))
    node = L.Relational(f"SELECT {select_list} FROM ({query}) AS q", tuple(c[1] for c in columns),
                        tuple(binder.tables.tables), rows, outline)
    return node, columns


def bind_expression_subqueries(binder, e: exp.Expr, scope, resolver: TableResolver) -> exp.Expr:
    """`e` (a copy) with each subquery's correlated references made the plan's internal columns and its
    tables registered. scope: the outer query's planner.bind.ScopeColumn list."""
    for original in [s for s in e.find_all(exp.Select) if s.find_ancestor(exp.Select) is None]:
        select = with_outer_ctes(binder, original)
        call = next(iter(select.find_all(LLMCall)), None)
        if call is not None:
            raise binder.error("a model call inside a subquery expression is not supported: compute it in a "
                               "CTE or a subquery in FROM", call)
        inner = resolver.resolve(select)
        # what the subquery's own FROM names: tables, and derived tables or VALUES under an alias
        inner_tables = {t.alias_or_name.lower() for t in inner.find_all(exp.Table, exp.Subquery, exp.Values)} - {""}
        inner_columns = {c.name.lower() for a in inner.find_all(exp.TableAlias) for c in a.args.get("columns") or []}
        for t in inner.find_all(exp.Table):
            source = resolver.tables.get(t.name.lower())
            if source is not None:
                inner_columns |= {f.name.lower() for f in source.schema}
        inner_columns |= {a.alias.lower() for a in inner.find_all(exp.Alias)}
        for col in list(inner.find_all(exp.Column)):
            if isinstance(col.this, exp.Star):
                continue
            qualifier = col.table.lower()
            outer = (qualifier and qualifier not in inner_tables) or (
                not qualifier and col.name.lower() not in inner_columns and any(
                    c.name.lower() == col.name.lower() for c in scope))
            if outer:
                col.replace(binder.column(col, scope))
        if original is e:
            e = inner
        else:
            original.replace(inner)
    return e


def with_outer_ctes(binder, select: exp.Select) -> exp.Select:
    """The subquery with the outer query's CTEs it reads (and those they read) as its own WITH, so the
    relational engine sees them (sqlm inlines CTEs; DuckDB has never heard of them)."""
    visible = binder.ctes  # name -> (CTE, the CTEs visible to it), in definition order
    own = cte_names(select)
    wanted: set[str] = set()
    todo = [t.name.lower() for t in select.find_all(exp.Table)]
    while todo:
        name = todo.pop()
        if name in visible and name not in own and name not in wanted:
            wanted.add(name)
            todo += [t.name.lower() for t in visible[name][0].this.find_all(exp.Table)]
    if not wanted:
        return select
    ctes = [visible[n][0].copy() for n in visible if n in wanted]
    existing = select.args.get("with_")
    merged = exp.With(expressions=ctes + (list(existing.expressions) if existing else []))
    select = select.copy()
    select.set("with_", merged)
    return select
