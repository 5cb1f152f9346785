"""Domain pairs and cross-model consensus with three nulls (docs/method.md §6).

A *domain pair* is (source domain, target domain) of an edge whose two ends are both annotated;
a domain is keyed by its label id (e.g. ``GO:0006915``) and shown by its name. The consensus of
several groups of conditions (e.g. ``geneformer`` = two runs, ``scgpt`` = one run) is the
intersection across groups of the union of pairs within each group.

Nulls for the consensus size:

- *label permutation* (the published null, made reproducible): the domain names of every group
  but the first are relabelled by a random bijection of that group's own domains (taken in
  sorted order, so a seed gives the same draws on any machine);
- *degree-preserving rewiring*: the pair graph of every group but the first is rewired by
  directed double-edge swaps ``(a->b, c->d) -> (a->d, c->b)``, which keep every domain's out- and
  in-degree and forbid duplicate pairs;
- *edge permutation* (the headline null): the target domains of every non-first group's
  circuit edges (each pair counted ``n_edges`` times) are shuffled among its edges that are
  not self pairs, never creating one, and collapsed back to pairs. Each domain keeps its number
  of outgoing and incoming edges (its popularity in that model) and each group keeps its self
  pairs ``(a, a)``, which are therefore reported separately (:func:`self_pair_summary`).

Why a third null. The label permutation keeps which pairs share a domain but not *which*
domains are popular: two independent pair sets drawn from the same skewed domain popularity
(generic GO terms are frequent in every model) overlap far above it (fold 3-7 in
``tests/test_nulls.py``). Pair-level rewiring keeps the popularity, but turns most self pairs
into ordinary pairs (a random graph has few self loops), so two models that each have many
self pairs overlap above it on those alone; and because it treats every distinct pair alike it
spreads out the popular pairs that edges hit again and again (fold about 1.07, p < 0.05 in
15-30% of independent draws). The edge permutation keeps both; ``tests/test_nulls.py``
measures all three on both cases.

Each null gives expected size, fold enrichment = observed / expected, and permutation
p = (1 + #null >= observed) / (1 + N).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..stats import permutation_p

Pair = tuple[str, str]


def domain_pairs(edges: pd.DataFrame) -> pd.DataFrame:
    """Domain pairs of the edges with both ends annotated, one row per (source, target) domain.

    Columns: source_domain, target_domain (label ids), source_name, target_name, n_edges,
    n_edges_capped, mean_abs_d, mean_d, frac_d_negative.
    """
    cols = ["source_domain", "target_domain", "source_name", "target_name", "n_edges",
            "n_edges_capped", "mean_abs_d", "mean_d", "frac_d_negative"]
    e = edges[edges["source_annotated"] & edges["target_annotated"]]
    if len(e) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if "domain" in c or "name" in c else "float64") for c in cols})
    e = e.assign(abs_d=e["cohens_d"].abs(), neg=e["cohens_d"] < 0, source_domain=e["source_label_id"],
                 target_domain=e["target_label_id"])
    out = e.groupby(["source_domain", "target_domain"], sort=True).agg(
        source_name=("source_label", "first"), target_name=("target_label", "first"),
        n_edges=("abs_d", "size"), n_edges_capped=("in_cap", "sum"), mean_abs_d=("abs_d", "mean"),
        mean_d=("cohens_d", "mean"), frac_d_negative=("neg", "mean")).reset_index()
    out["n_edges_capped"] = out["n_edges_capped"].astype(np.int64)
    return out[cols]


def pair_set(pairs: pd.DataFrame) -> set[Pair]:
    """The (source_domain, target_domain) tuples of a pair table."""
    return set(zip(pairs["source_domain"], pairs["target_domain"]))


def consensus(group_sets: dict[str, set[Pair]]) -> set[Pair]:
    """Intersection across groups of each group's pair set (each already the union of its conditions)."""
    sets = list(group_sets.values())
    if not sets:
        return set()
    out = set(sets[0])
    for s in sets[1:]:
        out &= s
    return out


class _Encoded:
    """Pairs of every group as integer codes ``source * V + target`` over one sorted domain vocabulary."""

    def __init__(self, group_sets: dict[str, set[Pair]]):
        self.names = list(group_sets)
        self.vocab = sorted({d for s in group_sets.values() for p in s for d in p})
        code = {d: i for i, d in enumerate(self.vocab)}
        self.V = max(len(self.vocab), 1)
        self.src, self.tgt = {}, {}
        for g, s in group_sets.items():
            ps = sorted(s)
            self.src[g] = np.array([code[a] for a, _ in ps], dtype=np.int64)
            self.tgt[g] = np.array([code[b] for _, b in ps], dtype=np.int64)

    def codes(self, g: str) -> np.ndarray:
        return np.unique(self.src[g] * self.V + self.tgt[g])

    def overlap(self, fixed: np.ndarray, others: dict[str, np.ndarray]) -> int:
        cur = fixed
        for c in others.values():
            cur = np.intersect1d(cur, c, assume_unique=False)
        return int(cur.size)


