"""The `sqlm` command: query, explain, shell, models, serve.

Errors are one line on stderr and a non-zero exit; a progress bar shows on a
terminal for long queries, never when output is piped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sqlm.format import table_csv, table_json, table_text

FORMATS = {"table": table_text, "csv": table_csv, "json": table_json}


class ProgressBar:
    """rows done / total, tokens per second, ETA; redrawn in place on stderr at most 10 times a second."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream, self.start, self.last, self.drawn = stream, time.perf_counter(), 0.0, False

    def __call__(self, done: int, total: int, tokens: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        eta = (elapsed / done) * (total - done) if done else float("nan")
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        eta_text = f"{eta:5.0f}s" if done else "    ?"
        self.stream.write(f"\r[{bar}] {done}/{total} rows  {tokens / elapsed:6.1f} tok/s  ETA {eta_text}")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def _known_errors() -> tuple[type[BaseException], ...]:
    from catalog.errors import ModelError
    from catalog.settings import SettingError
    from catalog.sources import SourceError
    from planner.errors import SqlError
    from runtime.errors import PromptTooLongError
    from runtime.relational import RelationalError

    return (SqlError, ModelError, SettingError, SourceError, PromptTooLongError, RelationalError, ValueError, OSError)


def _progress_for(con) -> ProgressBar | None:
    setting = con.settings.progress
    if setting == "off" or (setting == "auto" and not sys.stderr.isatty()):
        return None
    return ProgressBar()


def _run(con, sql: str, fmt: str) -> None:
    bar = _progress_for(con)
    con.on_progress = bar
    try:
        result = con.sql(sql)
    finally:
        if bar:
            bar.clear()
    table = result.arrow()
    if table.num_columns == 1 and table.column_names == ["explain"]:
        print(table.column(0)[0].as_py())
    elif table.num_columns:
        print(FORMATS[fmt](table).rstrip("\n"))
    elif result.message:
        print(result.message)


def cmd_query(args, con) -> None:
    _run(con, args.sql, args.format)


def cmd_explain(args, con) -> None:
    print(con.explain(args.sql))


def cmd_models(args, con) -> None:
    _run(con, "SHOW MODELS", args.format)


def cmd_calibrate(args, con) -> None:
    """Measure the machine again (bandwidth, FLOP/s, TVM kernel and attention rates): the cost model prices
    plans with it, in every catalog on this machine. The corrections this catalog learned from earlier
    queries were fitted against the old profile, so they start over: the next queries' estimate-vs-actual
    observations calibrate the new one."""
    from dataclasses import asdict

    from planner.hardware_calibration import hardware_profile
    from runtime.threads import torch_threads

    # the profile of the thread count queries run with (SET GLOBAL threads = n), which keys it
    with torch_threads(None if con.settings.is_auto("threads") else con.settings.threads):
        profile = hardware_profile(recalibrate=True)
    for name, value in asdict(profile).items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
    print(f"cost observations cleared: {con.catalog.clear_cost_observations()}")


def cmd_cache(args, con) -> None:
    """The KV blocks kept on disk for later processes (runtime/kv_tiers.py), per model and layout; `clear` drops
    them."""
    import shutil

    import pyarrow as pa

    from runtime.kv_tiers import cache_namespaces

    spaces = cache_namespaces(Path(con.catalog.home))
    if args.action == "clear":
        shutil.rmtree(Path(con.catalog.home) / "kv", ignore_errors=True)
        print(f"cleared {sum(s['entries'] for s in spaces):,} KV blocks ({sum(s['bytes'] for s in spaces):,} bytes)")
        return
    table = pa.table({
        "model": [s.get("model", "?") for s in spaces],
        "dtype": [s.get("dtype", "?") for s in spaces],
        "block_size": [s.get("block_size") for s in spaces],
        "blocks": [s["entries"] for s in spaces],
        "bytes": [s["bytes"] for s in spaces],
        "namespace": [s["namespace"] for s in spaces],
    })
    print(FORMATS[args.format](table))


def cmd_shell(args, con) -> None:
    import readline

    history = Path(con.catalog.home) / "shell_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    print("sqlm shell: end statements with ';', .quit to leave", file=sys.stderr)
    buffer: list[str] = []
    errors = _known_errors()
    while True:
        try:
            line = input("sqlm> " if not buffer else "  ..> ")
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print()
            buffer = []
            continue
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            break
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer = []
        try:
            _run(con, text, args.format)
        except errors as e:
            print(f"Error: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ncancelled", file=sys.stderr)
    try:
        readline.write_history_file(history)
    except OSError:
        pass


def cmd_serve(argv: list[str]) -> int:
    from sqlm import server

    return server.main(argv) or 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sqlm", description="SQL over tables with LLM calls.")
    p.add_argument("--home", help="catalog directory (default $SQLM_HOME or ~/.sqlm)")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", help="run SQL and print the result")
    q.add_argument("sql")
    q.add_argument("--format", choices=sorted(FORMATS), default="table")
    q.set_defaults(run=cmd_query)
    e = sub.add_parser("explain", help="print the optimized plan of a query")
    e.add_argument("sql")
    e.set_defaults(run=cmd_explain)
    s = sub.add_parser("shell", help="interactive SQL (multi-line, history)")
    s.add_argument("--format", choices=sorted(FORMATS), default="table")
    s.set_defaults(run=cmd_shell)
    m = sub.add_parser("models", help="list the models in the catalog")
    m.add_argument("--format", choices=sorted(FORMATS), default="table")
    m.set_defaults(run=cmd_models)
    k = sub.add_parser("cache", help="show (or clear) the KV blocks kept on disk for later processes")
    k.add_argument("action", nargs="?", choices=["show", "clear"], default="show")
    k.add_argument("--format", choices=sorted(FORMATS), default="table")
    k.set_defaults(run=cmd_cache)
    c = sub.add_parser("calibrate", help="re-measure this machine for the cost model (run it on a quiet machine)")
    c.set_defaults(run=cmd_calibrate)
    sub.add_parser("serve", help="OpenAI-compatible HTTP server (see `sqlm serve --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    args = parser().parse_args(argv)
    errors = _known_errors()
    try:
        from catalog.store import using_home
        from sqlm.connection import connect

        # --home holds for this command only: manifests and kernels follow it, the environment is untouched
        with using_home(args.home), connect(args.home) as con:
            args.run(args, con)
    except BrokenPipeError:  # `sqlm query ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
