"""Each rule's docstring example is a test: the before/after plan it shows must hold."""
from __future__ import annotations

import doctest
import importlib

import pytest

from planner.rules import RULES

MODULES = [f"planner.rules.{rule.__name__}" for rule in RULES] + [
    "planner.examples", "planner.calibration", "planner.range_selectivity", "planner.request", "planner.sql.dialect",
    "planner.errors", "catalog.settings", "runtime.relational", "runtime.threads", "runtime.replicas"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0


def test_every_rule_is_its_own_module_with_one_public_function():
    for rule in RULES:
        module = importlib.import_module(rule.__module__)
        assert module.__name__.endswith(rule.__name__)
        assert module.__doc__ and ">>>" in module.__doc__
