"""Domain pairs and cross-model consensus with two nulls (docs/method.md §6).

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
  in-degree and forbid duplicate pairs.

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
