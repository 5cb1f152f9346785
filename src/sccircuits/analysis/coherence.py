"""Biological coherence of a circuit and its permutation null (docs/method.md §6).

Coherence = the fraction of edges, among edges whose two ends both carry functional
annotation, whose significant term sets intersect. Only functional libraries count (GO, KEGG,
Reactome by default): STRING / TRRUST "annotations" are never terms (the reference counted
them, see docs/method.md §4).

Null: within each layer, the term sets of annotated features are shuffled among features of
the same *annotation richness* stratum (number of significant terms, binned by powers of two:
1, 2-3, 4-7, ...), and the coherence of the same edges is recomputed. A feature rich in terms
therefore keeps a similarly rich (random) set, so the null is not fooled by hubs that are
annotated with many terms. Fold enrichment = observed / mean null; permutation
p = (1 + #null >= observed) / (1 + N).

Persistence control. The residual stream carries a feature forward: an edge from a feature to
its own continuation in a later layer joins two features with largely the same top genes, so
their term sets intersect by construction, not because the circuit links two functions. The
stratified null breaks that link and is fooled by it. :func:`persistence_mask` flags edges
whose two ends share most top genes (overlap coefficient ``|A & B| / min(|A|, |B|)`` >=
``min_overlap``, default 0.5); :func:`coherence_with_persistence_control` reports coherence
and its null on the other edges (the headline) and the persistent edges' coherence apart. The
null of the non-persistent edges may pair features that share genes, which can only raise it
(conservative). ``tests/test_nulls.py`` measures both on a circuit built of continuation edges
plus random edges.

Everything is vectorised: per (source layer, target layer) the "term sets intersect" matrix of
all annotated features is one sparse product, and a permutation only re-indexes it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tqdm.auto import tqdm

from ..stats import permutation_p, stratified_permutations

EXCLUDED_LIBRARIES = ("string", "trrust")
TermSets = dict[int, dict[int, frozenset[str]]]  # layer -> feature -> significant term ids


def is_functional_library(library: str, prefixes=("go", "kegg", "reactome")) -> bool:
    """Whether a library name counts for coherence: starts with one of ``prefixes``
    (case-insensitive, ignoring non-letters) and is never a STRING / TRRUST library."""
    key = re.sub(r"[^a-z0-9]", "", str(library).lower())
    if any(x in key for x in EXCLUDED_LIBRARIES):
        return False
    return any(key.startswith(re.sub(r"[^a-z0-9]", "", p.lower())) for p in prefixes)


def term_sets_from_enrichment(enrichment: dict[int, pd.DataFrame], prefixes=("go", "kegg", "reactome"),
                              q_max: float = 0.05) -> TermSets:
    """Significant (q < q_max) functional term ids of each feature, per layer (features without any are left out)."""
    out: TermSets = {}
    for layer, df in enrichment.items():
        libs = df["library"].astype(str)
        ok = libs.map(lambda l: is_functional_library(l, prefixes)).to_numpy(bool) & (df["q_value"].to_numpy(float) < q_max)
        if "kind" in df:  # the annotation stage marks STRING/TRRUST rows kind="network"
            ok &= (df["kind"].astype(str) == "gene_set").to_numpy()
        sig = df.loc[ok, ["feature", "term_id"]]
        out[int(layer)] = {int(f): frozenset(g["term_id"].astype(str)) for f, g in sig.groupby("feature")}
    return out


def richness_strata(n_terms) -> np.ndarray:
    """Stratum of each feature by its number of significant terms: floor(log2(n)) (1 -> 0, 2-3 -> 1, 4-7 -> 2, ...)."""
    n = np.asarray(n_terms, dtype=np.int64)
    return np.floor(np.log2(np.maximum(n, 1))).astype(np.int64)


def stratified_permutation(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation ``perm`` with ``strata[perm[i]] == strata[i]`` for every i."""
    return stratified_permutations(strata, 1, rng)[0]


class _Layer:
    """The annotated features of one layer: sorted feature ids, term incidence matrix, strata."""

    def __init__(self, sets: dict[int, frozenset[str]], vocab: dict[str, int]):
        self.features = np.array(sorted(sets), dtype=np.int64)
        rows, cols = [], []
        for i, f in enumerate(self.features):
            for t in sets[int(f)]:
                rows.append(i)
                cols.append(vocab[t])
        self.matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                    shape=(self.features.size, len(vocab)))
        self.strata = richness_strata(np.diff(self.matrix.indptr))

    def index(self, features) -> np.ndarray:
        """Row of each feature id (-1 when the feature is not annotated)."""
        features = np.asarray(features, dtype=np.int64)
        if self.features.size == 0:
            return np.full(features.size, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.features, features), 0, self.features.size - 1)
        return np.where(self.features[pos] == features, pos, -1)


