"""The circuit graph for Cytoscape / Gephi users: GraphML via networkx.

Nodes are features ``"L<layer>:F<feature>"`` with attributes layer, feature, label, label_id;
edges carry cohens_d, abs_d, consistency, n_cells, q_value (when present) and in_cap.
GraphML has no null: missing numbers are written as NaN and missing strings as "".
"""

from __future__ import annotations

import io
import math
import os

import networkx as nx
import pandas as pd

from ..rundir import atomic_write_bytes

_EDGE_ATTRS = ("cohens_d", "consistency", "consistency_nonzero", "n_cells", "mean_delta", "p_value", "q_value")


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def circuit_graph(edges: pd.DataFrame) -> nx.DiGraph:
    """A DiGraph of the circuit (one edge per row of the normalised edge table)."""
    g = nx.DiGraph()
    for side in ("source", "target"):
        cols = [f"{side}_layer", f"{side}_feature", f"{side}_label", f"{side}_label_id"]
        for l, f, lab, lid in edges[cols].drop_duplicates().itertuples(index=False):
            g.add_node(f"L{int(l)}:F{int(f)}", layer=int(l), feature=int(f), label=str(lab), label_id=str(lid or ""))
    attrs = [c for c in _EDGE_ATTRS if c in edges]
    for r in edges.itertuples(index=False):
        row = r._asdict()
        data = {c: _num(row[c]) for c in attrs}
        data["abs_d"] = abs(_num(row["cohens_d"]))
        data["in_cap"] = bool(row["in_cap"])
        if "model" in row:
            data["model"] = str(row["model"])
        g.add_edge(f"L{int(row['source_layer'])}:F{int(row['source_feature'])}",
                   f"L{int(row['target_layer'])}:F{int(row['target_feature'])}", **data)
    return g


def write_graphml(g: nx.Graph, path: str | os.PathLike) -> None:
    """Write a graph as GraphML atomically."""
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    atomic_write_bytes(path, buf.getvalue())
