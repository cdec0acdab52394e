"""Enumeration of alternatives: for each engine knob, cost every candidate and keep the cheapest.

A knob the user SET is obeyed (the choice is marked forced, and the cost of the
value the optimizer would have picked is still shown); so is every knob of an engine
already running the model (the server's shared engine), which no plan can change.
Knobs are decided one at a time in dependency order (weights and kernels, prefill dtype, KV cache dtype,
attention kernel, then batch, chunk, block size, prefix cache, scheduling), each with the
earlier ones fixed.
"""
from __future__ import annotations

import functools
import os
from dataclasses import replace

from sqlglot import exp

from catalog.quant import QUANT_TYPES
from codegen.quant_crossover import CROSSOVER
from operators import logical as L
from operators.physical import Choice
from operators.engine_config import EngineConfig
from planner.context import ANY_VARIANT, ModelFacts, OptimizerContext
from planner.cost import LLMCost, LLMWorkload, kv_bytes_per_token, kv_restore_seconds, llm_cost
from planner.estimate import PromptProfile, prompt_profile
from planner.errors import SqlError
from planner.sql.dialect import Sqlm
from runtime.speculation import SPECULATIVE_TOKENS

DEFAULT_KV_CACHE_MEMORY = 1 << 30  # when the budget is auto: what the engine may take on a shared box
# candidates in tie-break order: on equal cost the first wins (more parallelism, the engine's defaults)
BATCH_SIZES = (256, 128, 64, 32, 16, 8, 4, 1)
CHUNK_SIZES = (512, 1024, 256, 2048, 128)
BLOCK_SIZES = (16, 32, 8, 64)
LABEL_TOKENS = 2  # a label's tokens plus the end-of-turn token, when the tokenizer is not at hand


@functools.lru_cache(maxsize=1024)  # printing the prompt is the slow part, and every workload() asks
def template_key(op: L.Generate | L.Classify) -> str:
    """The prompt's shape: keys output-length statistics across queries with the same template. Columns are
    holes (`'Summarize: ' || ?`): the same template over another table or alias is the same template."""
    if isinstance(op, L.Classify):
        return f"classify|{op.instruction}|{'|'.join(op.labels)}"
    shape = op.prompt.transform(lambda n: exp.Placeholder() if isinstance(n, exp.Column) else n)
    structured = "" if op.sampling.structured is None else f"|{op.sampling.structured.describe()}"
    return f"generate|{shape.sql(dialect=Sqlm)}|chat={op.chat}{structured}"


def expected_output_tokens(op: L.Generate | L.Classify, ctx: OptimizerContext) -> tuple[float, str]:
    """Mean generated tokens per request and where the figure came from."""
    if isinstance(op, L.Classify):
        return 0.0, "classify scores labels, generates nothing"
    if ctx.statistics.predicted_output is not None:
        return ctx.statistics.predicted_output
    seen = ctx.statistics.expected_output_tokens(op.model, template_key(op), op.sampling.max_tokens)
    if seen is None:
        return float(op.sampling.max_tokens), "max_tokens (no output-length statistics yet)"
    p90 = ctx.statistics.output_length_p90(op.model, template_key(op), op.sampling.max_tokens)
    return seen[0], f"statistics of {seen[1]} earlier outputs of this template: mean {seen[0]:.1f}, p90 {p90}"


def workload(op: L.Generate | L.Classify, profile: PromptProfile, rows: float, ctx: OptimizerContext) -> LLMWorkload:
    # beam search runs its width of sequences a row (their prompt shared through the prefix cache)
    requests_per_row = len(op.labels) if isinstance(op, L.Classify) else max(op.n, op.sampling.beam_width)
    distinct_rows = rows * (profile.distinct_fraction if op.options.dedup else 1.0)
    requests = distinct_rows * requests_per_row
    shared = profile.sorted_shared_tokens if op.options.order == "prefix" else profile.static_prefix_tokens
    footprint = 0.0
    if op.options.order == "arrival":
        # arrival order reaches the same sharing only if the cache still holds every earlier prompt
        shared, footprint = profile.sorted_shared_tokens, distinct_rows * profile.tokens
    if isinstance(op, L.Classify):
        # the labels of one row share its whole prompt; only the first of them computes it
        shared = (shared + (requests_per_row - 1) * profile.tokens) / requests_per_row
    output, _ = expected_output_tokens(op, ctx)
    scored = LABEL_TOKENS if isinstance(op, L.Classify) else 0.0
    constrained = isinstance(op, L.Generate) and op.sampling.structured is not None
    draft = draft_model_for(op, ctx)
    return LLMWorkload(requests, profile.tokens, shared, profile.static_prefix_tokens, output, scored, footprint,
                       longest_output_tokens(op, ctx), constrained,
                       isinstance(op, L.Generate) and op.sampling.argmax_only, speculation_estimates(op, ctx),
                       None if draft is None else (draft.config, draft.weight_bytes))


