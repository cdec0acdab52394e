"""`--threads N` for benchmarks that load TVM: TVM sizes its thread pool once, when it is
first imported, so the value must reach the environment before any sqlm package does."""
from __future__ import annotations

import os
import sys


def threads_from_argv(argv: list[str] | None = None) -> int | None:
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return None


def pin_threads_from_argv() -> None:
    """Set TVM_NUM_THREADS and SQLM_THREADS from --threads (call before importing codegen)."""
    threads = threads_from_argv()
    if threads:
        os.environ["TVM_NUM_THREADS"] = os.environ["SQLM_THREADS"] = str(threads)
