"""The rewrite rules, in the order they run. Names are a stable vocabulary:
`SET disabled_rules = 'prompt_dedup'` switches one off; EXPLAIN (VERBOSE) lists them."""
from planner.rules.cheap_predicates_first import cheap_predicates_first
from planner.rules.limit_pushdown import limit_pushdown
from planner.rules.predicate_pushdown import predicate_pushdown
from planner.rules.prefix_ordering import prefix_ordering
from planner.rules.projection_pruning import projection_pruning
from planner.rules.prompt_dedup import prompt_dedup

RULES = (
    predicate_pushdown,
    cheap_predicates_first,
    limit_pushdown,
    projection_pruning,
    prompt_dedup,
    prefix_ordering,
)

RULE_NAMES = tuple(r.__name__ for r in RULES)
