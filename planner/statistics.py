"""Statistics the estimates read: per-column facts of a source, output lengths per prompt template.

Column statistics are computed from the data the first time a source is planned
(vectorized, on at most SAMPLE_ROWS rows) and cached in the catalog under the
source's fingerprint, so a changed file gets fresh ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

SAMPLE_ROWS = 20_000


def capped_length(length: int, censored: bool, max_tokens: int) -> int:
    """min(length, max_tokens) of an earlier output; one cut off by its own max_tokens (censored) says only that the
    answer runs at least that long, so it counts as running to this request's max_tokens (an output of 1 token
    under max_tokens => 1 predicts nothing about max_tokens => 128)."""
    return max_tokens if censored else min(length, max_tokens)


@dataclass(frozen=True)
class ColumnStats:
    rows: int
    distinct: int
    nulls: int
    avg_chars: float  # mean text length (numbers: length of their decimal form)
    sorted_lcp_chars: float  # mean common prefix of neighbours once sorted: what prefix ordering can share
    min: int | float | None = None  # smallest value of a numeric column (an int for an integer column)
    max: int | float | None = None  # largest; both None for other types

    @property
    def adjacent_equal_fraction(self) -> float:
        """Share of sorted neighbours that are equal (a low-cardinality column groups rows)."""
        return 0.0 if self.rows <= 1 else max(0.0, (self.rows - self.distinct) / (self.rows - 1))


def _mean_sorted_lcp(values: pa.Array) -> float:
    """Mean longest common prefix (chars) of adjacent values after sorting."""
    texts = sorted(v for v in values.to_pylist() if v is not None)
    if len(texts) < 2:
        return 0.0
    total = 0
    for a, b in zip(texts, texts[1:]):  # a sample of at most SAMPLE_ROWS neighbours: statistics, not query work
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        total += i
    return total / (len(texts) - 1)


def compute_column_stats(table: pa.Table) -> dict[str, ColumnStats]:
    sample = table.slice(0, SAMPLE_ROWS)
    out = {}
    for name in table.column_names:
        col = sample.column(name).combine_chunks()
        text = col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else None
        if text is None:
            try:
                text = pc.cast(col, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                text = None
        lengths = pc.utf8_length(text) if text is not None else None
        avg = pc.mean(lengths).as_py() if lengths is not None and len(col) - col.null_count else 0.0
        distinct = _count_distinct(col, text)
        scale = table.num_rows / max(1, len(col))
        low, high = _min_max(table.column(name))
        out[name] = ColumnStats(
            rows=table.num_rows,
            distinct=int(min(table.num_rows, round(distinct * scale if distinct > 0.9 * len(col) else distinct))),
            nulls=int(round(col.null_count * scale)),
            avg_chars=float(avg or 0.0),
            sorted_lcp_chars=_mean_sorted_lcp(text) if text is not None else 0.0,
            min=low,
            max=high,
        )
    return out


def _count_distinct(col: pa.Array, text: pa.Array | None) -> int:
    """Distinct non-null values. Arrow hashes no nested, union or null-typed column (nor dictionary or
    string_view ones): count those by their text, or else take every value as distinct, the estimate
    that promises no savings (planning must work for any schema)."""
    for values in (col, text):
        if values is not None:
            try:
                return pc.count_distinct(values).as_py()
            except pa.ArrowNotImplementedError:
                pass
    return len(col) - col.null_count


def _min_max(column: pa.ChunkedArray) -> tuple[int | float | None, int | float | None]:
    """Over the whole column, not the sample: a range estimate needs the true ends."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return None, None
    ends = pc.min_max(column)
    low, high = ends["min"].as_py(), ends["max"].as_py()
    if low is None or (isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high))):
        return None, None  # all null, or infinities/NaN: no usable range
    return low, high


class StatsStore(Protocol):
    def column_stats(self, source: str) -> dict[str, dict]: ...
    def put_column_stats(self, source: str, stats: dict[str, dict]) -> None: ...
    def output_length_histogram(self, model: str, template: str) -> list[tuple[int, bool, int]]: ...
    def speculation_stats(self, model: str, template: str, method: str) -> dict[int, tuple[int, int, int, int]]: ...


class Statistics:
    """Read-through cache over the catalog's statistics tables."""

    def __init__(self, store: StatsStore | None, known: dict[str, dict[str, ColumnStats]] | None = None,
                 predicted_output: tuple[float, str] | None = None) -> None:
        """known: source fingerprint -> statistics known without reading the source (an online request's exact
        figures); predicted_output: (tokens, where from) of the request being planned, from the per-request
        length predictor, which knows more than its template's statistics (every online request has one)."""
        self.store = store
        self._columns: dict[str, dict[str, ColumnStats]] = dict(known or {})
        self.predicted_output = predicted_output

    def columns(self, source) -> dict[str, ColumnStats]:
        """Stats for every column of a catalog.sources.TableSource."""
        key = source.fingerprint or f"{source.kind}:{source.location}"
        if key in self._columns:
            return self._columns[key]
        stored = self.store.column_stats(key) if self.store is not None and source.fingerprint else {}
        # statistics stored before min/max were kept are computed again
        if stored and set(stored) >= {f.name for f in source.schema} and all("min" in c for c in stored.values()):
            stats = {c: ColumnStats(**s) for c, s in stored.items()}
        else:
            from catalog.sources import load

            stats = compute_column_stats(load(source, tuple(source.schema.names)))
            if self.store is not None and source.fingerprint and not source.fingerprint.startswith("arrow:"):
                self.store.put_column_stats(key, {c: s.__dict__ for c, s in stats.items()})
        self._columns[key] = stats
        return stats

    def expected_output_tokens(self, model: str, template: str, max_tokens: int) -> tuple[float, int] | None:
        """(E[min(length, max_tokens)], number of observations), or None without history (output_length_p90 gives
        the tail)."""
        if self.store is None:
            return None
        hist = self.store.output_length_histogram(model, template)
        if not hist:
            return None
        total = sum(count for _, _, count in hist)
        expected = sum(capped_length(n, censored, max_tokens) * count for n, censored, count in hist) / total
        return expected, total

    def speculation(self, model: str, template: str, method: str, k: int) -> tuple[float, float, int] | None:
        """(drafted, accepted) tokens per decode step of one sequence with k drafts, and the output tokens they were
        measured over; None without history."""
        sums = self.store.speculation_stats(model, template, method).get(k) if self.store is not None else None
        if not sums or not sums[1]:
            return None
        tokens, steps, drafted, accepted = sums
        return drafted / steps, accepted / steps, tokens

    def output_length_p90(self, model: str, template: str, max_tokens: int) -> int | None:
        """The 90th percentile of min(length, max_tokens) over the template's history, or None without one."""
        hist = self.store.output_length_histogram(model, template) if self.store is not None else []
        total = sum(count for _, _, count in hist)
        seen = 0
        for capped, count in sorted((capped_length(n, censored, max_tokens), count) for n, censored, count in hist):
            seen += count
            if seen >= 0.9 * total:
                return capped
        return None

    def longest_output_tokens(self, model: str, template: str, max_tokens: int) -> int | None:
        """The longest output seen (at most max_tokens), or None without history."""
        hist = self.store.output_length_histogram(model, template) if self.store is not None else []
        return max(capped_length(n, censored, max_tokens) for n, censored, _ in hist) if hist else None
