"""The sqlm command: output formats, one-line errors with a non-zero exit, no progress bar when piped."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from sqlm.cli import main


def test_query_formats(tmp_path, capsys):
    home = str(tmp_path / "home")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2], "name": ["a", "b"]}), path)
    assert main(["--home", home, "query", f"SELECT * FROM read_parquet('{path}') ORDER BY id", "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"id": 1, "name": "a"},
                                                                                  {"id": 2, "name": "b"}]
    assert main(["--home", home, "query", f"SELECT name FROM read_parquet('{path}')", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"name"', '"a"', '"b"']
    assert main(["--home", home, "query", "SELECT 42 AS answer"]) == 0
    assert "| answer |" in capsys.readouterr().out


def test_errors_are_one_line_on_stderr(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "query", "SELECT nope FROM (VALUES (1)) v(x)"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0
    assert captured.err.startswith('Error: Binder error: Referenced column "nope" not found') and "line 1, column 8" in captured.err
    assert main(["--home", home, "query", "SELEC 1"]) == 1
    assert "Syntax error" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sqlm.cli", "--home", str(tmp_path), "query", "SELECT FROM WHERE"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: Syntax error")


def test_progress_bar_draws_rows_rate_and_eta():
    import io

    from sqlm.cli import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out)
    bar(5, 10, 100)
    assert "5/10 rows" in out.getvalue() and "tok/s" in out.getvalue() and "ETA" in out.getvalue()


def test_calibrate_replaces_the_stored_hardware_profile(tmp_path, capsys, machine_profile):
    from catalog.hardware import CEILINGS, HardwareProfile, stored_part
    from catalog.store import Catalog
    from planner.cost import COST_MODEL_VERSION

    home = tmp_path / "home"
    catalog = Catalog(home)
    machine_profile(HardwareProfile(copy_bandwidth=1.0, fp32_flops=1.0, bf16_flops=1.0, op_overhead_s=1.0, threads=2,
                                    description="stale"))
    catalog.record_cost_observation("smollm2", "fp32/torch", COST_MODEL_VERSION, (1.0, 2.0, 0.5), 9.0)
    catalog.close()
    assert main(["--home", str(home), "calibrate"]) == 0
    out = capsys.readouterr().out
    assert "copy_bandwidth:" in out and "quant_gemv_rate_t1:" in out and "attention_tvm_decode_flops:" in out
    assert "quant_bf16_gemm_rate:" in out
    # corrections fitted against the stale profile start over
    assert "cost observations cleared: 1" in out
    assert stored_part(CEILINGS)["copy_bandwidth"] > 1e8
    catalog = Catalog(home)
    assert catalog.cost_observations("smollm2", "fp32/torch", COST_MODEL_VERSION) == []
    catalog.close()


def test_home_holds_for_the_command_and_does_not_leak(tmp_path, monkeypatch, capsys):
    import os

    import sqlm.cli
    from catalog.store import default_home

    env, home_before = os.environ.get("SQLM_HOME"), default_home()
    inside = []
    monkeypatch.setattr(sqlm.cli, "cmd_query", lambda args, con: inside.append((default_home(), con.catalog.home)))
    home = tmp_path / "elsewhere"
    assert main(["--home", str(home), "query", "SELECT 1"]) == 0
    assert inside == [(home, home)]  # the catalog, GGUF manifests and kernels all go under --home
    assert os.environ.get("SQLM_HOME") == env and default_home() == home_before  # and nothing after it does