# prompt lookup before any statistics of the template: drafts found on PRIOR_DRAFT_RATE of the steps, each draft
# token accepted with PRIOR_ACCEPTANCE given the ones before it (chat answers that quote their prompt, roughly)
PRIOR_DRAFT_RATE = 0.4
PRIOR_ACCEPTANCE = 0.6


def speculation_estimates(op, ctx: OptimizerContext) -> tuple[tuple[str, int, float, float], ...]:
    """(method, k, drafted, accepted per sequence and decode step) for each draft length the optimizer prices.
    Only rows that can speculate (runtime.speculation.speculable): greedy or plainly sampled generate."""
    if not isinstance(op, L.Generate) or op.sampling.structured is not None or op.sampling.shapes_logits:
        return ()
    out = []
    draft = draft_model_for(op, ctx)
    for method in ("ngram",) + (() if draft is None else ("draft",)):
        rate = PRIOR_DRAFT_RATE if method == "ngram" else 1.0  # a draft model drafts on every step
        for k in SPECULATIVE_TOKENS:
            seen = ctx.statistics.speculation(op.model, template_key(op), stats_method(method, draft), k)
            if seen is None:
                seen = (rate * k, rate * sum(PRIOR_ACCEPTANCE ** i for i in range(1, k + 1)), 0)
            out.append((method, k, seen[0], seen[1]))
    return tuple(out)


def draft_model_for(op, ctx: OptimizerContext):
    """The smallest catalog model with the op's tokenizer, which speculative = 'draft' would run (None: none)."""
    found = ctx.draft_models.get(op.model) if isinstance(op, L.Generate) else None
    return found[0] if found else None


def stats_method(method: str, draft) -> str:
    """The key of a method's acceptance statistics: a draft model's are its own."""
    return f"draft:{draft.name}" if method == "draft" else method


def speculation_source(op, ctx: OptimizerContext, method: str, k: int) -> str:
    seen = ctx.statistics.speculation(op.model, template_key(op), stats_method(method, draft_model_for(op, ctx)), k)
    if seen is None:
        rate = f"drafts on {PRIOR_DRAFT_RATE:.0%} of steps, each" if method == "ngram" else "each draft"
        return f"a prior ({rate} accepted with p {PRIOR_ACCEPTANCE})"
    how = "prompt lookup replayed on" if method == "ngram" else "measured over"
    return f"{how} {seen[2]:,} earlier output tokens of this template"


def longest_output_tokens(op: L.Generate | L.Classify, ctx: OptimizerContext) -> float:
    """The longest output a request of this template produces: a batch decodes until it is done."""
    if isinstance(op, L.Classify):
        return 0.0
    seen = ctx.statistics.longest_output_tokens(op.model, template_key(op), op.sampling.max_tokens)
    return float(op.sampling.max_tokens if seen is None else seen)


def _auto_or(settings, name: str, default):
    return default if settings.is_auto(name) else getattr(settings, name)


