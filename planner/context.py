"""The typed, frozen context every rule and the cost model receive."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from catalog.hardware import HardwareProfile
from catalog.model_config import ModelConfig
from catalog.settings import Settings
from planner.statistics import Statistics


@dataclass(frozen=True)
class ModelFacts:
    """What the planner knows of a model without its weights (catalog.model_catalog.describe_loaded)."""
    name: str
    config: ModelConfig
    chat_prefix_tokens: int
    chat_suffix_tokens: int
    tokens_per_char: float
    weight_bytes: MappingProxyType  # weight format -> bytes read per forward pass
    weight_formats: tuple[str, ...]

    @staticmethod
    def from_entry(entry) -> ModelFacts:
        from catalog.model_catalog import config_of

        m = entry.meta
        return ModelFacts(entry.name, config_of(entry), m["chat_prefix_tokens"], m["chat_suffix_tokens"],
                          m["tokens_per_char"], MappingProxyType(dict(m["weight_bytes"])), tuple(m["weight_formats"]))


@dataclass(frozen=True)
class OptimizerContext:
    settings: Settings
    hardware: HardwareProfile
    statistics: Statistics
    models: MappingProxyType  # model name -> ModelFacts
    kernels: tuple[str, ...] = ("torch",)  # kernel implementations available on this target
    # (model, weight path) -> learned (prefill, decode) correction factors, see planner/calibration.py
    feedback: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def model(self, name: str) -> ModelFacts:
        return self.models[name]
