"""The persistent catalog: one SQLite file under $SQLM_HOME (default ~/.sqlm).

Holds models, registered tables, persisted settings, statistics (column stats per
source, output-length histograms per model and prompt template, estimate-vs-actual
observations) and the kernel cost registry. The hardware profile belongs to the machine, not
to a catalog: catalog.hardware.

Several processes may open the same file: WAL journaling lets readers run beside
one writer, every write is one short transaction, and `busy_timeout` makes a
writer wait for another instead of failing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import warnings
from array import array
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from catalog.settings import Settings, SettingError

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL,
    config TEXT NOT NULL, meta TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tables (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL,
    schema TEXT NOT NULL, row_count INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS column_stats (
    source TEXT NOT NULL, column_name TEXT NOT NULL, stats TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (source, column_name));
CREATE TABLE IF NOT EXISTS output_lengths (
    model TEXT NOT NULL, template TEXT NOT NULL, length INTEGER NOT NULL, censored INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (model, template, length, censored));
-- cost_feedback held (prefill, decode) estimates of cost model 1: nothing a later version can learn from
DROP TABLE IF EXISTS cost_feedback;
CREATE TABLE IF NOT EXISTS cost_observations (
    model TEXT NOT NULL, variant TEXT NOT NULL, cost_model INTEGER NOT NULL, prefill_estimate REAL NOT NULL,
    decode_estimate REAL NOT NULL, overhead_estimate REAL NOT NULL, actual REAL NOT NULL, recorded REAL NOT NULL);
CREATE TABLE IF NOT EXISTS speculation_stats (
    model TEXT NOT NULL, template TEXT NOT NULL, method TEXT NOT NULL, draft_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, steps INTEGER NOT NULL, drafted INTEGER NOT NULL, accepted INTEGER NOT NULL,
    PRIMARY KEY (model, template, method, draft_tokens));
CREATE TABLE IF NOT EXISTS length_examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, prompt BLOB NOT NULL, length INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS length_examples_model ON length_examples (model, id);
CREATE TABLE IF NOT EXISTS kernel_costs (
    op_signature TEXT NOT NULL, implementation TEXT NOT NULL, target TEXT NOT NULL,
    seconds REAL NOT NULL, measured REAL NOT NULL, PRIMARY KEY (op_signature, implementation, target));
"""


_HOME: ContextVar[Path | None] = ContextVar("sqlm_home", default=None)


def default_home() -> Path:
    """The home of the enclosing `using_home` block, else $SQLM_HOME, else ~/.sqlm: the one place that
    decides where sqlm keeps its files (catalog, GGUF manifests, compiled kernels)."""
    return _HOME.get() or Path(os.environ.get("SQLM_HOME") or Path.home() / ".sqlm").expanduser()


@contextmanager
def using_home(home: str | os.PathLike | None) -> Iterator[None]:
    """Everything sqlm writes inside the block goes under `home` (None: the default), and nothing
    outlives it: unlike setting $SQLM_HOME, later code in the process is not redirected."""
    token = _HOME.set(Path(home).expanduser() if home is not None else None)
    try:
        yield
    finally:
        _HOME.reset(token)


def check_name(kind: str, name: str) -> str:
    """A table or model name as the catalog stores it (lower case); refused when it could name a path."""
    if not name or not name.strip():
        raise ValueError(f"a {kind} name must not be empty")
    bad = next((c for c in ("/", "\\", "\0") if c in name), None)
    if bad is not None or name.startswith(".") or ".." in name:
        raise ValueError(f"{kind} name {name!r} is not allowed: names may not hold path separators, '..' "
                         "or start with '.'")
    return name.lower()


class TableExistsError(ValueError):
    pass