def initial_knobs(ctx: OptimizerContext, facts: ModelFacts) -> EngineConfig:
    """Starting point of the search: the engine's defaults, with every SET value applied."""
    s = ctx.settings_for(facts.name)
    return EngineConfig(
        max_batch_size=_auto_or(s, "max_batch_size", 64),
        prefill_chunk_tokens=_auto_or(s, "prefill_chunk_tokens", 512),
        kv_block_size=_auto_or(s, "kv_block_size", 16),
        kv_cache_memory=_auto_or(s, "kv_cache_memory", DEFAULT_KV_CACHE_MEMORY),
        prefix_cache=s.prefix_cache != "off",
        scheduling=_auto_or(s, "scheduling", "fcfs"),
        weight_format=_auto_or(s, "weight_format", "fp32" if "fp32" in facts.weight_formats else facts.weight_formats[0]),
        kernels=_auto_or(s, "kernels", "torch"),
        threads=None if s.is_auto("threads") else s.threads,
        kv_cache_dtype=_auto_or(s, "kv_cache_dtype", "fp32"),
        prefill_dtype=_auto_or(s, "prefill_dtype", "fp32"),
        attention_kernel=_auto_or(s, "kernels", "tvm" if "tvm" in ctx.kernels else "torch"),
        num_speculative_tokens=_auto_or(s, "num_speculative_tokens", SPECULATIVE_TOKENS[0]),
        kv_restore=_auto_or(s, "kv_restore", "host,disk"),
        replicas=_auto_or(s, "replicas", 1),
    )


def variant(knobs: EngineConfig) -> str:
    """What the learned correction is keyed by: the weight path, which sets the real step cost."""
    return f"{knobs.weight_format}/{knobs.kernels}"


def correction(ctx: OptimizerContext, model: str, knobs: EngineConfig) -> tuple[float, float, float]:
    """Learned (prefill, decode, overhead) factors for this model and weight path on this machine. A path without
    history takes the model's other paths' factors where they slow things down (the machine's load and Python
    are common to all), never where they speed them up: that another path's kernels beat their roofline says
    nothing of this one's, and an unmeasured path made to look cheap would win on a guess."""
    own = ctx.feedback.get((model, variant(knobs)))
    if own is not None:
        return own
    return tuple(max(1.0, f) for f in ctx.feedback.get((model, ANY_VARIANT), (1.0, 1.0, 1.0)))


def cost_of(w: LLMWorkload, knobs: EngineConfig, facts: ModelFacts, ctx: OptimizerContext) -> LLMCost:
    head = None if facts.linear_formats is None else facts.linear_formats.get("lm_head")
    return llm_cost(w, knobs, facts.config, dict(facts.weight_bytes), ctx.hardware, correction(ctx, facts.name, knobs),
                    quantized_head=head is None or head in QUANT_TYPES)


def _pick(name: str, candidates: list[tuple[object, EngineConfig]], w, facts, ctx, forced: bool, note=None,
          eligible: tuple | None = None):
    """The cheapest eligible candidate and the best other one as runner-up.

    eligible: the values the choice may take (default: the first candidate when forced, else all);
    the others are priced and shown, never picked."""
    if eligible is None:
        eligible = (candidates[0][0],) if forced else tuple(v for v, _ in candidates)
    costed = sorted(((cost_of(w, k, facts, ctx).seconds, i, v, k) for i, (v, k) in enumerate(candidates)),
                    key=lambda t: (t[0] * (1 - 1e-9), t[1]))
    chosen = next(c for c in costed if c[2] in eligible)
    best_other = next((c for c in costed if c is not chosen), None)
    choice = Choice(name, chosen[2], chosen[0], best_other[2] if best_other else None,
                    best_other[0] if best_other else None, forced, note=note(chosen, best_other) if note else "")
    return choice, chosen[3]


