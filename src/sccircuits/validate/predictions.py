"""Gene-level predictions from traced feature circuits (docs/method.md §7).

Every edge (source feature -> target feature, effect size d) is spread over genes: the source
feature's top genes (best first) times the target feature's top genes, pair (i, j) (0-based
ranks) with weight ``1 / ((i + 1) * (j + 1))``. Contributions are then summed per ordered gene
pair (source gene, target gene) over every edge of every run given:

- ``n_edges``: number of edges that put this pair in their top-gene product;
- ``weight``: sum of the weights; ``weighted_abs_d``: sum of ``weight * |d|`` (ranking score);
- ``mean_d``: plain mean of d over those edges (its sign is the predicted direction, see
  :mod:`sccircuits.validate.metrics`); ``max_abs_d``: the largest |d|;
- ``n_conditions`` / ``conditions``: runs (conditions) the pair was seen in;
- ``consensus`` / ``novel`` (with ``n_consensus_edges`` / ``n_novel_edges``): only when edge
  flags are available: bool columns ``consensus`` / ``novel`` in ``edges.parquet``, domain
  pair tables given with ``consensus_pairs`` (e.g. ``compare``'s consensus_pairs.parquet) /
  ``novel_pairs``, or, for novel, each run's ``analysis/novel_pairs.parquet`` (``analyze``).

A pair is kept when it is seen in at least ``min_edges`` edges or its ``max_abs_d`` exceeds
``min_max_abs_d`` (reference: 2 edges, |d| > 2). Self pairs (a gene predicting itself) are
dropped by default. Optionally each pair gets a ``status`` against user-given resources:
``confirmed`` (a TRRUST edge source -> target, or a STRING pair in either orientation),
``plausible`` (the two genes share a term of the GO GMT), else ``novel``.

``compat="reference"`` follows the published script (bio-sae-circuits
``src/15_phase6_predictions_and_validation.py``): the predicted sign comes from
``mean_d = sum(weight * d) / n_edges`` (L180, L227; not the plain mean of d), rounded to 4
decimals (L236), pairs are ranked by ``mean_abs_d = sum(weight * |d|) / n_edges`` (L179, L226,
L247), and ``plausible`` needs at least 2 shared GO terms (L211-221).

All of it is vectorised (pandas merges and groupbys on integer gene codes); edges are processed
in chunks so that memory stays bounded for large edge tables.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import apply_compat, check, compat_option, option
from ..errors import InputError
from ..rundir import RunDir

EDGE_COLUMNS = ["source_layer", "source_feature", "target_layer", "target_feature", "cohens_d", "in_cap"]
EDGE_OPTIONAL = ["source_label", "source_label_id", "target_label", "target_label_id", "consensus", "novel"]


@dataclasses.dataclass
class PredictConfig:
    """Options of gene-level prediction (``sccircuits predict``)."""

    top_genes: int = option(10, "top genes per feature used on each side of an edge")
    edges: str = option("capped", "which edges: 'capped' (in_cap, the published top-N set) or 'uncapped' (all)")
    min_edges: int = option(2, "keep pairs seen in at least this many edges ...")
    min_max_abs_d: float = option(2.0, "... or whose largest |d| exceeds this")
    drop_self_pairs: bool = option(True, "drop pairs whose source and target gene are the same")
    string_pairs: str | None = option(None, "TSV of STRING gene pairs (symbols; undirected) for status")
    trrust: str | None = option(None, "TSV of TRRUST edges (TF, target, ...; directed) for status")
    go_gmt: str | None = option(None, "GO GMT file: pairs sharing a term are 'plausible'")
    consensus_pairs: str | None = option(None, "table (parquet/csv/tsv) of consensus domain pairs: "
                                               "source_label(_id), target_label(_id)")
    novel_pairs: str | None = option(None, "table of novel domain pairs (same columns; rows with novel "
                                           "False are ignored)")
    auto_novel: bool = option(True, "without novel_pairs, use each run's analysis/novel_pairs.parquet "
                                    "when its analyze stage is complete")
    edge_chunk: int = option(20000, "edges per processing chunk (memory bound)")
    min_shared_go: int | None = compat_option(1, 2, "'plausible' needs at least this many shared GO terms")
    compat: str = option("none", "'reference': published sign sum(w*d)/n_edges, ranking, gene lists and plausible "
                                 "rule (docs/compat.md)")

    def __post_init__(self) -> None:
        apply_compat(self)
        check(self.min_shared_go >= 1, "min_shared_go must be >= 1")
        check(self.top_genes >= 1, "top_genes must be >= 1")
        check(self.edges in ("capped", "uncapped"), "edges must be 'capped' or 'uncapped'")
        check(self.min_edges >= 1, "min_edges must be >= 1")
        check(self.edge_chunk >= 1, "edge_chunk must be >= 1")


# ---------------------------------------------------------------------------------------------
# reading a run


def condition_names(runs: list[str | os.PathLike]) -> list[str]:
    """One name per run: the directory name, or the full path where names collide."""
    names = [Path(r).name for r in runs]
    if len(set(names)) < len(names):
        names = [str(Path(r)) for r in runs]
    return names


def read_edges(run: str | os.PathLike, capped: bool) -> pd.DataFrame:
    """The contract columns of ``RUN/trace/edges.parquet`` (plus optional label/flag columns)."""
    import pyarrow.parquet as pq

    rd = RunDir(run, create=False)
    rd.require("trace")
    path = rd / "trace/edges.parquet"
    if not path.is_file():
        raise InputError(path, "file not found (the trace stage wrote no edge table)")
    names = set(pq.read_schema(path).names)
    missing = [c for c in EDGE_COLUMNS if c not in names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    cols = EDGE_COLUMNS + [c for c in EDGE_OPTIONAL if c in names]
    edges = pd.read_parquet(path, columns=cols)
    if capped:
        edges = edges[edges["in_cap"].astype(bool)]
    return edges.reset_index(drop=True)


def annotation_run(run: str | os.PathLike) -> RunDir:
    """The run holding the feature catalogs of ``run``'s edges.

    The run itself when its ``annotate`` stage is complete; otherwise the annotation run the
    tracer used (``annotation`` in ``RUN/trace/trace_meta.json``, e.g. when SAEs and their
    annotation come from another run).
    """
    from ..rundir import read_json

    rd = RunDir(run, create=False)
    if rd.is_complete("annotate"):
        return rd
    meta_path = rd / "trace/trace_meta.json"
    other = read_json(meta_path).get("annotation") if meta_path.is_file() else None
    if other:
        ann = RunDir(other, create=False)
        ann.require("annotate")
        return ann
    rd.require("annotate")  # raises the usual "run `sccircuits annotate` first" error
    return rd


def read_top_genes(run: str | os.PathLike, layers, top_n: int, annotated_only: bool = False) -> pd.DataFrame:
    """Long table (layer, feature, rank, gene) of each feature's first ``top_n`` top genes.

    Reads only ``feature`` and ``top_genes`` of ``layerNN_catalog.parquet`` in the annotation
    of the run (:func:`annotation_run`);
    empty symbols are dropped and a gene repeated in one list keeps its best rank. With
    ``annotated_only`` (compat) only features with at least one annotation have genes: the
    published gene lookup is filled inside the loop over annotated features
    (``src/14_biological_knowledge_extraction.py`` L117-132), so edges touching an
    unannotated feature yield no gene pairs (``src/15_...`` L151-155).
    """
    rd = annotation_run(run)
    parts = []
    for layer in sorted({int(x) for x in layers}):
        path = rd / f"annotation/layer{layer:02d}_catalog.parquet"
        if not path.is_file():
            raise InputError(path, "feature catalog not found (needed for the edges of this layer)")
        try:
            cat = pd.read_parquet(path, columns=["feature", "top_genes"] + (["n_annotations"] if annotated_only else []))
        except Exception as e:  # pyarrow raises several types for missing columns / bad files
            raise InputError(path, f"cannot read columns feature, top_genes{', n_annotations' if annotated_only else ''}"
                                   f" ({type(e).__name__})") from None
        if annotated_only:
            cat = cat[cat["n_annotations"].to_numpy() > 0][["feature", "top_genes"]]
        long = cat.explode("top_genes").rename(columns={"top_genes": "gene"})
        long = long[long["gene"].notna()]
        long["gene"] = long["gene"].astype(str)
        long = long[long["gene"] != ""]
        long = long.drop_duplicates(["feature", "gene"], keep="first")
        long["rank"] = long.groupby("feature", sort=False).cumcount()
        long = long[long["rank"] < top_n]
        long["layer"] = layer
        parts.append(long[["layer", "feature", "rank", "gene"]])
    if not parts:
        return pd.DataFrame({"layer": [], "feature": [], "rank": [], "gene": []})
    return pd.concat(parts, ignore_index=True)


def _read_domain_pairs(path: str | os.PathLike, flag: str) -> pd.DataFrame:
    """A table of domain pairs -> two key columns matching the edge table's label columns.

    Accepts the analysis outputs (``source_domain`` / ``target_domain`` = label ids, e.g.
    ``consensus_pairs.parquet`` of ``compare`` or ``novel_pairs.parquet`` of ``analyze``, where
    only rows with ``flag`` (``novel``) True count) or plain tables with source_label_id /
    target_label_id or source_label / target_label (parquet, csv or tsv).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    else:
        df = pd.read_csv(p, sep="\t" if p.suffix in (".tsv", ".txt") else ",")
    df = df.rename(columns={"source_domain": "source_label_id", "target_domain": "target_label_id"})
    if flag in df.columns:
        df = df[df[flag].astype("boolean").fillna(False).astype(bool)]
    for a, b in (("source_label_id", "target_label_id"), ("source_label", "target_label")):
        if a in df.columns and b in df.columns:
            return df[[a, b]].drop_duplicates()
    raise InputError(p, "needs columns source_domain, target_domain (or source_label_id, target_label_id, "
                        "or source_label, target_label)")


