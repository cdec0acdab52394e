"""EXPLAIN renderer: a physical plan (and, for ANALYZE, what really happened) as text or JSON.

Operators only describe themselves (name, params, estimate, choices); all layout is here.
"""
from __future__ import annotations

import dataclasses
import json

from operators import physical as P
from operators.logical import SqlText
from planner.sql.dialect import Sqlm


def q_error(estimate: float, actual: float) -> float | None:
    """max(est/actual, actual/est); None when either side is zero."""
    if estimate <= 0 or actual <= 0:
        return None
    return max(estimate / actual, actual / estimate)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _param(v):
    """A param as JSON: expressions in sqlm's dialect, plain values as they are."""
    if isinstance(v, SqlText):
        return v.render(lambda e: e.sql(dialect=Sqlm))
    return v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v)


def node_dict(plan, node: int, actuals: dict | None) -> dict:
    op = plan.op(node)
    e = op.estimate
    d = {"operator": op.name, "params": {k: _param(v) for k, v in op.params()},
         "estimate": {"rows": e.rows, "seconds": e.seconds}}
    if isinstance(op, P.LLM_OPERATORS):
        d["estimate"].update(prompt_tokens=e.prompt_tokens, computed_prompt_tokens=e.computed_prompt_tokens,
                             output_tokens=e.output_tokens, kv_bytes=e.kv_bytes, llm_calls=e.llm_calls,
                             prefill_seconds=e.prefill_seconds, decode_seconds=e.decode_seconds,
                             overhead_seconds=e.overhead_seconds)
        d["choices"] = [{"knob": c.knob, "value": c.value, "seconds": c.seconds, "runner_up": c.runner_up,
                         "runner_up_seconds": c.runner_up_seconds, "forced": c.forced, "forced_by": c.forced_by,
                         "note": c.note}
                        for c in op.choices]
        d["operator_kernels"] = [dataclasses.asdict(k) for k in op.operator_kernels]
    if actuals is not None and node in actuals:
        a = actuals[node]
        d["actual"] = {"rows": a.rows, "seconds": a.seconds}
        d["q_error"] = {"rows": q_error(e.rows, a.rows)}
        if a.llm is not None:
            o = a.llm
            hit = o.num_cached_prompt_tokens / o.num_prompt_tokens if o.num_prompt_tokens else 0.0
            d["actual"].update(llm_calls=o.num_requests, distinct_inputs=a.distinct_inputs,
                               prompt_tokens=o.num_prompt_tokens, computed_prompt_tokens=o.num_computed_prompt_tokens,
                               cached_prompt_tokens=o.num_cached_prompt_tokens, output_tokens=o.num_generated_tokens,
                               prefix_cache_hit_rate=hit, engine_seconds=o.seconds, load_seconds=o.load_seconds)
            if o.cache_tier_hits:
                d["actual"]["cache_tier_hits"] = {t: o.cache_tier_hits.get(t, 0) for t in ("memory", "host", "disk")}
            if o.replica_rows:
                d["actual"].update(replica_rows=o.replica_rows, replica_pids=o.replica_pids)
            if o.num_draft_tokens:
                d["actual"].update(draft_tokens=o.num_draft_tokens, accepted_draft_tokens=o.num_accepted_draft_tokens,
                                   draft_acceptance=o.num_accepted_draft_tokens / o.num_draft_tokens)
            # the estimate prices the operator's work; loading weights happens once per connection
            d["q_error"].update(seconds=q_error(e.seconds, a.seconds - o.load_seconds),
                                prompt_tokens=q_error(e.prompt_tokens, o.num_prompt_tokens),
                                output_tokens=q_error(e.output_tokens, o.num_generated_tokens))
    d["children"] = [node_dict(plan, c, actuals) for c in plan.inputs(node)]
    return d


def _fmt_q(q) -> str:
    return "n/a" if q is None else f"{q:.2f}"


def _step_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _rows(n: float) -> str:
    return f"{n:,.0f} row{'' if round(n) == 1 else 's'}"


def _weight(k: dict) -> str:
    return " ".join(filter(None, (k["stored"], k["computed"])))


def _runs(k: dict) -> str:
    """An operator's kernels: one where both phases run the same, else each with the rows of its step."""
    decode, prefill = k["decode"], k["prefill"]
    if decode == prefill or not (decode and prefill):
        return decode or prefill
    return f"decode {decode} ({_rows(k['decode_rows'])}), prefill {prefill} ({_rows(k['prefill_rows'])})"


def _kernels_summary(kernels: list[dict]) -> str:
    """One line: operators that run alike grouped, with their weight and kernels."""
    groups: dict[tuple[str, str], list[str]] = {}
    for k in kernels:
        groups.setdefault((_weight(k), _runs(k)), []).append(k["operator"])
    return "; ".join(f"{', '.join(names)}{' ' + weight if weight else ''}{': ' + runs if runs else ''}"
                     for (weight, runs), names in groups.items())


def _kernel_line(k: dict) -> str:
    """One operator: its weight, each phase's kernel with the rows of a step and its estimated time, the
    runner-up weight path's time, and why."""
    parts = [_weight(k)] if _weight(k) else []
    for phase in ("decode", "prefill"):
        if k[phase]:
            est = f", est. {_step_time(k[f'{phase}_seconds'])}/step" if k[f"{phase}_seconds"] is not None else ""
            parts.append(f"{phase} {k[phase]} ({_rows(k[f'{phase}_rows'])}{est})")
    if k["runner_up"] is not None:
        times = ", ".join(_step_time(k[f"runner_up_{phase}_seconds"]) for phase in ("decode", "prefill") if k[phase])
        parts.append(f"runner-up {k['runner_up']} {times}")
    return f"kernel {k['operator']}: " + "; ".join(parts + ([k["why"]] if k["why"] else []))