def choose_knobs(op: L.Generate | L.Classify, w: LLMWorkload, ctx: OptimizerContext) -> tuple[EngineConfig, list[Choice]]:
    facts = ctx.model(op.model)
    knobs = initial_knobs(ctx, facts)
    choices = []
    s = ctx.settings_for(op.model)

    forced = not (s.is_auto("weight_format") and s.is_auto("kernels"))
    # auto never loses precision against the model file: bf16 rounds the weights, so only a SET picks it
    lossless = [f for f in facts.weight_formats if f != "bf16"]
    formats = [knobs.weight_format] if not s.is_auto("weight_format") else lossless
    kernels = [knobs.kernels] if not s.is_auto("kernels") else list(ctx.kernels)
    # the TVM alternative is priced from its measured fused dequant-GEMV; for dense weights the cost
    # model knows no difference from torch, so unforced plans do not offer an unmeasured tie
    combos = [(f"{f}/{k}", replace(knobs, weight_format=f, kernels=k)) for f in formats for k in kernels
              if forced or k != "tvm" or f == "native"]
    allowed = tuple(name for name, _ in combos)
    if forced:  # the cheapest combination the SET values allow; every other one is priced as runner-up
        everything = [(f"{f}/{k}", replace(knobs, weight_format=f, kernels=k))
                      for f in facts.weight_formats for k in ctx.kernels]
        combos += [c for c in everything if c[0] not in allowed]
    note = None
    if not forced and "bf16" in facts.weight_formats:
        # the lossy format is priced beside the lossless ones (it may show as the runner-up), never picked
        lossy = [(f"bf16/{k}", replace(knobs, weight_format="bf16", kernels=k)) for k in ctx.kernels]
        combos += lossy
        seconds, name = min((cost_of(w, k, facts, ctx).seconds, name) for name, k in lossy)
        def note(chosen, other):
            priced = "" if other is not None and other[2] == name else f" ({name} est. {seconds:.3g}s)"
            return f"bf16 weights{priced} are considered only when SET (they round the weights)"
    c, knobs = _pick("weight_format/kernels", combos, w, facts, ctx, forced, note, eligible=allowed)
    choices.append(c)
    c, knobs = _pick_prefill_dtype(knobs, w, facts, ctx)
    choices.append(c)
    c, knobs = _pick_kv_cache_dtype(knobs, w, facts, ctx)
    choices.append(c)
    c, knobs = _pick_attention_kernel(knobs, w, facts, ctx)
    choices.append(c)

    capacity_tokens = knobs.kv_cache_memory / kv_bytes_per_token(facts.config, knobs.resolved_kv_cache_dtype())
    per_seq = max(1.0, w.prompt_tokens + w.output_tokens + w.scored_tokens)
    fits = [b for b in BATCH_SIZES if b * per_seq <= capacity_tokens] or [1]
    for name, values in (("max_batch_size", fits), ("prefill_chunk_tokens", list(CHUNK_SIZES)),
                         ("kv_block_size", list(BLOCK_SIZES))):
        is_forced = not s.is_auto(name)
        current = getattr(knobs, name)
        candidates = [current] + [v for v in values if v != current] if is_forced else values
        c, knobs = _pick(name, [(v, replace(knobs, **{name: v})) for v in candidates], w, facts, ctx, is_forced)
        choices.append(c)

    is_forced = s.prefix_cache != "auto"
    order = [knobs.prefix_cache, not knobs.prefix_cache] if is_forced else [True, False]

    def saving(chosen, other) -> str:
        on = cost_of(w, replace(knobs, prefix_cache=True), facts, ctx)
        off = cost_of(w, replace(knobs, prefix_cache=False), facts, ctx)
        saved = off.computed_prompt_tokens - on.computed_prompt_tokens
        return f"saves {saved:,.0f} prompt tokens ({off.seconds - on.seconds:.1f}s)"
    c, knobs = _pick("prefix_cache", [("on" if v else "off", replace(knobs, prefix_cache=v)) for v in order],
                     w, facts, ctx, is_forced, saving)
    choices.append(c)
    c, knobs = _pick_kv_restore(knobs, w, facts, ctx)
    choices.append(c)

    c, knobs = _pick_speculative(op, knobs, w, facts, ctx)
    choices.append(c)

    if ctx.online:
        c, knobs = _pick_online_scheduling(knobs, w, facts, ctx)
        choices.append(c)
        if op.model in ctx.running:
            choices = [replace(c, forced_by="the running engine") for c in choices]
        return knobs, choices
    # batch work is judged by its makespan: shortest-first leaves the longest sequences running alone at the end
    is_forced = not s.is_auto("scheduling")
    candidates = [knobs.scheduling] + [v for v in ("fcfs", "spf") if v != knobs.scheduling] if is_forced else ["fcfs", "spf"]
    costed = []
    for v in candidates:
        k = replace(knobs, scheduling=v)
        base = cost_of(w, k, facts, ctx).seconds
        tail = 0.0 if v == "fcfs" else cost_of(replace(w, requests=1), k, facts, ctx).decode_seconds / 2
        costed.append((base + tail, v))
    chosen = costed[0] if is_forced else min(costed, key=lambda t: t[0])
    other = next(t for t in costed if t is not chosen)
    choices.append(Choice("scheduling", chosen[1], chosen[0], other[1], other[0], is_forced,
                          note="" if isinstance(op, L.Generate) else "classify has no decode tail"))
    knobs = replace(knobs, scheduling=chosen[1])
    c, knobs = _pick_replicas(knobs, w, facts, ctx)
    choices.append(c)
    if op.model in ctx.running:
        choices = [replace(c, forced_by="the running engine") for c in choices]
    return knobs, choices


