"""The domain meta-graph: PageRank, feedback loops, strongly connected components, depth.

Nodes are domains, a directed edge A -> B exists when some circuit edge goes from a feature
labelled A to one labelled B (weight = number of circuit edges). Depth of a domain = mean of
layer / (n_layers - 1) over its features in the circuit, so models of different depth compare.

Caution: targets are always at later layers than sources by construction of the tracing, so
"downstream domains sit deeper" is not a finding; depth is descriptive only.
"""

from __future__ import annotations

import networkx as nx
import pandas as pd

DEPTH_NOTE = ("targets lie at later layers than sources by construction of the tracing; "
              "do not read 'downstream processes sit deeper' as a finding")


def domain_graph(pairs: pd.DataFrame) -> nx.DiGraph:
    """Directed graph of domain pairs (weight = n_edges), names as node attribute ``name``."""
    g = nx.DiGraph()
    for r in pairs.itertuples(index=False):
        g.add_node(r.source_domain, name=r.source_name)
        g.add_node(r.target_domain, name=r.target_name)
        g.add_edge(r.source_domain, r.target_domain, weight=float(r.n_edges), mean_abs_d=float(r.mean_abs_d))
    return g


def domain_depths(edges: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per domain: number of distinct features, mean layer and mean relative depth layer/(n_layers-1)."""
    parts = []
    for side in ("source", "target"):
        e = edges[edges[f"{side}_annotated"]]
        parts.append(pd.DataFrame({"domain": e[f"{side}_label_id"].to_numpy(), "layer": e[f"{side}_layer"].to_numpy(),
                                   "feature": e[f"{side}_feature"].to_numpy()}))
    f = pd.concat(parts).drop_duplicates()
    denom = max(n_layers - 1, 1)
    out = f.groupby("domain").agg(n_features=("feature", "size"), mean_layer=("layer", "mean")).reset_index()
    out["mean_relative_depth"] = out["mean_layer"] / denom
    return out


def feedback_loops(g: nx.DiGraph) -> dict:
    """Reciprocal pairs (A->B and B->A), 3-cycles and self-loops of the meta-graph."""
    recip = sorted((u, v) for u, v in g.edges if u < v and g.has_edge(v, u))
    h = g.copy()
    h.remove_edges_from(list(nx.selfloop_edges(h)))
    tri = [c for c in nx.simple_cycles(h, length_bound=3) if len(c) == 3]
    tri = sorted(tuple(c[c.index(min(c)):] + c[:c.index(min(c))]) for c in tri)
    return {"reciprocal_pairs": recip, "three_cycles": tri, "self_loops": sorted(u for u, _ in nx.selfloop_edges(g))}


def hierarchy(pairs: pd.DataFrame, depths: pd.DataFrame | None = None, alpha: float = 0.85) -> tuple[pd.DataFrame, dict]:
    """Node table (domain, name, pagerank, out/in degree, scc, depth) and a summary dict."""
    g = domain_graph(pairs)
    if g.number_of_nodes() == 0:
        return pd.DataFrame(columns=["domain", "name", "pagerank", "out_degree", "in_degree", "scc", "scc_size"]), {
            "n_domains": 0, "n_domain_pairs": 0, "depth_note": DEPTH_NOTE}
    pr = nx.pagerank(g, alpha=alpha, weight="weight")
    sccs = sorted((sorted(c) for c in nx.strongly_connected_components(g)), key=lambda c: (-len(c), c[0]))
    scc_of = {n: i for i, c in enumerate(sccs) for n in c}
    nodes = sorted(g.nodes)
    t = pd.DataFrame({
        "domain": nodes,
        "name": [g.nodes[n].get("name", n) for n in nodes],
        "pagerank": [pr[n] for n in nodes],
        "out_degree": [g.out_degree(n) for n in nodes],
        "in_degree": [g.in_degree(n) for n in nodes],
        "scc": [scc_of[n] for n in nodes],
        "scc_size": [len(sccs[scc_of[n]]) for n in nodes],
    })
    if depths is not None:
        t = t.merge(depths, on="domain", how="left")
    t = t.sort_values(["pagerank", "domain"], ascending=[False, True]).reset_index(drop=True)
    loops = feedback_loops(g)
    sizes = [len(c) for c in sccs]
    summary = {
        "n_domains": g.number_of_nodes(),
        "n_domain_pairs": g.number_of_edges(),
        "pagerank_alpha": alpha,
        "n_reciprocal_pairs": len(loops["reciprocal_pairs"]),
        "n_three_cycles": len(loops["three_cycles"]),
        "n_self_loops": len(loops["self_loops"]),
        "n_scc": len(sccs),
        "n_nontrivial_scc": int(sum(s > 1 for s in sizes)),
        "largest_scc_size": int(max(sizes)),
        "top_pagerank": t.head(10)[["domain", "name", "pagerank"]].to_dict("records"),
        "reciprocal_pairs": [list(p) for p in loops["reciprocal_pairs"][:100]],
        "three_cycles": [list(c) for c in loops["three_cycles"][:100]],
        "depth_note": DEPTH_NOTE,
    }
    return t, summary
