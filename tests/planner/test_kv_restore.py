"""Load versus recompute: a KV tier is used only where bringing a block back costs less than prefilling it."""
from __future__ import annotations

from dataclasses import replace

import pytest

from catalog.settings import SettingError, Settings
from operators import physical as P
from planner.examples import EXAMPLE_HARDWARE
from stats_catalog import fixture_catalog, plan

CATALOG = fixture_catalog("-- table: docs rows=20: id int; body text len=2000")
QUERY = "SELECT generate('smollm2', body, max_tokens => 8) FROM docs"


def kv_restore_choice(hardware):
    physical = plan(QUERY, CATALOG, Settings(), hardware=hardware)
    op = next(physical.plan.op(n) for n in physical.plan.walk() if isinstance(physical.plan.op(n), P.LLM_OPERATORS))
    return next(c for c in op.choices if c.knob == "kv_restore"), op.knobs


@pytest.mark.parametrize("host_rate, disk_rate, expected", [
    (3.5e8, 5.8e8, "host,disk"),  # measured on the 2-core Sapphire Rapids
    (3.5e8, 2e6, "host"),  # a slow disk (2 MB/s): ~180 ms a block, recomputing is cheaper
    (1e6, 1e6, "none"),
])
def test_each_tier_is_loaded_only_where_cheaper_than_recomputing(host_rate, disk_rate, expected):
    choice, knobs = kv_restore_choice(replace(EXAMPLE_HARDWARE, kv_host_restore_rate=host_rate,
                                              kv_disk_restore_rate=disk_rate))
    assert choice.value == knobs.kv_restore == expected
    assert "recompute" in choice.note and "from disk" in choice.note


def test_kv_restore_setting_spells_tiers_one_way():
    assert Settings().with_value("kv_restore", "disk, host").kv_restore == "host,disk"
    with pytest.raises(SettingError, match="kv_restore"):
        Settings().with_value("kv_restore", "gpu")