def coherence_test(edges: pd.DataFrame, term_sets: TermSets, n_perm: int = 1000, seed: int = 0,
                   chunk: int = 100, progress: bool = False) -> tuple[dict, np.ndarray]:
    """Observed coherence of ``edges``, its stratified-shuffle null and permutation p.

    Returns (result dict, null coherence fractions of shape (n_perm,)). Edges count only when
    both ends have at least one significant functional term.
    """
    vocab = {t: i for i, t in enumerate(sorted({t for layer in term_sets.values() for s in layer.values() for t in s}))}
    layers = {l: _Layer(s, vocab) for l, s in term_sets.items()}
    empty = _Layer({}, vocab)
    src = np.asarray(edges["source_layer"], np.int64)
    tgt = np.asarray(edges["target_layer"], np.int64)
    si = np.full(len(edges), -1)
    ti = np.full(len(edges), -1)
    for l in np.unique(src):
        m = src == l
        si[m] = layers.get(int(l), empty).index(np.asarray(edges["source_feature"], np.int64)[m])
    for l in np.unique(tgt):
        m = tgt == l
        ti[m] = layers.get(int(l), empty).index(np.asarray(edges["target_feature"], np.int64)[m])
    both = (si >= 0) & (ti >= 0)
    n_ann = int(both.sum())
    result = {"n_edges": int(len(edges)), "n_edges_annotated": n_ann, "n_coherent": 0,
              "coherence": float("nan"), "null_mean": float("nan"), "null_sd": float("nan"),
              "fold_enrichment": float("nan"), "p_value": float("nan"), "n_perm": int(n_perm)}
    if n_ann == 0:
        result["reason"] = "no edge has significant functional terms at both ends"
        return result, np.zeros(0)

    src, tgt, si, ti = src[both], tgt[both], si[both], ti[both]
    # random permutations of each layer's annotated features (only the rows the edges use are kept)
    rng = np.random.default_rng(seed)
    used = {int(l): np.unique(np.concatenate([si[src == l], ti[tgt == l]])) for l in np.unique(np.concatenate([src, tgt]))}
    perms = {l: np.empty((n_perm, u.size), dtype=np.int64) for l, u in used.items()}
    for r in tqdm(range(n_perm), desc="coherence null", disable=not progress):
        for l in sorted(used):
            perms[l][r] = stratified_permutation(layers[l].strata, rng)[used[l]]

    observed = 0
    null = np.zeros(n_perm, dtype=np.int64)
    pairs = pd.DataFrame({"s": src, "t": tgt}).groupby(["s", "t"]).indices
    for (ls, lt), idx in pairs.items():
        inter = (layers[ls].matrix @ layers[lt].matrix.T).toarray() > 0  # features of ls x features of lt
        observed += int(inter[si[idx], ti[idx]].sum())
        ps = np.searchsorted(used[ls], si[idx])
        pt = np.searchsorted(used[lt], ti[idx])
        for start in range(0, n_perm, chunk):
            sl = slice(start, start + chunk)
            null[sl] += inter[perms[ls][sl][:, ps], perms[lt][sl][:, pt]].sum(axis=1)

    null_frac = null / n_ann
    obs = observed / n_ann
    mean = float(null_frac.mean()) if n_perm else float("nan")
    result.update({
        "n_coherent": observed,
        "coherence": obs,
        "null_mean": mean,
        "null_sd": float(null_frac.std(ddof=1)) if n_perm > 1 else float("nan"),
        "fold_enrichment": (obs / mean) if n_perm and mean > 0 else float("nan"),
        "p_value": permutation_p(obs, null_frac) if n_perm else float("nan"),
    })
    return result, null_frac


TopGenes = dict[int, dict[int, frozenset[str]]]  # layer -> feature -> top gene symbols


def top_genes_from_catalogs(catalogs: dict[int, pd.DataFrame]) -> TopGenes:
    """Top gene symbols of every feature, per layer, from the annotation catalogs."""
    return {int(layer): {int(f): frozenset(map(str, g)) for f, g in zip(c["feature"], c["top_genes"])
                         if g is not None and len(g)}
            for layer, c in catalogs.items()}


def top_gene_overlap(edges: pd.DataFrame, top_genes: TopGenes) -> np.ndarray:
    """Overlap coefficient |A & B| / min(|A|, |B|) of the source's and target's top genes per edge
    (NaN when either end has no top genes)."""
    out = np.full(len(edges), np.nan)
    cols = [np.asarray(edges[c], np.int64) for c in ("source_layer", "source_feature", "target_layer", "target_feature")]
    for i, (ls, fs, lt, ft) in enumerate(zip(*cols)):
        a = top_genes.get(int(ls), {}).get(int(fs))
        b = top_genes.get(int(lt), {}).get(int(ft))
        if a and b:
            out[i] = len(a & b) / min(len(a), len(b))
    return out


def persistence_mask(edges: pd.DataFrame, top_genes: TopGenes, min_overlap: float = 0.5) -> np.ndarray:
    """Edges whose ends share at least ``min_overlap`` of their top genes (feature carried forward)."""
    return np.nan_to_num(top_gene_overlap(edges, top_genes), nan=0.0) >= min_overlap


def coherence_with_persistence_control(edges: pd.DataFrame, term_sets: TermSets, top_genes: TopGenes,
                                       min_overlap: float = 0.5, n_perm: int = 1000, seed: int = 0,
                                       progress: bool = False) -> tuple[dict, np.ndarray]:
    """Coherence and stratified null of the edges that are not persistent (the headline), plus the
    persistent edges' own coherence (no null: it is high by construction).

    Returns (result dict, null of the non-persistent edges). The result is
    :func:`coherence_test`'s dict plus ``persistence``: rule, n_edges_persistent, and the
    persistent edges' n_edges_annotated / n_coherent / coherence.
    """
    persistent = persistence_mask(edges, top_genes, min_overlap)
    res, null = coherence_test(edges[~persistent].reset_index(drop=True), term_sets, n_perm=n_perm, seed=seed,
                               progress=progress)
    pers, _ = coherence_test(edges[persistent].reset_index(drop=True), term_sets, n_perm=0)
    res["persistence"] = {"rule": f"top-gene overlap coefficient >= {min_overlap} (edge left out of the test)",
                          "n_edges_persistent": int(persistent.sum()),
                          **{k: pers[k] for k in ("n_edges_annotated", "n_coherent", "coherence")}}
    return res, null
