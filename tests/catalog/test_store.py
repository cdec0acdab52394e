"""The SQLite catalog: persistence, statistics, and safety under concurrent writers."""
from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from catalog.settings import SettingError
from catalog.store import Catalog


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_models_tables_settings_persist_across_connections(home):
    c = Catalog(home)
    c.register_model("m", "/x.gguf", "gguf", {"vocab_size": 3}, {"tokens_per_char": 0.25})
    c.register_table("reviews", "parquet", "/r.parquet", {"id": "int64"}, 300)
    c.persist_setting("max_batch_size", "8")
    c.close()
    d = Catalog(home)
    assert d.get_model("M").meta == {"tokens_per_char": 0.25}
    assert d.get_table("reviews").row_count == 300
    assert d.settings().max_batch_size == 8
    d.persist_setting("max_batch_size", None)
    assert d.settings().is_auto("max_batch_size")


def test_bad_setting_is_rejected_before_it_is_stored(home):
    c = Catalog(home)
    with pytest.raises(SettingError):
        c.persist_setting("max_batch_size", "many")
    with pytest.raises(SettingError):
        c.persist_setting("no_such_knob", "1")
    assert c.settings().is_auto("max_batch_size")


def test_output_length_histogram_accumulates(home):
    c = Catalog(home)
    c.record_output_lengths("m", "tpl", [(5, False), (5, False), (16, True)])
    c.record_output_lengths("m", "tpl", [(5, False)])
    assert c.output_length_histogram("m", "tpl") == [(5, False, 3), (16, True, 1)]
    assert c.output_length_histogram("m", "other") == []


def test_cost_observations_and_kernel_costs(home):
    c = Catalog(home)
    c.record_cost_observation("m", "fp32/torch", 2, (2.0, 1.0, 0.5), 6.0)
    c.record_cost_observation("m", "fp32/torch", 2, (0.0, 0.0, 0.0), 3.0)  # no estimate: nothing to learn
    c.record_cost_observation("m", "fp32/torch", 1, (4.0, 1.0, 0.5), 6.0)  # priced by another cost model
    assert c.cost_observations("m", "fp32/torch", 2) == [(2.0, 1.0, 0.5, 6.0)]
    c.record_kernel_cost("matmul[576x1536,fp32]", "tvm", "llvm", 0.002)
    c.record_kernel_cost("matmul[576x1536,fp32]", "torch", "llvm", 0.003)
    assert c.kernel_costs("matmul[576x1536,fp32]", "llvm") == {"tvm": 0.002, "torch": 0.003}


def test_threads_share_one_catalog(home):
    c = Catalog(home)

    def write(i):
        for j in range(20):
            c.record_output_lengths("m", "t", [(i, False)])
            c.register_table(f"t{i}_{j}", "csv", "/x.csv", {}, j)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(n for _, _, n in c.output_length_histogram("m", "t")) == 80
    assert len(c.list_tables()) == 80


def _writer(home: str, i: int) -> None:
    c = Catalog(home)
    for j in range(25):
        c.record_output_lengths("m", "t", [(j, False)])
        c.register_table(f"p{i}_{j}", "csv", "/x.csv", {}, j)
    c.close()


def test_processes_writing_at_once_do_not_corrupt_it(home):
    Catalog(home).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(home), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = Catalog(home)
    assert sum(n for _, _, n in c.output_length_histogram("m", "t")) == 75
    assert len(c.list_tables()) == 75
    assert c._query("PRAGMA integrity_check") == [("ok",)]