def _text_node(d: dict, depth: int, lines: list[str], verbose: bool = False) -> None:
    pad = "  " * depth
    e = d["estimate"]
    head = f"{pad}{'-> ' if depth else ''}{d['operator']}  (est. rows={e['rows']:,.0f} time={e['seconds']:.3f}s"
    if "prompt_tokens" in e:
        head += (f" prompt_tokens={e['prompt_tokens']:,.0f} computed={e['computed_prompt_tokens']:,.0f}"
                 f" output_tokens={e['output_tokens']:,.0f} kv={_bytes(e['kv_bytes'])}")
    head += ")"
    if "actual" in d:
        a = d["actual"]
        head += f"  (actual rows={a['rows']:,} time={a['seconds']:.3f}s"
        if "llm_calls" in a:
            head += (f" engine={a['engine_seconds']:.3f}s load={a['load_seconds']:.1f}s"
                     f" llm_calls={a['llm_calls']:,} prompt_tokens={a['prompt_tokens']:,}"
                     f" computed={a['computed_prompt_tokens']:,} output_tokens={a['output_tokens']:,}"
                     f" prefix_cache_hit={a['prefix_cache_hit_rate']:.0%}")
            if "cache_tier_hits" in a:
                head += " cached_by_tier=" + "/".join(f"{t} {n:,}" for t, n in a["cache_tier_hits"].items())
            if "replica_rows" in a:
                head += f" replicas: {' + '.join(map(str, a['replica_rows']))} requests in {len(a['replica_pids'])} processes"
            if "draft_tokens" in a:
                head += (f" speculative: accepted {a['accepted_draft_tokens']:,} of {a['draft_tokens']:,} drafts"
                         f" ({a['draft_acceptance']:.0%})")
        head += ")"
    lines.append(head)
    inner = pad + ("     " if depth else "   ")
    for k, v in d["params"].items():
        lines.append(f"{inner}{k}: {_value(v)}")
    if "overhead_seconds" in e:
        lines.append(f"{inner}est. time: prefill {e['prefill_seconds']:.3f}s, decode {e['decode_seconds']:.3f}s, "
                     f"overhead {e['overhead_seconds']:.3f}s")
    for c in d.get("choices", []):
        forced = f" [forced by {c['forced_by']}]" if c["forced"] else ""
        alt = ""
        if c["runner_up"] is not None and c["runner_up_seconds"] is not None:
            alt = f"; runner-up {_value(c['runner_up'])} est. {c['runner_up_seconds']:.2f}s"
        note = f"; {c['note']}" if c["note"] else ""
        lines.append(f"{inner}choice {c['knob']} = {_value(c['value'])} (est. {c['seconds']:.2f}s{alt}){forced}{note}")
    if d.get("operator_kernels"):
        lines.append(f"{inner}kernels: {_kernels_summary(d['operator_kernels'])}")
        if verbose:
            lines += [f"{inner}{_kernel_line(k)}" for k in d["operator_kernels"]]
    if "q_error" in d:
        q = d["q_error"]
        lines.append(f"{inner}q-error: " + ", ".join(f"{k}={_fmt_q(v)}" for k, v in q.items()))
    for child in d["children"]:
        _text_node(child, depth + 1, lines, verbose)


def plan_dict(physical, actuals: dict | None = None, total_seconds: float | None = None, verbose: bool = False) -> dict:
    plan = physical.plan
    d = {"output_columns": list(physical.output_names), "estimated_seconds": physical.estimated_seconds,
         "plan": node_dict(plan, plan.root, actuals)}
    if actuals is not None and total_seconds is not None:
        load = sum(a.llm.load_seconds for a in actuals.values() if a.llm is not None)
        d["actual_seconds"] = total_seconds
        d["model_load_seconds"] = load
        d["q_error_total_seconds"] = q_error(physical.estimated_seconds, total_seconds - load)
    if verbose:
        d["rules"] = [{"rule": r.name, "status": r.status, "seconds": r.seconds} for r in physical.rules]
    return d


def render_text(physical, actuals: dict | None = None, total_seconds: float | None = None, verbose: bool = False) -> str:
    d = plan_dict(physical, actuals, total_seconds, verbose)
    lines: list[str] = []
    _text_node(d["plan"], 0, lines, verbose)
    lines.append(f"Estimated total: {d['estimated_seconds']:.2f}s")
    if "actual_seconds" in d:
        lines.append(f"Actual total: {d['actual_seconds']:.2f}s, of which model loading {d['model_load_seconds']:.1f}s "
                     f"(q-error without loading: {_fmt_q(d['q_error_total_seconds'])})")
    if verbose:
        lines.append("Rules:")
        lines += [f"  {r['rule']}: {r['status']} ({r['seconds'] * 1000:.1f} ms)" for r in d["rules"]]
    return "\n".join(lines)


def render_json(physical, actuals: dict | None = None, total_seconds: float | None = None, verbose: bool = False) -> str:
    return json.dumps(plan_dict(physical, actuals, total_seconds, verbose), indent=2, default=str)
