"""Plans queries against catalog statistics given as data: no files, no model weights."""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

import pyarrow as pa

from catalog.settings import Settings
from catalog.sources import TableSource
from planner.bind import bind
from planner.context import OptimizerContext
from planner.examples import EXAMPLE_HARDWARE, EXAMPLE_TVM_HARDWARE, SMOLLM2_FACTS
from planner.lower import lower
from planner.optimizer import optimize
from planner.sql import parse
from planner.statistics import ColumnStats, Statistics

_TYPES = {"int": pa.int64(), "text": pa.string(), "float": pa.float64(), "bool": pa.bool_()}


@dataclass(frozen=True)
class FakeModelEntry:
    name: str


class StatsCatalog:
    """Tables described only by schema and statistics, plus the smollm2 model's facts."""

    def __init__(self) -> None:
        self.sources: dict[str, TableSource] = {}
        self.stats: dict[str, dict] = {}
        self.facts = SMOLLM2_FACTS  # what the catalog knows of the model (tests may swap in an older entry's)

    def add_table(self, name: str, rows: int, columns: dict[str, tuple[str, ColumnStats]]) -> None:
        schema = pa.schema([(c, _TYPES[t]) for c, (t, _) in columns.items()])
        self.sources[name] = TableSource("parquet", f"{name}.parquet", schema, row_count=rows, fingerprint=f"fixture:{name}")
        self.stats[f"fixture:{name}"] = {c: s.__dict__ for c, (_, s) in columns.items()}

    # planner.bind.CatalogView
    def table(self, name):
        return self.sources.get(name.lower())

    def file(self, kind, path):
        raise AssertionError("fixtures read no files")

    def model(self, name):
        from catalog.errors import ModelNotFoundError

        if name != "smollm2":
            raise ModelNotFoundError(f"unknown model {name!r} (known: smollm2)")
        return FakeModelEntry(name)

    # planner.statistics.StatsStore
    def column_stats(self, source):
        return self.stats.get(source, {})

    def put_column_stats(self, source, stats):
        raise AssertionError("fixture statistics are given, never computed")

    def output_length_histogram(self, model, template):
        return []

    def speculation_stats(self, model, template, method):
        return {}

    def context(self, settings: Settings, kernels: tuple[str, ...] = ("torch",), hardware=None) -> OptimizerContext:
        """kernels: the implementations this target runs; with TVM, the example machine that timed its kernels."""
        hardware = hardware or (EXAMPLE_TVM_HARDWARE if "tvm" in kernels else EXAMPLE_HARDWARE)
        return OptimizerContext(settings, hardware, Statistics(self), MappingProxyType({"smollm2": self.facts}),
                                kernels=kernels)


def _number(text: str | None) -> int | float | None:
    """'5' -> 5 (an integer column's bound), '2.5' -> 2.5, None -> None."""
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def parse_table_spec(spec: str) -> tuple[str, int, dict]:
    """'reviews rows=100: id int ndv=100 len=3 min=1 max=100; body text ndv=100 len=120 lcp=8' -> table description."""
    head, _, cols = spec.partition(":")
    name, rows = re.fullmatch(r"\s*(\w+)\s+rows=(\d+)\s*", head).groups()
    rows = int(rows)
    columns = {}
    for part in filter(None, (p.strip() for p in cols.split(";"))):
        words = part.split()
        cname, ctype = words[0], words[1]
        kv = dict(w.split("=") for w in words[2:])
        columns[cname] = (ctype, ColumnStats(rows=rows, distinct=int(kv.get("ndv", rows)), nulls=int(kv.get("nulls", 0)),
                                             avg_chars=float(kv.get("len", 8)), sorted_lcp_chars=float(kv.get("lcp", 0)),
                                             min=_number(kv.get("min")), max=_number(kv.get("max"))))
    return name, rows, columns


def fixture_catalog(text: str) -> StatsCatalog:
    """The tables a fixture file declares in its `-- table: <spec>` lines (parse_table_spec)."""
    catalog = StatsCatalog()
    for spec in re.findall(r"^-- table: (.+)$", text, flags=re.M):
        catalog.add_table(*parse_table_spec(spec))
    return catalog


def parse_settings(value: str) -> dict[str, str]:
    """A fixture's `-- set: a=1, b=x` -> {'a': '1', 'b': 'x'} (a value may itself contain commas)."""
    return dict(kv.strip().split("=", 1) for kv in re.split(r",\s*(?=\w+=)", value))


def parse_kernels(value: str) -> tuple[str, ...]:
    """A fixture's `-- kernels: torch, tvm` -> ('torch', 'tvm')."""
    return tuple(k.strip() for k in value.split(","))


def settings_with(values: dict[str, str]) -> Settings:
    settings = Settings()
    for name, value in values.items():
        settings = settings.with_value(name, value)
    return settings


def plan(sql: str, catalog: StatsCatalog, settings: Settings, kernels: tuple[str, ...] = ("torch",), hardware=None):
    (statement,) = parse(sql)
    ctx = catalog.context(settings, kernels, hardware)
    logical = bind(statement, catalog, sql)
    optimized, runs = optimize(logical, ctx)
    return lower(optimized, runs, ctx)
