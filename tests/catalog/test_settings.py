"""Knob values this machine cannot honour are refused at SET time, and a catalog saved elsewhere still opens."""
from __future__ import annotations

import sqlite3

import pytest

from catalog.settings import MAX_THREADS, SettingError, Settings, physical_memory
from catalog.store import Catalog

TOO_BIG = [
    ("threads", "0", r"threads must be auto or 1\.\."),
    ("threads", str(MAX_THREADS + 1), rf"threads must be auto or 1\.\.{MAX_THREADS} \(twice this machine's"),
    ("threads", "100000", r"threads must be auto or 1\.\."),
    ("kv_cache_memory", str(physical_memory() + 1), "kv_cache_memory must be at most this machine's memory"),
    ("kv_cache_memory", "100000TB", "kv_cache_memory must be at most this machine's memory"),
    ("kv_cache_memory", "9" * 400, "kv_cache_memory must be at most this machine's memory"),  # not an OverflowError
]


@pytest.mark.parametrize("name,value,message", TOO_BIG, ids=[f"{n}={v[:12]}" for n, v, _ in TOO_BIG])
def test_values_beyond_this_machine_are_refused(name, value, message):
    with pytest.raises(SettingError, match=message):
        Settings().with_value(name, value)


def test_values_within_this_machine_are_taken():
    s = Settings().with_value("threads", str(MAX_THREADS)).with_value("kv_cache_memory", "64MB")
    assert (s.threads, s.kv_cache_memory) == (MAX_THREADS, 64 << 20)


def test_a_global_value_saved_on_a_bigger_machine_is_ignored_with_a_warning(tmp_path):
    Catalog(tmp_path).close()
    with sqlite3.connect(tmp_path / "catalog.db") as db:  # as SET GLOBAL wrote it on a 4096-CPU machine
        db.execute("INSERT INTO settings VALUES ('threads', '8192'), ('max_batch_size', '8')")
    catalog = Catalog(tmp_path)
    with pytest.warns(UserWarning, match=r"ignoring the catalog's SET GLOBAL threads = '8192'.*RESET GLOBAL threads"):
        settings = catalog.settings()
    assert settings.is_auto("threads") and settings.max_batch_size == 8  # the other saved values still hold


def test_persist_settings_saves_all_or_nothing(tmp_path):
    catalog = Catalog(tmp_path)
    with pytest.raises(SettingError, match="unknown setting 'nope'"):
        catalog.persist_settings({"max_batch_size": "4", "nope": "2"})
    assert catalog.settings().is_auto("max_batch_size")
    catalog.persist_settings({"max_batch_size": "4", "scheduling": "spf"})
    assert (catalog.settings().max_batch_size, catalog.settings().scheduling) == (4, "spf")