def temporary_path(path: Path) -> Path:
    """Where a writer of `path` writes before renaming: hidden, and named by its pid, so Catalog() can tell a
    dead writer's leftover from a live writer's file."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    format: str  # 'gguf' | 'hf'
    config: dict  # catalog.model_config.ModelConfig fields
    meta: dict  # chat template overhead, tokens per char, weight bytes per format, ...


@dataclass(frozen=True)
class TableEntry:
    name: str
    kind: str  # 'parquet' | 'csv' | 'json'
    path: str
    schema: dict  # column name -> arrow type string, in order
    row_count: int


class Catalog:
    def __init__(self, home: str | os.PathLike | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tables").mkdir(exist_ok=True)
        self._lock = threading.Lock()  # one sqlite connection shared by this process's threads
        self._db = sqlite3.connect(self.home / "catalog.db", timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # executescript commits on its own; every statement is idempotent, so no transaction needed
        self._db.executescript(SCHEMA)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Temporary files of writers that died mid-write (their pid is gone); live writers' are kept."""
        for tmp in (self.home / "tables").glob(".*.tmp-*"):  # temporary_path's names
            pid = tmp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    # -- plumbing -----------------------------------------------------------------------
    class _Tx:
        def __init__(self, catalog: Catalog) -> None:
            self.catalog = catalog

        def __enter__(self) -> sqlite3.Connection:
            self.catalog._lock.acquire()
            self.catalog._db.execute("BEGIN IMMEDIATE")
            return self.catalog._db

        def __exit__(self, kind, value, tb) -> None:
            try:
                self.catalog._db.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self.catalog._lock.release()

    def _transaction(self) -> Catalog._Tx:
        return Catalog._Tx(self)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- models -------------------------------------------------------------------------
    def register_model(self, name: str, path: str, format: str, config: dict, meta: dict) -> ModelEntry:
        check_name("model", name)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                       (name.lower(), str(path), format, json.dumps(config), json.dumps(meta), time.time()))
        return ModelEntry(name.lower(), str(path), format, config, meta)

    def get_model(self, name: str) -> ModelEntry | None:
        rows = self._query("SELECT name, path, format, config, meta FROM models WHERE name = ?", (name.lower(),))
        if not rows:
            return None
        n, p, f, c, m = rows[0]
        return ModelEntry(n, p, f, json.loads(c), json.loads(m))

    def list_models(self) -> list[ModelEntry]:
        rows = self._query("SELECT name FROM models ORDER BY name")
        return [self.get_model(r[0]) for r in rows]

    def update_model_meta(self, name: str, **updates: object) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT meta FROM models WHERE name = ?", (name.lower(),)).fetchone()
            if row is None:
                return
            meta = {**json.loads(row[0]), **updates}
            db.execute("UPDATE models SET meta = ? WHERE name = ?", (json.dumps(meta), name.lower()))

    # -- tables -------------------------------------------------------------------------
    def register_table(self, name: str, kind: str, path: str, schema: dict, row_count: int,
                       replace: bool = True) -> TableEntry | None:
        """Record a table; the entry it replaced, if any. Without `replace` the name is claimed inside one
        transaction, so of two processes creating the same table at once exactly one succeeds: the other
        gets TableExistsError."""
        name = check_name("table", name)
        with self._transaction() as db:
            row = db.execute("SELECT name, kind, path, schema, row_count FROM tables WHERE name = ?", (name,)).fetchone()
            if row is not None and not replace:
                raise TableExistsError(f"table {name!r} already exists")
            db.execute("INSERT OR REPLACE INTO tables VALUES (?, ?, ?, ?, ?, ?)",
                       (name, kind, str(path), json.dumps(schema), row_count, time.time()))
        return None if row is None else TableEntry(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def get_table(self, name: str) -> TableEntry | None:
        rows = self._query("SELECT name, kind, path, schema, row_count FROM tables WHERE name = ?", (name.lower(),))
        if not rows:
            return None
        n, k, p, s, r = rows[0]
        return TableEntry(n, k, p, json.loads(s), r)

    def list_tables(self) -> list[TableEntry]:
        return [self.get_table(r[0]) for r in self._query("SELECT name FROM tables ORDER BY name")]

    def drop_table(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM tables WHERE name = ?", (name.lower(),))

    def table_path(self, name: str) -> Path:
        """A new file for CREATE TABLE AS to materialize `name` in: inside the catalog, and never one another
        writer of the same name uses (the catalog's entry decides which file is the table)."""
        return self.home / "tables" / f"{check_name('table', name)}-{uuid.uuid4().hex[:12]}.parquet"

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether `path` is one of the catalog's own table files (safe to delete when its entry goes)."""
        return Path(path).resolve().parent == (self.home / "tables").resolve()

    # -- settings (persisted defaults; a connection's SET overlays them) -----------------
    def settings(self) -> Settings:
        """The SET GLOBAL defaults. A value this machine rejects (threads or kv_cache_memory saved on a bigger
        one) is skipped with a warning, so the catalog still opens here and the knob is auto until RESET."""
        s = Settings()
        for name, value in self._query("SELECT name, value FROM settings"):
            try:
                s = s.with_value(name, value)
            except SettingError as e:
                warnings.warn(f"ignoring the catalog's SET GLOBAL {name} = {value!r} on this machine: {e} "
                              f"(RESET GLOBAL {name} removes it)", stacklevel=2)
        return s

    def persist_setting(self, name: str, value: str | None) -> None:
        self.persist_settings({name: value})

    def persist_settings(self, values: dict[str, str | None]) -> None:
        """Save (None: remove) SET GLOBAL values in one transaction, after checking every one."""
        for name, value in values.items():
            if value is None:
                Settings().without(name)  # raises for an unknown name
            else:
                Settings().with_value(name, value)  # raises for a bad value
        if not values:
            return
        with self._transaction() as db:
            for name, value in values.items():
                if value is None:
                    db.execute("DELETE FROM settings WHERE name = ?", (name.lower(),))
                else:
                    db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name.lower(), str(value)))

    # -- column statistics, keyed by a source fingerprint (path + size + mtime) ----------
    def column_stats(self, source: str) -> dict[str, dict]:
        rows = self._query("SELECT column_name, stats FROM column_stats WHERE source = ?", (source,))
        return {c: json.loads(s) for c, s in rows}

    def put_column_stats(self, source: str, stats: dict[str, dict]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO column_stats VALUES (?, ?, ?, ?)",
                           [(source, c, json.dumps(s), time.time()) for c, s in stats.items()])

    # -- output lengths per (model, prompt template) -------------------------------------
    def record_output_lengths(self, model: str, template: str, lengths: list[tuple[int, bool]]) -> None:
        """lengths: (generated tokens, censored) where censored means max_tokens cut it short."""
        counts: dict[tuple[int, bool], int] = {}
        for n, censored in lengths:
            counts[(int(n), bool(censored))] = counts.get((int(n), bool(censored)), 0) + 1
        with self._transaction() as db:
            for (n, censored), c in counts.items():
                db.execute(
                    "INSERT INTO output_lengths VALUES (?, ?, ?, ?, ?) ON CONFLICT(model, template, length, censored)"
                    " DO UPDATE SET count = count + excluded.count", (model.lower(), template, n, int(censored), c))

    def output_length_histogram(self, model: str, template: str) -> list[tuple[int, bool, int]]:
        rows = self._query("SELECT length, censored, count FROM output_lengths WHERE model = ? AND template = ?"
                           " ORDER BY length", (model.lower(), template))
        return [(n, bool(c), k) for n, c, k in rows]

    # -- speculative decoding per (model, prompt template): what drafts were accepted ---------------------------
    def record_speculation(self, model: str, template: str, method: str, sums: dict[int, tuple[int, int, int, int]]) -> None:
        """sums: draft tokens k -> (output tokens, decode steps, drafted, accepted), added to what is there."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO speculation_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model, template, method, "
                "draft_tokens) DO UPDATE SET output_tokens = output_tokens + excluded.output_tokens, steps = steps + "
                "excluded.steps, drafted = drafted + excluded.drafted, accepted = accepted + excluded.accepted",
                [(model.lower(), template, method, int(k), *map(int, v)) for k, v in sums.items()])

    def speculation_stats(self, model: str, template: str, method: str) -> dict[int, tuple[int, int, int, int]]:
        rows = self._query("SELECT draft_tokens, output_tokens, steps, drafted, accepted FROM speculation_stats "
                           "WHERE model = ? AND template = ? AND method = ?", (model.lower(), template, method))
        return {k: (n, s, d, a) for k, n, s, d, a in rows}

    # -- finished requests (prompt tail, output length): what the per-request length predictor learns from ------
    EXAMPLE_PROMPT_TOKENS = 256  # the prompt's last tokens are kept: where a request says what it wants
    EXAMPLES_KEPT = 4096  # per model; older ones are dropped as new ones come

    def record_length_examples(self, model: str, examples: list[tuple[tuple[int, ...], int]]) -> None:
        rows = [(model.lower(), array("i", prompt[-self.EXAMPLE_PROMPT_TOKENS:]).tobytes(), int(n))
                for prompt, n in examples]
        with self._transaction() as db:
            db.executemany("INSERT INTO length_examples (model, prompt, length) VALUES (?, ?, ?)", rows)
            db.execute("DELETE FROM length_examples WHERE model = ? AND id <= (SELECT max(id) FROM length_examples "
                       "WHERE model = ?) - ?", (model.lower(), model.lower(), self.EXAMPLES_KEPT))

    def length_examples(self, model: str, limit: int = 2048) -> list[tuple[tuple[int, ...], int]]:
        """The latest `limit` examples of `model`, oldest first."""
        rows = self._query("SELECT prompt, length FROM length_examples WHERE model = ? ORDER BY id DESC LIMIT ?",
                           (model.lower(), limit))
        return [(tuple(array("i", blob)), n) for blob, n in reversed(rows)]

    # -- estimate-vs-actual observations, which calibrate the cost model for this machine ------
    def record_cost_observation(self, model: str, variant: str, cost_model: int,
                                estimate: tuple[float, float, float], actual: float) -> None:
        """One model-call operator's uncorrected (prefill, decode, overhead) estimate beside its measured
        seconds; cost_model: the version of planner/cost.py that priced it."""
        if sum(estimate) <= 0 or actual <= 0:
            return
        with self._transaction() as db:
            db.execute("INSERT INTO cost_observations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (model.lower(), variant, cost_model, *estimate, actual, time.time()))

    def cost_observations(self, model: str, variant: str, cost_model: int,
                          last: int = 20) -> list[tuple[float, float, float, float]]:
        """The latest (prefill, decode, overhead estimate, actual seconds) priced by this cost model version."""
        rows = self._query("SELECT prefill_estimate, decode_estimate, overhead_estimate, actual FROM cost_observations"
                           " WHERE model = ? AND variant = ? AND cost_model = ? ORDER BY recorded DESC LIMIT ?",
                           (model.lower(), variant, cost_model, last))
        return [tuple(r) for r in rows]

    def clear_cost_observations(self) -> int:
        """Forget every observation (they were priced against a hardware profile now re-measured); how many."""
        with self._transaction() as db:
            return db.execute("DELETE FROM cost_observations").rowcount

    # -- kernel cost registry (codegen records measured alternatives; the cost model picks) --
    def record_kernel_cost(self, op_signature: str, implementation: str, target: str, seconds: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO kernel_costs VALUES (?, ?, ?, ?, ?)",
                       (op_signature, implementation, target, seconds, time.time()))

    def kernel_costs(self, op_signature: str, target: str) -> dict[str, float]:
        rows = self._query("SELECT implementation, seconds FROM kernel_costs WHERE op_signature = ? AND target = ?",
                           (op_signature, target))
        return dict(rows)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
