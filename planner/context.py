"""The typed, frozen context every rule and the cost model receive."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from catalog.hardware import HardwareProfile
from catalog.model_config import ModelConfig
from catalog.settings import Settings
from codegen.target import host_target
from operators.engine_config import EngineConfig
from planner.calibration import fit_cost_factors
from planner.cost import COST_MODEL_VERSION
from planner.hardware_calibration import hardware_profile
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
    # linear (qkv, o, gate_up, down, lm_head) -> its weight format as the model is built ('Q4_1', 'fp32', ...);
    # None for a catalog entry described before they were recorded
    linear_formats: MappingProxyType | None = None
    tokenizer_digest: str | None = None  # catalog.model_catalog.tokenizer_digest (None: described before it was kept)

    @staticmethod
    def from_entry(entry) -> ModelFacts:
        from catalog.model_catalog import config_of

        return ModelFacts.from_meta(entry.name, config_of(entry), entry.meta)

    @staticmethod
    def from_loaded(name: str, loaded) -> ModelFacts:
        """For a model loaded without a catalog entry (`sqlm serve --model path`)."""
        from catalog.model_catalog import describe_loaded

        return ModelFacts.from_meta(name, loaded.config, describe_loaded(loaded))

    @staticmethod
    def from_meta(name: str, config: ModelConfig, m: dict) -> ModelFacts:
        linears = m.get("linear_formats")
        return ModelFacts(name, config, m["chat_prefix_tokens"], m["chat_suffix_tokens"], m["tokens_per_char"],
                          MappingProxyType(dict(m["weight_bytes"])), tuple(m["weight_formats"]),
                          None if linears is None else MappingProxyType(dict(linears)), m.get("tokenizer_digest"))


ANY_VARIANT = "*"  # feedback key: fitted over every weight path of a model


@dataclass(frozen=True)
class OptimizerContext:
    settings: Settings
    hardware: HardwareProfile
    statistics: Statistics
    models: MappingProxyType  # model name -> ModelFacts
    kernels: tuple[str, ...] = ("torch",)  # kernel implementations available on this target
    cpu_target: str = ""  # what TVM's kernels are built for (codegen.target.Target.describe)
    # (model, weight path or ANY_VARIANT) -> learned (prefill, decode, overhead) correction factors,
    # see planner/calibration.py
    feedback: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # model name -> knobs of an engine already running it (the server's shared engine): facts a plan
    # obeys, not choices (settings_for turns them into SET hints)
    running: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # online serving judges a plan by each request's latency, batch SQL by the whole query's makespan; online,
    # the (p10, p90, count) of earlier requests' output lengths (planner.length_predictor.LengthPredictor.spread)
    online: bool = False
    length_spread: tuple[float, float, int] | None = None
    # model name -> catalog models that could draft for it (same tokenizer, fewer parameters), smallest first
    draft_models: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def model(self, name: str) -> ModelFacts:
        return self.models[name]

    def settings_for(self, model: str) -> Settings:
        """The settings a model call obeys: the running engine's knobs where one runs the model."""
        knobs = self.running.get(model)
        return self.settings if knobs is None else engine_settings(self.settings, knobs)


def engine_settings(settings: Settings, knobs: EngineConfig) -> Settings:
    """`settings` with every engine knob SET to a running engine's value."""
    pinned = (("kv_cache_memory", knobs.kv_cache_memory), ("kv_block_size", knobs.kv_block_size),
              ("max_batch_size", knobs.max_batch_size), ("prefill_chunk_tokens", knobs.prefill_chunk_tokens),
              ("prefix_cache", "on" if knobs.prefix_cache else "off"), ("scheduling", knobs.scheduling),
              ("weight_format", knobs.weight_format), ("kernels", knobs.kernels),
              ("kv_cache_dtype", knobs.kv_cache_dtype), ("prefill_dtype", knobs.prefill_dtype),
              ("speculative", knobs.speculative), ("num_speculative_tokens", knobs.num_speculative_tokens),
              ("kv_restore", knobs.kv_restore))
    for name, value in pinned:
        settings = settings.with_value(name, value)
    return settings


def catalog_context(catalog, settings: Settings, models: dict[str, ModelFacts], statistics: Statistics,
                    running: dict[str, EngineConfig] | None = None) -> OptimizerContext:
    """What the catalog knows for a plan: this machine's profile, the kernels it can run, learned cost corrections.

    catalog: a catalog.store.Catalog; running: model name -> knobs of an engine already running it.
    """
    feedback = {}
    for name in models:
        paths = {f"{fmt}/{kernels}": catalog.cost_observations(name, f"{fmt}/{kernels}", COST_MODEL_VERSION)
                 for fmt in ("fp32", "bf16", "native") for kernels in ("torch", "tvm")}
        seen = [o for observations in paths.values() for o in observations]
        if not seen:
            continue
        # what this machine adds to every weight path: the prior of each path's own fit
        common = feedback[(name, ANY_VARIANT)] = fit_cost_factors(seen)
        for path, observations in paths.items():
            if observations:
                feedback[(name, path)] = fit_cost_factors(observations, prior=common)
    hw = hardware_profile(with_kernels=bool(models))  # a plan without model calls needs no kernel rates
    # TVM is a candidate where its kernels built and were timed on this machine
    kernels = ("torch", "tvm") if hw.quant_gemv_rate_t1 > 0 else ("torch",)
    return OptimizerContext(settings, hw, statistics, MappingProxyType(dict(models)), kernels=kernels,
                            cpu_target=host_target().describe(),
                            feedback=MappingProxyType(feedback), running=MappingProxyType(dict(running or {})),
                            draft_models=MappingProxyType(draft_models(catalog, models)))


def draft_models(catalog, models: dict[str, ModelFacts]) -> dict[str, tuple[ModelFacts, ...]]:
    """For each model, the catalog's models with its tokenizer and fewer parameters, smallest first."""
    if not models:
        return {}
    others = [ModelFacts.from_entry(e) for e in catalog.list_models()]
    out = {}
    for name, facts in models.items():
        found = [o for o in others if o.tokenizer_digest is not None and o.tokenizer_digest == facts.tokenizer_digest
                 and o.config.num_parameters < facts.config.num_parameters]
        if found:
            out[name] = tuple(sorted(found, key=lambda o: o.config.num_parameters))
    return out