def label_permutation_null(group_sets: dict[str, set[Pair]], n_perm: int = 1000, seed: int = 42,
                           progress: bool = False) -> np.ndarray:
    """Consensus sizes when each group but the first has its domains relabelled by a random bijection.

    The bijection of a group maps its own domains (sorted) onto themselves, as in the published
    null over scGPT domains. Returns an int array of shape (n_perm,).
    """
    enc = _Encoded(group_sets)
    first, rest = enc.names[0], enc.names[1:]
    fixed = enc.codes(first)
    rng = np.random.default_rng(seed)
    domains = {g: np.unique(np.concatenate([enc.src[g], enc.tgt[g]])) for g in rest}
    null = np.zeros(n_perm, dtype=np.int64)
    for r in tqdm(range(n_perm), desc="label-permutation null", disable=not progress):
        others = {}
        for g in rest:
            mapping = np.arange(enc.V)
            mapping[domains[g]] = domains[g][rng.permutation(domains[g].size)]
            others[g] = np.unique(mapping[enc.src[g]] * enc.V + mapping[enc.tgt[g]])
        null[r] = enc.overlap(fixed, others)
    return null


def rewire(src: np.ndarray, tgt: np.ndarray, n_swaps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Attempt ``n_swaps`` directed double-edge swaps; out- and in-degrees are preserved exactly.

    A swap (a->b, c->d) -> (a->d, c->b) is rejected when it would create a duplicate pair or
    change nothing. Returns new (src, tgt) arrays.
    """
    src = np.array(src, dtype=np.int64)
    tgt = np.array(tgt, dtype=np.int64)
    m = src.size
    if m < 2:
        return src, tgt
    present = set(zip(src.tolist(), tgt.tolist()))
    picks = rng.integers(0, m, size=(n_swaps, 2))
    for i, j in picks.tolist():
        a, b, c, d = src[i], tgt[i], src[j], tgt[j]
        if a == c or b == d or (a, d) in present or (c, b) in present:
            continue
        present.discard((a, b))
        present.discard((c, d))
        present.add((a, d))
        present.add((c, b))
        tgt[i], tgt[j] = d, b
    return src, tgt


def rewiring_null(group_sets: dict[str, set[Pair]], n_draws: int = 1000, seed: int = 42,
                  swaps_per_draw: float = 1.0, burn_in: float = 10.0, progress: bool = False) -> np.ndarray:
    """Consensus sizes when the pair graph of each group but the first is degree-preservingly rewired.

    One Markov chain per group: ``burn_in x n_pairs`` swap attempts first, then
    ``swaps_per_draw x n_pairs`` attempts between successive draws. Returns (n_draws,) ints.
    """
    enc = _Encoded(group_sets)
    first, rest = enc.names[0], enc.names[1:]
    fixed = enc.codes(first)
    rng = np.random.default_rng(seed)
    state = {g: (enc.src[g], enc.tgt[g]) for g in rest}
    for g in rest:
        state[g] = rewire(*state[g], int(burn_in * enc.src[g].size), rng)
    null = np.zeros(n_draws, dtype=np.int64)
    for r in tqdm(range(n_draws), desc="rewiring null", disable=not progress):
        if r:
            for g in rest:
                state[g] = rewire(*state[g], max(int(swaps_per_draw * enc.src[g].size), 1), rng)
        null[r] = enc.overlap(fixed, {g: np.unique(s * enc.V + t) for g, (s, t) in state.items()})
    return null


def self_pair_summary(group_sets: dict[str, set[Pair]]) -> dict:
    """Self pairs (a domain feeding the same domain) per group and in the consensus.

    The edge-permutation null holds them fixed, so they are reported here, not tested.
    """
    selfs = {g: {p for p in s if p[0] == p[1]} for g, s in group_sets.items()}
    both = consensus(selfs)
    n_cons = len(consensus(group_sets))
    return {"self_pairs_per_group": {g: len(s) for g, s in selfs.items()},
            "n_consensus_self_pairs": len(both), "n_consensus_other_pairs": n_cons - len(both)}


def null_summary(observed: int, null: np.ndarray) -> dict:
    """Expected size, its sd, fold enrichment and permutation p of an observed consensus size."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0:
        return {"observed": int(observed), "expected": float("nan"), "null_sd": float("nan"),
                "fold_enrichment": float("nan"), "p_value": float("nan"), "n_draws": 0}
    mean = float(null.mean())
    return {"observed": int(observed), "expected": mean,
            "null_sd": float(null.std(ddof=1)) if null.size > 1 else float("nan"),
            "fold_enrichment": observed / mean if mean > 0 else float("inf") if observed else float("nan"),
            "p_value": permutation_p(observed, null), "n_draws": int(null.size)}


def consensus_table(group_pairs: dict[str, pd.DataFrame], high_conf_abs_d: float = 1.0) -> pd.DataFrame:
    """One row per consensus pair: names, n_edges and mean |d| in each group, ``high_confidence``
    (mean |d| > ``high_conf_abs_d`` in every group)."""
    cons = consensus({g: pair_set(p) for g, p in group_pairs.items()})
    rows = pd.DataFrame(sorted(cons), columns=["source_domain", "target_domain"])
    if not len(rows):
        return rows.assign(source_name=[], target_name=[], high_confidence=[])
    names = None
    hc = np.ones(len(rows), dtype=bool)
    for g, p in group_pairs.items():
        sub = p.set_index(["source_domain", "target_domain"]).loc[list(map(tuple, rows.to_numpy()))]
        if names is None:
            names = sub[["source_name", "target_name"]].to_numpy()
        rows[f"n_edges_{g}"] = sub["n_edges"].to_numpy()
        rows[f"mean_abs_d_{g}"] = sub["mean_abs_d"].to_numpy()
        rows[f"mean_d_{g}"] = sub["mean_d"].to_numpy()
        hc &= sub["mean_abs_d"].to_numpy() > high_conf_abs_d
    rows.insert(2, "source_name", names[:, 0])
    rows.insert(3, "target_name", names[:, 1])
    rows["high_confidence"] = hc
    return rows


def _self_free_permutation(src: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, max_rounds: int = 50) -> np.ndarray:
    """Targets ``tgt`` randomly permuted over the edges such that no edge gets ``src == tgt``.

    A uniform permutation is drawn first; each edge that became a self pair then swaps its
    target with a random edge where the swap creates no self pair (repeated until none is
    left, at most ``max_rounds`` rounds; left-overs keep the swap-free draw).
    """
    t = tgt[rng.permutation(tgt.size)]
    for _ in range(max_rounds):
        bad = np.flatnonzero(src == t)
        if bad.size == 0:
            break
        other = rng.integers(0, t.size, size=bad.size)
        ok = (src[bad] != t[other]) & (src[other] != t[bad]) & (other != bad)
        i, j = bad[ok], other[ok]
        i, first = np.unique(i, return_index=True)
        j = j[first]
        keep = ~np.isin(j, i)  # one swap per edge per round
        i, j = i[keep], j[keep]
        _, first = np.unique(j, return_index=True)
        i, j = i[first], j[first]
        t[i], t[j] = t[j], t[i].copy()
    return t


def edge_permutation_null(group_pairs: dict[str, pd.DataFrame], n_draws: int = 1000, seed: int = 42,
                          progress: bool = False) -> np.ndarray:
    """Consensus sizes when each group but the first has its edges' target domains permuted (headline null).

    Works at the level of circuit edges (a pair table's ``n_edges`` copies of each pair): the
    target domains of a group's edges are shuffled among its edges that are not self pairs,
    never creating a self pair, and the permuted edges are collapsed back to a pair set. Every
    domain therefore keeps its number of outgoing and incoming edges (its popularity in that
    model) and the self pairs stay as observed. When edges arise independently from per-domain
    popularities this is an exact null: every self-free arrangement of the same edge degrees is
    equally likely. Unlike the pair-level rewiring it also reproduces that popular domain pairs
    recur (a pair hit by several edges is still one pair), which pair-level rewiring spreads
    out. Returns (n_draws,) ints.
    """
    names = list(group_pairs)
    sets = {g: pair_set(p) for g, p in group_pairs.items()}
    enc = _Encoded(sets)
    fixed = enc.codes(names[0])
    code = {d: i for i, d in enumerate(enc.vocab)}
    rng = np.random.default_rng(seed)
    edges, kept = {}, {}
    for g in names[1:]:
        p = group_pairs[g]
        s = np.array([code[d] for d in p["source_domain"]], dtype=np.int64)
        t = np.array([code[d] for d in p["target_domain"]], dtype=np.int64)
        n = np.maximum(np.asarray(p["n_edges"], dtype=np.int64), 1)
        loop = s == t
        kept[g] = s[loop] * enc.V + t[loop]
        edges[g] = (np.repeat(s[~loop], n[~loop]), np.repeat(t[~loop], n[~loop]))
    null = np.zeros(n_draws, dtype=np.int64)
    for r in tqdm(range(n_draws), desc="edge-permutation null", disable=not progress):
        others = {g: np.unique(np.concatenate([s * enc.V + _self_free_permutation(s, t, rng), kept[g]]))
                  for g, (s, t) in edges.items()}
        null[r] = enc.overlap(fixed, others)
    return null