def _run_novel_pairs(run: str | os.PathLike) -> Path | None:
    """``RUN/analysis/novel_pairs.parquet`` when the run's ``analyze`` stage is complete."""
    rd = RunDir(run, create=False)
    path = rd / "analysis/novel_pairs.parquet"
    return path if rd.is_complete("analyze") and path.is_file() else None


def _flag_edges(edges: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """True for edges whose (source, target) domain pair is in ``pairs`` (vectorised merge)."""
    a, b = pairs.columns
    if a not in edges.columns or b not in edges.columns:
        return np.zeros(len(edges), dtype=bool)
    key = edges[[a, b]].astype(str).reset_index(drop=True)
    hit = key.merge(pairs.astype(str).assign(_hit=1), on=[a, b], how="left")["_hit"]
    return hit.notna().to_numpy(dtype=bool)


# ---------------------------------------------------------------------------------------------
# prediction


def gene_pair_contributions(edges: pd.DataFrame, genes: pd.DataFrame) -> pd.DataFrame:
    """One row per (edge, source gene, target gene): the top-gene product of every edge.

    ``edges`` needs ``edge`` (row id), source/target layer and feature; ``genes`` is the long
    table of :func:`read_top_genes` with an integer ``code`` per gene. Returns columns edge,
    src, tgt (gene codes) and weight = 1 / ((i + 1) (j + 1)).
    """
    g = genes[["layer", "feature", "rank", "code"]]
    src = edges[["edge", "source_layer", "source_feature"]].merge(
        g, left_on=["source_layer", "source_feature"], right_on=["layer", "feature"])
    tgt = edges[["edge", "target_layer", "target_feature"]].merge(
        g, left_on=["target_layer", "target_feature"], right_on=["layer", "feature"])
    prod = src[["edge", "code", "rank"]].merge(tgt[["edge", "code", "rank"]], on="edge", suffixes=("_s", "_t"))
    weight = 1.0 / ((prod["rank_s"].to_numpy(np.float64) + 1.0) * (prod["rank_t"].to_numpy(np.float64) + 1.0))
    return pd.DataFrame({"edge": prod["edge"].to_numpy(np.int64), "src": prod["code_s"].to_numpy(np.int64),
                         "tgt": prod["code_t"].to_numpy(np.int64), "weight": weight})


def _aggregate_chunk(contrib: pd.DataFrame, d: np.ndarray, cond: np.ndarray,
                     cons: np.ndarray | None, novel: np.ndarray | None, n_genes: int) -> pd.DataFrame:
    """Sums per (pair key, condition) of one chunk of contributions (mergeable by summing)."""
    e = contrib["edge"].to_numpy()
    de = d[e]
    w = contrib["weight"].to_numpy()
    df = pd.DataFrame({"key": contrib["src"].to_numpy() * n_genes + contrib["tgt"].to_numpy(),
                       "cond": cond[e], "n_edges": 1, "weight": w, "weighted_abs_d": w * np.abs(de),
                       "sum_d": de, "weighted_d": w * de, "max_abs_d": np.abs(de)})
    agg = {"n_edges": "sum", "weight": "sum", "weighted_abs_d": "sum", "sum_d": "sum", "weighted_d": "sum",
           "max_abs_d": "max"}
    if cons is not None:
        df["n_consensus_edges"] = cons[e].astype(np.int64)
        agg["n_consensus_edges"] = "sum"
    if novel is not None:
        df["n_novel_edges"] = novel[e].astype(np.int64)
        agg["n_novel_edges"] = "sum"
    return df.groupby(["key", "cond"], sort=False).agg(agg).reset_index()


def predict_genes(runs: list[str | os.PathLike] | str | os.PathLike, cfg: PredictConfig | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Gene-pair predictions from one or more run directories (see the module docstring).

    Returns a DataFrame sorted by ``weighted_abs_d`` (descending) with columns source, target,
    n_edges, weight, weighted_abs_d, mean_d, max_abs_d, n_conditions, conditions, and when
    available consensus / novel flags and the ``status`` columns.
    """
    from tqdm.auto import tqdm

    cfg = cfg or PredictConfig()
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not runs:
        raise InputError(None, "no run directory given")
    if len(runs) > 62:
        raise InputError(None, "at most 62 runs can be combined")
    names = condition_names(runs)
    cons_pairs = _read_domain_pairs(cfg.consensus_pairs, "consensus") if cfg.consensus_pairs else None
    novel_given = _read_domain_pairs(cfg.novel_pairs, "novel") if cfg.novel_pairs else None

    all_edges, all_genes = [], []
    for c, run in enumerate(runs):
        e = read_edges(run, capped=cfg.edges == "capped")
        e["cond"] = c
        if cons_pairs is not None:
            e["consensus"] = _flag_edges(e, cons_pairs)
        novel_pairs = novel_given
        if novel_pairs is None and cfg.auto_novel and "novel" not in e.columns and _run_novel_pairs(run):
            novel_pairs = _read_domain_pairs(_run_novel_pairs(run), "novel")
        if novel_pairs is not None:
            e["novel"] = _flag_edges(e, novel_pairs)
        layers = set(e["source_layer"].unique()) | set(e["target_layer"].unique())
        g = read_top_genes(run, layers, cfg.top_genes, annotated_only=cfg.compat == "reference")
        g["cond"] = c
        all_edges.append(e)
        all_genes.append(g)
    edges = pd.concat(all_edges, ignore_index=True)
    edges = edges[np.isfinite(edges["cohens_d"].to_numpy(np.float64))].reset_index(drop=True)
    genes = pd.concat(all_genes, ignore_index=True)
    has_cons = "consensus" in edges.columns
    has_novel = "novel" in edges.columns
    for flag in ("consensus", "novel"):
        if flag in edges.columns:  # runs without the flag count as False
            edges[flag] = edges[flag].astype("boolean").fillna(False).astype(bool)
    codes, symbols = pd.factorize(genes["gene"], sort=True)
    genes["code"] = codes
    n_genes = max(len(symbols), 1)
    edges["edge"] = np.arange(len(edges), dtype=np.int64)
    d = edges["cohens_d"].to_numpy(np.float64)
    cond = edges["cond"].to_numpy(np.int64)
    cons = edges["consensus"].to_numpy(bool) if has_cons else None
    nov = edges["novel"].to_numpy(bool) if has_novel else None

    parts = []
    for c in range(len(runs)):
        ec = edges[edges["cond"] == c]
        gc = genes[genes["cond"] == c]
        starts = range(0, len(ec), cfg.edge_chunk)
        for s in tqdm(starts, desc=f"predict {names[c]}", disable=not progress or len(starts) < 2):
            contrib = gene_pair_contributions(ec.iloc[s:s + cfg.edge_chunk], gc)
            if cfg.drop_self_pairs:
                contrib = contrib[contrib["src"] != contrib["tgt"]]
            if len(contrib):
                parts.append(_aggregate_chunk(contrib, d, cond, cons, nov, n_genes))
    return _finish(parts, symbols, names, cfg, has_cons, has_novel)


def _finish(parts: list[pd.DataFrame], symbols, names: list[str], cfg: PredictConfig,
            has_cons: bool, has_novel: bool) -> pd.DataFrame:
    """Merge chunk aggregates, filter, name genes and conditions, add status."""
    cols = ["source", "target", "n_edges", "weight", "weighted_abs_d", "mean_d", "max_abs_d",
            "n_conditions", "conditions"]
    if not parts:
        return pd.DataFrame({c: [] for c in cols})
    sums = ["n_edges", "weight", "weighted_abs_d", "sum_d", "weighted_d"] + \
        (["n_consensus_edges"] if has_cons else []) + (["n_novel_edges"] if has_novel else [])
    per_cond = pd.concat(parts, ignore_index=True)
    agg = {c: "sum" for c in sums} | {"max_abs_d": "max"}
    per_cond = per_cond.groupby(["key", "cond"], sort=False).agg(agg).reset_index()
    # one row per (pair, condition) now, so summing 2**cond gives the bitmask of conditions
    per_cond["mask"] = np.left_shift(np.int64(1), per_cond["cond"].to_numpy(np.int64))
    per_cond["n_conditions"] = 1
    pairs = per_cond.groupby("key", sort=False).agg(agg | {"mask": "sum", "n_conditions": "sum"}).reset_index()
    keep = (pairs["n_edges"] >= cfg.min_edges) | (pairs["max_abs_d"] > cfg.min_max_abs_d)
    pairs = pairs[keep].reset_index(drop=True)
    n_genes = max(len(symbols), 1)
    key = pairs["key"].to_numpy(np.int64)
    symbols = np.asarray(symbols, dtype=object)
    out = pd.DataFrame({"source": symbols[key // n_genes], "target": symbols[key % n_genes]})
    out["n_edges"] = pairs["n_edges"].to_numpy(np.int64)
    out["weight"] = pairs["weight"].to_numpy(np.float64)
    out["weighted_abs_d"] = pairs["weighted_abs_d"].to_numpy(np.float64)
    n_edges = out["n_edges"].to_numpy(np.float64)
    if cfg.compat == "reference":  # published L179-180, L226-227, L236: rank-weighted sums / n_edges
        out["mean_d"] = np.round(pairs["weighted_d"].to_numpy(np.float64) / n_edges, 4)
        out["mean_abs_d"] = pairs["weighted_abs_d"].to_numpy(np.float64) / n_edges
    else:
        out["mean_d"] = pairs["sum_d"].to_numpy(np.float64) / n_edges
    out["max_abs_d"] = pairs["max_abs_d"].to_numpy(np.float64)
    out["n_conditions"] = pairs["n_conditions"].to_numpy(np.int64)
    masks = pairs["mask"].to_numpy(np.int64)
    uniq, inv = np.unique(masks, return_inverse=True)
    labels = np.array([",".join(n for b, n in enumerate(names) if (int(m) >> b) & 1) for m in uniq], dtype=object)
    out["conditions"] = labels[inv] if len(uniq) else np.array([], dtype=object)
    if has_cons:
        out["n_consensus_edges"] = pairs["n_consensus_edges"].to_numpy(np.int64)
        out["consensus"] = out["n_consensus_edges"] > 0
    if has_novel:
        out["n_novel_edges"] = pairs["n_novel_edges"].to_numpy(np.int64)
        out["novel"] = out["n_novel_edges"] > 0
    if cfg.string_pairs or cfg.trrust or cfg.go_gmt:
        out = add_status(out, cfg.string_pairs, cfg.trrust, cfg.go_gmt, min_shared_go=cfg.min_shared_go)
    rank = "mean_abs_d" if cfg.compat == "reference" else "weighted_abs_d"  # published L247
    return out.sort_values([rank, "source", "target"], ascending=[False, True, True],
                           kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# status against known biology


def _pair_codes(index: pd.Index, a, b) -> tuple[np.ndarray, np.ndarray]:
    return index.get_indexer(pd.Index(a)), index.get_indexer(pd.Index(b))


def add_status(pred: pd.DataFrame, string_pairs: str | None = None, trrust: str | None = None,
               go_gmt: str | None = None, min_shared_go: int = 1) -> pd.DataFrame:
    """Add in_string / in_trrust / shared_go_terms and ``status`` (confirmed / plausible / novel).

    confirmed: STRING pair (either orientation) or TRRUST edge source -> target;
    plausible: not confirmed, but the genes share at least ``min_shared_go`` GO terms (the
    published script: 2); novel: neither.
    Columns for resources not given are left out; status uses the ones given.
    """
    from ..genesets import read_gmt, read_pairs

    pred = pred.copy()
    index = pd.Index(pd.unique(pd.concat([pred["source"], pred["target"]], ignore_index=True)))
    n = max(len(index), 1)
    ps, pt = _pair_codes(index, pred["source"], pred["target"])
    confirmed = np.zeros(len(pred), dtype=bool)
    if string_pairs:
        sp_pairs = np.asarray(read_pairs(string_pairs), dtype=object).reshape(-1, 2)
        a, b = _pair_codes(index, sp_pairs[:, 0], sp_pairs[:, 1])
        ok = (a >= 0) & (b >= 0)
        known = np.unique(np.minimum(a[ok], b[ok]) * n + np.maximum(a[ok], b[ok]))
        pred["in_string"] = np.isin(np.minimum(ps, pt) * n + np.maximum(ps, pt), known)
        confirmed |= pred["in_string"].to_numpy()
    if trrust:
        tr = np.asarray(read_pairs(trrust), dtype=object).reshape(-1, 2)
        a, b = _pair_codes(index, tr[:, 0], tr[:, 1])
        ok = (a >= 0) & (b >= 0)
        pred["in_trrust"] = np.isin(ps * n + pt, np.unique(a[ok] * n + b[ok]))
        confirmed |= pred["in_trrust"].to_numpy()
    plausible = np.zeros(len(pred), dtype=bool)
    if go_gmt:
        import scipy.sparse as sp

        sets = read_gmt(go_gmt)
        rows, cols = [], []
        for t, (_, members) in enumerate(sets.values()):
            idx = index.get_indexer(pd.Index(list(members)))
            idx = idx[idx >= 0]
            rows.append(idx)
            cols.append(np.full(idx.size, t))
        r = np.concatenate(rows) if rows else np.zeros(0, int)
        c = np.concatenate(cols) if cols else np.zeros(0, int)
        inc = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(n, max(len(sets), 1)))
        shared = np.asarray(inc[ps].multiply(inc[pt]).sum(axis=1)).ravel().astype(np.int64)
        pred["shared_go_terms"] = shared
        plausible = shared >= min_shared_go
    pred["status"] = np.where(confirmed, "confirmed", np.where(plausible, "plausible", "novel"))
    return pred


def write_predictions(pred: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write predictions atomically as parquet (``.parquet``) or TSV (any other suffix)."""
    import io

    from ..rundir import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    if path.suffix == ".parquet":
        pred.to_parquet(buf, index=False)
    else:
        buf.write(pred.to_csv(sep="\t", index=False).encode())
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a prediction table written by :func:`write_predictions` (parquet or TSV)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t")
    except Exception as e:  # pyarrow / the csv parser raise many types
        raise InputError(path, f"cannot read the prediction table ({type(e).__name__})") from None