REPLICA_CHOICES = (1, 2, 4, 8)
REPLICA_START_SECONDS = 4.0  # a replica's Ray actor: a new process, sqlm's imports, the model's load (measured ~3-5 s)


def _pick_replicas(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """How many engine replicas (Ray actors, runtime/replicas.py) split the rows: each runs 1/r of the requests on
    1/r of this machine's cores (a cluster that RAY_ADDRESS names gives each its own machine), and each costs a
    start. On one machine the split only adds starts, so auto keeps one engine unless a cluster is there."""
    s = ctx.settings_for(facts.name)
    forced = not s.is_auto("replicas")
    cluster = bool(os.environ.get("RAY_ADDRESS"))

    def seconds(r: int) -> float:
        if r == 1:
            return cost_of(w, replace(knobs, replicas=1), facts, ctx).seconds
        share = cost_of(replace(w, requests=w.requests / r), replace(knobs, replicas=r), facts, ctx).seconds
        return share * (1 if cluster else r) + REPLICA_START_SECONDS

    values = [s.replicas] + [r for r in REPLICA_CHOICES if r != s.replicas] if forced else list(REPLICA_CHOICES)
    costed = [(seconds(r), r) for r in values]
    chosen = costed[0] if forced else min(costed)
    other = min(t for t in costed if t is not chosen)
    where = "its own machine" if cluster else f"{max(1, (os.cpu_count() or 1) // chosen[1])} of this machine's cores"
    if chosen[1] > 1 and ctx.online:
        note = (f"requests routed over {chosen[1]} Ray replicas to the one holding the longest start of their prompt, "
                f"balanced against load; each on {where}")
    elif chosen[1] > 1:
        note = f"{w.requests:,.0f} requests over {chosen[1]} Ray replicas, prompts sharing a prefix on one, each on {where}"
    else:
        note = "one engine in this process" + ("" if cluster else ": replicas would split this machine's cores")
    return (Choice("replicas", chosen[1], chosen[0], other[1], other[0], forced, note=note),
            replace(knobs, replicas=chosen[1]))


def _pick_speculative(op, knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """Off, or prompt lookup with each priced draft length: drafts pay where a step's cost hardly grows with its
    rows (batch-1 decode reads every weight for one token) and accepted tokens save whole steps; at large batches
    the step is compute-bound and verifying drafts costs about what it saves."""
    s = ctx.settings_for(op.model)
    ks = SPECULATIVE_TOKENS if s.is_auto("num_speculative_tokens") else (knobs.num_speculative_tokens,)
    methods = [m for m, *_ in w.speculation]
    draft = draft_model_for(op, ctx)
    candidates = [("off", replace(knobs, speculative="off"))]
    candidates += [(f"ngram k={k}", replace(knobs, speculative="ngram", num_speculative_tokens=k))
                   for k in ks if "ngram" in methods]
    candidates += [(f"draft {draft.name} k={k}", replace(knobs, speculative="draft", draft_model=draft.name,
                                                          num_speculative_tokens=k))
                   for k in ks if "draft" in methods]
    forced = not s.is_auto("speculative")
    if forced:
        if s.speculative == "draft" and draft is None and isinstance(op, L.Generate):
            raise SqlError("Planner error", f"speculative = 'draft': the catalog holds no model smaller than "
                           f"{op.model!r} with its tokenizer (CREATE MODEL one, or SET speculative = 'ngram')")
        eligible = tuple(v for v, _ in candidates if v.split(" ")[0] == s.speculative)
        if not eligible:  # SET ngram on a request that cannot speculate (penalties, structured output): off
            eligible = ("off",)
    else:
        eligible = None

    def note(chosen, other) -> str:
        shown = chosen if chosen[2] != "off" else other
        if shown is None or shown[2] == "off":
            return "these requests cannot speculate (penalties, structured output or classify)"
        k, method = shown[3].num_speculative_tokens, shown[3].speculative
        drafted, accepted = w.drafts(shown[3])
        rate = accepted / drafted if drafted else 0.0
        return (f"{shown[2]}: expected acceptance {rate:.0%} ({accepted:.2f} of {drafted:.2f} drafted tokens a "
                f"step), from {speculation_source(op, ctx, method, k)}")
    choice, chosen = _pick("speculative", candidates, w, facts, ctx, forced, note, eligible=eligible)
    if chosen.speculative == "off" or forced:  # SET speculates whatever the batch (vLLM's default)
        return choice, chosen
    limit = speculative_max_batch(chosen, w, facts, ctx)
    floor = speculative_min_acceptance(chosen, w, facts, ctx)
    return replace(choice, note=f"{choice.note}; drafts while at most {limit} sequence{'s' if limit != 1 else ''} "
                                f"decode, and a sequence drafts while at least {floor:.0%} of its latest drafts are "
                                f"accepted"), replace(chosen, speculative_max_batch=limit, speculative_min_acceptance=floor)


SPECULATION_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def speculative_max_batch(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext) -> int:
    """The most concurrent decoding sequences at which the drafts still pay, by the cost model: an online engine's
    batch changes every step, and a batch query's last sequences decode alone."""
    off = replace(knobs, speculative="off", draft_model=None)
    best = 0
    for b in SPECULATION_BATCHES:
        one_wave = replace(w, requests=float(b), longest_output_tokens=0.0)
        sized = replace(knobs, max_batch_size=max(b, knobs.max_batch_size))
        if cost_of(one_wave, sized, facts, ctx).decode_seconds < cost_of(one_wave, replace(off, max_batch_size=sized.max_batch_size), facts, ctx).decode_seconds:
            best = b
    return max(1, best)


def speculative_min_acceptance(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext) -> float:
    """The fraction of its drafts a sequence decoding alone must have accepted for verifying them to cost less than
    the steps they save, by the cost model (a sequence drafting all k tokens every step); below it the engine
    pauses a sequence's drafting (runtime/speculation.still_pays). 1.0 where no acceptance pays."""
    one = replace(w, requests=1.0, longest_output_tokens=0.0)
    off = cost_of(one, replace(knobs, speculative="off", draft_model=None), facts, ctx).decode_seconds
    k = knobs.num_speculative_tokens

    def pays(accepted: float) -> bool:
        drafted = replace(one, speculation=((knobs.speculative, k, float(k), accepted),))
        return cost_of(drafted, knobs, facts, ctx).decode_seconds < off

    if not pays(float(k)):
        return 1.0
    lo, hi = 0.0, float(k)
    for _ in range(20):  # bisect the break-even accepted tokens a step
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pays(mid) else (mid, hi)
    return round(hi / k, 3)


SPF_MIN_SPREAD = 2.0  # p90 / p10 of earlier output lengths from which shortest-first pays online


def _pick_online_scheduling(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """Online, a plan is judged by each request's latency: when earlier requests' output lengths differ, running
    the shortest predicted first (aged, so none starves) cuts the mean wait of everything queued behind a long
    one; when they do not, spf is FCFS. Either way throughput is the same: same batch, same steps."""
    seconds = cost_of(w, knobs, facts, ctx).seconds
    spread = ctx.length_spread
    if not ctx.settings.is_auto("scheduling"):
        return Choice("scheduling", knobs.scheduling, seconds, forced=True), knobs
    if spread is None:
        value, note = "fcfs", "fewer than 4 earlier requests: no lengths to predict from yet"
    else:
        p10, p90, n = spread
        differ = p90 >= SPF_MIN_SPREAD * max(p10, 1.0)
        value = "spf" if differ else "fcfs"
        note = (f"{n} earlier requests' output lengths run {p10:.0f}-{p90:.0f} tokens (p10-p90): "
                + ("shortest-predicted-first (aged, no starvation) cuts the mean latency of queued requests"
                   if differ else f"too alike for shortest-first to gain (under {SPF_MIN_SPREAD:.0f}x)"))
    other = "fcfs" if value == "spf" else "spf"
    return Choice("scheduling", value, seconds, other, seconds, note=note), replace(knobs, scheduling=value)


BF16_PREFILL_LOSS = ("bf16 prefill rounds activations and dequantized weights to 8 mantissa bits (~0.4% relative "
                     "per element; greedy outputs may differ from fp32)")


def _pick_prefill_dtype(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """The native/tvm path's matmuls over >= bf16_min_tokens rows (prefill chunks, decode steps of that many
    sequences): fp32 in the fused GEMM, or bf16 (dequantize + torch's bf16 GEMM), faster and lossy. Like
    bf16 weights and a bf16 KV cache, auto never takes it (it loses precision against the model file), but
    prices it as the runner-up and says what it would save. On every other weight path it is no choice."""
    s = ctx.settings_for(facts.name)
    path = f"{knobs.weight_format}/{knobs.kernels}"
    if path != "native/tvm":
        # bf16 weights run every matmul in bf16 already; the other paths compute in fp32 whatever the knob
        knobs = replace(knobs, prefill_dtype="bf16" if knobs.weight_format == "bf16" else "fp32")
        why = ("bf16 weights compute every matmul in bf16 already" if knobs.weight_format == "bf16"
               else f"{path} computes in fp32")
        # (a running engine's knobs come in as SET values; only the user's own SET is worth answering)
        user_set = not ctx.settings.is_auto("prefill_dtype") and facts.name not in ctx.running
        ignored = "SET prefill_dtype has no effect here" if user_set else "does not apply"
        note = f"{ignored}: only native/tvm has a bf16 prefill path; {why}"
        return Choice("prefill_dtype", knobs.prefill_dtype, cost_of(w, knobs, facts, ctx).seconds, note=note), knobs
    forced = not s.is_auto("prefill_dtype")
    order = [s.prefill_dtype, "bf16" if s.prefill_dtype == "fp32" else "fp32"] if forced else ["fp32", "bf16"]

    def note(chosen, other) -> str:
        seconds = {chosen[2]: chosen[0], other[2]: other[0]}
        saved = seconds["fp32"] - seconds["bf16"]
        if saved == 0:
            return f"no matmul here has {CROSSOVER.bf16_min_tokens} or more rows, so bf16 changes nothing"
        if saved < 0:
            return f"{BF16_PREFILL_LOSS}; bf16 is {-saved:.3g}s slower here"
        take = "" if chosen[2] == "bf16" else " — SET prefill_dtype = 'bf16' to take it"
        return f"{BF16_PREFILL_LOSS}; saves {saved:.3g}s{take}"
    return _pick("prefill_dtype", [(v, replace(knobs, prefill_dtype=v)) for v in order], w, facts, ctx, forced,
                 note, eligible=None if forced else ("fp32",))


def _pick_kv_cache_dtype(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """bf16 halves the KV bytes (more sequences fit the budget) but rounds K and V: auto takes it only
    where the weights are bf16 already, as the engine's own auto does. int8 (per-token scales, 0.27x the
    bytes) is priced too, and where the KV budget is what limits the batch EXPLAIN
    says what it would gain; it is taken only when SET."""
    s = ctx.settings_for(facts.name)
    forced = not s.is_auto("kv_cache_dtype")
    lossless = ("bf16", "fp32") if knobs.weight_format == "bf16" else ("fp32",)
    order = [s.kv_cache_dtype] if forced else list(lossless)
    order += [v for v in ("fp32", "bf16", "int8") if v not in order]
    candidates = [(v, replace(knobs, kv_cache_dtype=v)) for v in order]

    def note(chosen, other) -> str:
        if forced:
            return ""
        text = "bf16 and int8 are considered only when SET (they round K/V)" if "bf16" not in lossless else (
            "int8 is considered only when SET (it rounds K/V)")
        fp32_batch = _kv_batch(replace(knobs, kv_cache_dtype="fp32"), w, facts)
        int8_batch = _kv_batch(replace(knobs, kv_cache_dtype="int8"), w, facts)
        if int8_batch > fp32_batch:
            text += (f"; the KV budget holds {fp32_batch:.0f} sequences in fp32, {int8_batch:.0f} in int8 "
                     f"(SET kv_cache_dtype = 'int8')")
        return text
    return _pick("kv_cache_dtype", candidates, w, facts, ctx, forced, note, eligible=None if forced else lossless)


def _pick_kv_restore(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """Which KV tiers a cached block is loaded back from instead of recomputed (runtime/kv_tiers.py): each tier
    whose measured restore of one block costs less than prefilling its tokens at this plan's rate. The host tier
    is also where a preempted sequence's blocks go: with it preemption swaps, without it recomputes."""
    s = ctx.settings_for(facts.name)
    seconds = cost_of(w, knobs, facts, ctx).seconds
    forced = not s.is_auto("kv_restore")
    if not knobs.prefix_cache:
        return Choice("kv_restore", "none", seconds, forced=forced,
                      note="no prefix cache: blocks are never kept beyond the sequence"), replace(knobs, kv_restore="none")
    bs = knobs.kv_block_size
    block_bytes = kv_bytes_per_token(facts.config, knobs.resolved_kv_cache_dtype()) * bs
    one = cost_of(replace(w, requests=1.0, shared_tokens=0.0, static_prefix_tokens=0.0), knobs, facts, ctx)
    recompute = one.prefill_seconds / max(one.computed_prompt_tokens, 1.0) * bs
    load = {tier: kv_restore_seconds(tier, block_bytes, ctx.hardware) for tier in ("host", "disk")}
    best = ",".join(t for t in ("host", "disk") if load[t] < recompute) or "none"
    value = s.kv_restore if forced else best
    preemption = "swaps to host RAM" if "host" in value else "recomputes"
    note = (f"one {bs}-token block ({block_bytes / 1e6:.2f} MB): load from host {load['host'] * 1e3:.2f} ms, from "
            f"disk {load['disk'] * 1e3:.2f} ms, recompute {recompute * 1e3:.2f} ms; preemption {preemption}")
    runner_up = None if value == best else best
    return (Choice("kv_restore", value, seconds, runner_up, None if runner_up is None else seconds, forced, note=note),
            replace(knobs, kv_restore=value))


def _kv_batch(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts) -> float:
    """Sequences of this workload the KV budget holds at once."""
    per_seq = max(1.0, w.prompt_tokens + w.output_tokens + w.scored_tokens)
    return knobs.kv_cache_memory / kv_bytes_per_token(facts.config, knobs.resolved_kv_cache_dtype()) / per_seq


def _pick_attention_kernel(knobs: EngineConfig, w: LLMWorkload, facts: ModelFacts, ctx: OptimizerContext):
    """The attention operator's own kernel, by the measured speed of each backend: TVM's paged kernel
    reads the KV blocks in place; torch gathers them and runs SDPA. A SET kernels applies to it too."""
    s = ctx.settings_for(facts.name)
    running = ctx.running.get(facts.name)
    forced = running is not None or not s.is_auto("kernels")
    first = running.attention_kernel if running is not None else knobs.attention_kernel
    # unforced, TVM first: on a tie the engine's default wins
    available = (first,) + tuple(k for k in ctx.kernels if k != first) if forced else tuple(
        sorted(ctx.kernels, key=lambda k: k != "tvm"))
    return _pick("attention_kernel", [(k, replace(knobs, attention_kernel=k)) for k in available], w, facts, ctx,
                 forced)


def profile_for(op, stats, ctx: OptimizerContext, rows: float) -> PromptProfile:
    return prompt_profile(op, stats, ctx.model(op.model), rows)
