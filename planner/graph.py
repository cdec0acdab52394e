"""The logical plan: a networkx DiGraph of operators/logical nodes.

Edges run from an input to its consumer (the direction rows flow), each carrying
`slot` (0 = left/only input, 1 = right). The root is the one node nothing consumes.
Rules never mutate a plan they were given: they `copy()` and edit the copy.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx


@dataclass
class Plan:
    graph: nx.DiGraph
    root: int
    output_names: tuple[str, ...]  # user-facing names of the root's columns, in order
    tables: tuple = ()  # (name, catalog.sources.TableSource): tables its SQL text reads by name (subqueries)

    _ids = itertools.count(1_000_000)  # fresh node ids for nodes rules add

    @staticmethod
    def chain(*ops, output_names: tuple[str, ...] = ()) -> Plan:
        """A linear plan, bottom first. Handy in tests and doctests."""
        g = nx.DiGraph()
        for i, op in enumerate(ops):
            g.add_node(i, op=op)
            if i:
                g.add_edge(i - 1, i, slot=0)
        return Plan(g, len(ops) - 1, output_names)

    def copy(self) -> Plan:
        return Plan(self.graph.copy(), self.root, self.output_names, self.tables)

    def op(self, node: int):
        return self.graph.nodes[node]["op"]

    def set_op(self, node: int, op) -> None:
        self.graph.nodes[node]["op"] = op

    def inputs(self, node: int) -> list[int]:
        preds = self.graph.pred[node]  # input -> edge attributes; read directly, as every rule asks per node
        return sorted(preds, key=lambda u: preds[u]["slot"]) if len(preds) > 1 else list(preds)

    def consumer(self, node: int) -> int | None:
        succ = list(self.graph.successors(node))
        return succ[0] if succ else None

    def add(self, op) -> int:
        node = next(Plan._ids)
        self.graph.add_node(node, op=op)
        return node

    def insert_above(self, below: int, op) -> int:
        """A new single-input node between `below` and its consumer."""
        node = self.add(op)
        parent = self.consumer(below)
        if parent is None:
            self.root = node
        else:
            slot = self.graph.edges[below, parent]["slot"]
            self.graph.remove_edge(below, parent)
            self.graph.add_edge(node, parent, slot=slot)
        self.graph.add_edge(below, node, slot=0)
        return node

    def remove(self, node: int) -> None:
        """Splice out a single-input node: its input takes its place."""
        (child,) = self.inputs(node)
        parent = self.consumer(node)
        slot = self.graph.edges[node, parent]["slot"] if parent is not None else 0
        self.graph.remove_node(node)
        if parent is None:
            self.root = child
        else:
            self.graph.add_edge(child, parent, slot=slot)

    def move_below(self, node: int, target: int) -> None:
        """Splice single-input `node` out and re-insert it directly below `target` (on its slot-0 input)."""
        self.remove(node)
        below = self.inputs(target)[0]
        slot = self.graph.edges[below, target]["slot"]
        self.graph.remove_edge(below, target)
        self.graph.add_edge(below, node, slot=0)
        self.graph.add_edge(node, target, slot=slot)

    def walk(self) -> list[int]:
        """Nodes bottom-up (inputs before consumers)."""
        return list(nx.topological_sort(self.graph))

    def columns(self, node: int) -> tuple[str, ...]:
        return self.op(node).columns([self.columns(i) for i in self.inputs(node)])

    def describe(self, node: int | None = None, depth: int = 0) -> str:
        """One line per node, root first: the shape tests compare against."""
        node = self.root if node is None else node
        lines = ["  " * depth + self.op(node).name]
        for child in self.inputs(node):
            lines.append(self.describe(child, depth + 1))
        return "\n".join(lines)
