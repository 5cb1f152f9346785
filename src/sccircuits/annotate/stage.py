"""The ``annotate`` stage: feature catalog + gene-set enrichment + labels, per SAE layer.

Reads ``RUN/activations`` (:class:`sccircuits.activations.ActivationStore`) and ``RUN/saes``
(:func:`sccircuits.sae.load_saes`), writes per layer::

    RUN/annotation/layerNN_catalog.parquet     one row per feature (catalog + label + richness)
    RUN/annotation/layerNN_enrichment.parquet  significant tests (q below alpha; see store_max_q)

and the manifest stage ``annotate`` with per-layer metrics (alive features, annotation and
label rates). :func:`annotate_layer` is the pure part (catalog table + libraries -> tables).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import artifacts
from ..errors import InputError
from ..genesets import GeneSets, library_name, read_gmt, read_pairs
from ..rundir import RunDir, file_fingerprint
from . import enrich, network
from .config import AnnotateConfig  # noqa: F401  (re-exported)
from .catalog import CatalogAccumulator, catalog_table
from .labels import annotation_summary, find_label_library, first_listed_labels, label_features, select_from_catalog

STAGE = artifacts.ANNOTATE
ENRICHMENT_COLUMNS = ["feature", "library", "term_id", "term_name", "overlap", "set_size", "term_size",
                      "background_size", "odds_ratio", "p_value", "q_value", "overlap_genes", "kind",
                      "significant"]


# --------------------------------------------------------------------------------------------
# Pure part: one layer's catalog table + libraries -> (catalog with labels, enrichment)
# --------------------------------------------------------------------------------------------
def _feature_sets(catalog: pd.DataFrame) -> list[list[str]]:
    """Top-gene symbols per feature, de-duplicated case-insensitively, order kept."""
    out = []
    for genes, alive in zip(catalog["top_genes"], catalog["fire_count"] > 0):
        seen, keep = set(), []
        for g in (genes if alive else []):
            if g.upper() not in seen:
                seen.add(g.upper())
                keep.append(g)
        out.append(keep)
    return out


def annotate_layer(catalog: pd.DataFrame, libraries: Mapping[str, GeneSets],
                   background: Sequence[str] | None, cfg: AnnotateConfig,
                   networks: Mapping[str, list[tuple[str, str]]] | None = None,
                   label_library: str | None = None, progress: str | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Enrichment, labels and richness of one layer.

    ``catalog``: a :func:`~sccircuits.annotate.catalog.catalog_table` (needs feature,
    fire_count, top_genes). ``libraries``: name -> gene sets. ``background``: the corrected
    background symbols (expressed genes in the model vocabulary); ignored in reference mode.
    ``networks``: optional {"STRING": pairs, "TRRUST": pairs}. Returns (catalog + label and
    richness columns, enrichment table with :data:`ENRICHMENT_COLUMNS`).
    """
    compat = cfg.compat == "reference"
    networks = dict(networks or {})
    label_library = label_library or find_label_library(list(libraries), cfg.label_library)
    sets = _feature_sets(catalog)
    if compat:
        universe = sorted({g.upper() for s in sets for g in s})
    else:
        if background is None:
            raise ValueError("the corrected mode needs the background genes")
        universe = sorted({g.upper() for g in background})
    index = {g: i for i, g in enumerate(universe)}
    N = len(universe)
    S_all = enrich.membership([[g.upper() for g in s] for s in sets], index)
    sizes_all = np.asarray(S_all.sum(axis=1)).reshape(-1).astype(np.int64)
    tested = np.flatnonzero(sizes_all >= cfg.min_set_size)
    S, sizes = S_all[tested], sizes_all[tested]

    results: list[tuple[enrich.Library, dict[str, np.ndarray]]] = []
    lib_members: dict[str, GeneSets] = {}
    for name, gs in libraries.items():
        lib = enrich.prepare_library(name, gs, index, cfg.min_term_size, cfg.max_term_size, intersect=not compat)
        t = enrich.test_library(S, sizes, lib, N, min_overlap=2 if compat else 1, clip_table=compat)
        if not compat:  # BH per library over every (tested feature, term) pair
            t["q_value"] = enrich.bh_with_untested(t["p_value"], len(tested) * len(lib.term_ids))
        lib_members[name] = gs
        results.append((lib, t))
    if compat and "TRRUST" in networks:  # the published TF-enrichment test, pooled in the BH
        tfs = {a.upper() for a, _ in networks["TRRUST"]} & set(universe)
        lib = enrich.Library("TRRUST_TF_enrichment", np.array(["TRRUST:TF"], dtype=object),
                             np.array(["transcription factors (TRRUST)"], dtype=object),
                             enrich.membership([sorted(tfs)], index).T.tocsc(), np.array([len(tfs)]))
        results.append((lib, enrich.test_library(S, sizes, lib, N, min_overlap=2, clip_table=True)))
        lib_members[lib.name] = {"TRRUST:TF": ("", frozenset(tfs))}
    if compat and results:  # BH over every test run in the layer, all libraries together
        from ..stats import bh_fdr

        q = bh_fdr(np.concatenate([t["p_value"] for _, t in results]))
        for (_, t), part in zip(results, np.split(q, np.cumsum([len(t["p_value"]) for _, t in results])[:-1])):
            t["q_value"] = part
    gene_sets = pd.concat([_named(t, tested, lib, cfg, compat) for lib, t in results] or [_empty()],
                          ignore_index=True)
    gene_sets = enrich.add_odds_ratio(gene_sets)
    upper_terms: dict[tuple[str, str], frozenset[str]] = {}  # only the terms of stored rows

    def members(lib: str, tid: str) -> frozenset[str]:
        if (lib, tid) not in upper_terms:
            upper_terms[lib, tid] = frozenset(g.upper() for g in lib_members[lib][tid][1])
        return upper_terms[lib, tid]

    gene_sets["overlap_genes"] = [
        [g for g in sets[f] if g.upper() in members(lib, tid)]
        for f, lib, tid in zip(gene_sets["feature"], gene_sets["library"], gene_sets["term_id"])]

    net_tables = [_network_rows(name, pairs, S, sizes, tested, index, universe, sets, cfg, compat, progress)
                  for name, pairs in networks.items()]
    enrichment = pd.concat([gene_sets, *net_tables], ignore_index=True)[ENRICHMENT_COLUMNS]
    enrichment = enrichment.sort_values(["feature", "library", "q_value", "p_value", "term_id"],
                                        kind="mergesort", na_position="last").reset_index(drop=True)
    enrichment = enrichment.astype({"feature": np.int64, "overlap": np.int64, "set_size": np.int64,
                                    "term_size": np.int64, "background_size": np.int64,
                                    "odds_ratio": np.float64, "p_value": np.float64,
                                    "q_value": np.float64, "significant": bool})

    n = len(catalog)
    # compat: gene_sets still has term_order (file order), which the published label rules need
    labels = label_features(gene_sets if compat else enrichment, n, label_library, cfg.alpha, inclusive=compat)
    if compat:
        order = [label_library] + [name for name in libraries if name != label_library]
        labels = labels.merge(first_listed_labels(gene_sets, n, order, cfg.alpha), on="feature")
    summary = annotation_summary(enrichment, n)
    out = catalog.drop(columns=[c for c in ("label_id", "label_name", "label_q", "source_label_id", "source_label_name",
                                            "n_annotations", "n_libraries", "min_q", "richness") if c in catalog])
    out = out.merge(labels, on="feature", how="left").merge(summary, on="feature", how="left")
    return out, enrichment


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ENRICHMENT_COLUMNS})


def _named(t: dict[str, np.ndarray], tested: np.ndarray, lib: enrich.Library, cfg: AnnotateConfig,
           compat: bool) -> pd.DataFrame:
    """The stored rows of one library's tests (significant, or q <= store_max_q), with
    feature ids, library and term names instead of matrix positions."""
    q = t["q_value"]
    significant = (q <= cfg.alpha) if compat else (q < cfg.alpha)
    keep = significant | (q <= cfg.store_max_q)
    terms = t["term"][keep]
    return pd.DataFrame({
        "feature": tested[t["row"][keep]].astype(np.int64), "library": lib.name,
        "term_id": lib.term_ids[terms], "term_name": lib.term_names[terms],
        **{c: t[c][keep] for c in ("overlap", "set_size", "term_size", "background_size", "p_value", "q_value")},
        "kind": "gene_set", "significant": significant[keep], "term_order": terms.astype(np.int64)})


def _network_rows(name, pairs, S, sizes, tested, index, universe, sets, cfg, compat, progress) -> pd.DataFrame:
    """Rows of one network library: edge counts (reference) or degree-preserving null tests."""
    edges = network.edge_array(pairs, index, reference_trrust=compat and name == "TRRUST")
    n_genes = len(universe)
    if compat:
        observed = network.within_counts(S, edges, n_genes)
        p = q = fold = np.full(observed.size, np.nan)
        keep = observed > 0  # published: any edge inside the set counted as an annotation
        significant = keep
    else:
        observed, null_mean, p = network.degree_null_test(
            S, edges, n_genes, cfg.network_permutations, seed=cfg.seed,
            progress=f"{progress} {name} null" if progress else None)
        from ..stats import bh_fdr

        q = bh_fdr(p)
        with np.errstate(divide="ignore", invalid="ignore"):
            fold = observed / null_mean
        significant = q < cfg.alpha
        keep = significant | (q <= cfg.store_max_q)
    members = network.within_genes(S, edges, n_genes)
    rows = np.flatnonzero(keep)
    return pd.DataFrame({
        "feature": tested[rows].astype(np.int64), "library": name,
        "term_id": f"{name}:within_set_edges", "term_name": f"{name} edges among the top genes",
        "overlap": observed[rows], "set_size": sizes[rows], "term_size": len(edges),
        "background_size": n_genes, "odds_ratio": np.asarray(fold, dtype=np.float64)[rows],
        "p_value": np.asarray(p, dtype=np.float64)[rows], "q_value": np.asarray(q, dtype=np.float64)[rows],
        "overlap_genes": [[g for g in sets[tested[r]] if index.get(g.upper(), -1) in set(members[r].tolist())]
                          for r in rows],
        "kind": "network", "significant": np.asarray(significant, dtype=bool)[rows],
    }, columns=ENRICHMENT_COLUMNS)


# --------------------------------------------------------------------------------------------
# The stage: stream activations through each SAE, then annotate_layer, then write
# --------------------------------------------------------------------------------------------
def layer_counts(store, sae, layer: int, batch_size: int, device: str = "cpu", progress: bool = True):
    """Catalog counts of one layer: every position of the store encoded by ``sae``."""
    import torch
    from tqdm.auto import tqdm

    acc = CatalogAccumulator(int(sae.d_sae))
    sae = sae.to(device).eval()
    total = math.ceil(store.n_positions / batch_size) if getattr(store, "n_positions", None) else None
    with torch.no_grad():
        for acts, _cells, tokens in tqdm(store.iter_batches(layer, batch_size), total=total,
                                         desc=f"layer {layer:02d} catalog", disable=not progress):
            h = torch.as_tensor(acts, dtype=torch.float32).to(device)
            acc.update(sae.encode(h).float(), torch.as_tensor(tokens))
    return acc.result()


def token_symbols(genes: pd.DataFrame) -> dict[int, str]:
    """token id -> symbol (the gene id when the symbol is missing) from ``store.genes()``."""
    out = {}
    for tok, gid, sym in zip(genes["token_id"], genes["gene_id"], genes["symbol"]):
        sym = sym if isinstance(sym, str) and sym.strip() else gid
        out[int(tok)] = str(sym)
    return out


def library_overlap(libraries: Mapping[str, GeneSets], paths: Mapping[str, str | os.PathLike],
                    background: Sequence[str]) -> dict[str, dict]:
    """How many of the run's genes each library names. A library naming none of them is an error
    (every feature would come out unannotated, e.g. Ensembl ids in the GMT, symbols in the run);
    one covering under 10% of them gets a warning with the counts."""
    import warnings

    genes = {g.upper() for g in background}
    out = {}
    for name, sets in libraries.items():
        lib_genes = {g.upper() for _, members in sets.values() for g in members}
        n = len(lib_genes & genes)
        out[name] = {"run_genes": len(genes), "library_genes": len(lib_genes), "shared": n}
        where = paths.get(name, name)
        example = f" (library genes look like {sorted(lib_genes)[:3]}, run genes like {sorted(genes)[:3]})"
        if n == 0:
            raise InputError(where, f"none of its {len(lib_genes)} genes is among the run's {len(genes)} genes"
                                    f"{example}; use a gene-set file with the same gene symbols")
        if n < 0.1 * len(genes):
            warnings.warn(f"{where}: only {n} of the run's {len(genes)} genes appear in this library "
                          f"({len(lib_genes)} genes); most features cannot be annotated{example}", stacklevel=3)
    return out


def load_libraries(gene_sets: Sequence[str | os.PathLike]) -> dict[str, GeneSets]:
    """Read GMT files; library name = file name without extensions (must be distinct)."""
    libs: dict[str, GeneSets] = {}
    for path in gene_sets:
        name = library_name(path)
        if name in libs:
            raise InputError(path, f"two gene-set files share the library name {name!r}; rename one")
        libs[name] = read_gmt(path)
    if not libs:
        raise InputError(None, "no gene-set files given (--gene-sets FILE.gmt)")
    return libs


def annotate(run: str | os.PathLike, gene_sets: Sequence[str | os.PathLike],
             cfg: AnnotateConfig | None = None, progress: bool = True) -> dict:
    """Run the annotate stage on ``run``; returns the per-layer metrics saved in the manifest."""
    cfg = cfg or AnnotateConfig()
    rd = RunDir(run, create=False)
    with rd.hold(STAGE):
        return _annotate(rd, gene_sets, cfg, progress)


def _annotate(rd: RunDir, gene_sets: Sequence[str | os.PathLike], cfg: AnnotateConfig, progress: bool) -> dict:
    from ..activations import ActivationStore
    from ..sae import load_saes

    libraries = load_libraries(gene_sets)
    label_library = find_label_library(list(libraries), cfg.label_library)
    networks = {}
    if cfg.string_pairs:
        networks["STRING"] = read_pairs(cfg.string_pairs)
    if cfg.trrust:
        networks["TRRUST"] = read_pairs(cfg.trrust)
    store = ActivationStore(rd.path)
    saes = load_saes(rd.path / "saes")
    available = sorted(set(saes) & set(store.layers))
    layers = cfg.layers if cfg.layers is not None else available
    missing = [l for l in layers if l not in available]
    if missing:
        raise InputError(rd.path, f"layers {missing} have no SAE and activations (available: {available})")
    genes = store.genes()
    symbols = token_symbols(genes)
    background = sorted({s.upper() for s in symbols.values()})
    overlap = library_overlap(libraries, dict(zip(map(library_name, gene_sets), gene_sets)), background)
    inputs = {str(p): file_fingerprint(p) for p in [*gene_sets, cfg.string_pairs, cfg.trrust] if p}
    rd.begin_stage(STAGE, cfg, inputs=inputs, label_library=label_library, gene_overlap=overlap,
                   upstream=rd.stamps("extract", "train-sae"))
    outputs, metrics = [], {"label_library": label_library, "layers": {}}
    for layer in layers:
        counts = layer_counts(store, saes[layer], layer, cfg.batch_size, cfg.device, progress)
        catalog = catalog_table(counts, symbols, cfg.top_genes, cfg.min_count)
        catalog, enrichment = annotate_layer(catalog, libraries, background, cfg, networks, label_library,
                                             progress=f"layer {layer:02d}" if progress else None)
        for kind, df in (("catalog", catalog), ("enrichment", enrichment)):
            outputs.append(artifacts.write_table(rd, artifacts.annotation_file(layer, kind), df))
        metrics["layers"][str(layer)] = layer_metrics(catalog, len(background) if cfg.compat != "reference" else None)
    rd.complete_stage(STAGE, outputs=outputs, metrics=metrics)
    return metrics


def layer_metrics(catalog: pd.DataFrame, background_size: int | None) -> dict:
    """Alive features, annotation rate (any significant row) and label rate (GO BP label)."""
    alive = catalog["fire_count"] > 0
    n_alive = int(alive.sum())
    annotated = int(((catalog["n_annotations"] > 0) & alive).sum())
    labelled = int(((catalog["label_name"] != "unannotated") & alive).sum())
    return {"n_features": int(len(catalog)), "n_alive": n_alive, "n_annotated": annotated,
            "annotation_rate": annotated / n_alive if n_alive else 0.0, "n_labelled": labelled,
            "label_rate": labelled / n_alive if n_alive else 0.0, "background_size": background_size}


def load_annotation(run: str | os.PathLike) -> tuple[dict[int, pd.DataFrame], dict[int, pd.DataFrame]]:
    """(catalogs, enrichment) per layer of a run whose annotate stage completed (only
    ``feature`` is required: selection and labels use what the catalog has)."""
    return artifacts.read_annotation(run, follow=False, catalog_columns=("feature",), enrichment_columns=())


def select_features(run: str | os.PathLike, layer: int, method: str = "richness", n: int = 30,
                    seed: int = 0, features: Sequence[int] | None = None, min_freq: float = 0.01) -> list[int]:
    """Source features of ``layer`` for tracing.

    Methods: ``richness`` (published score 10 x libraries + annotations - log10 min q, among
    features with activation frequency >= ``min_freq``; ties by frequency then feature id),
    ``frequency`` (most frequent first), ``random`` (``seed``, among frequent-enough
    features, returned sorted), ``list`` (``features`` as given, validated), ``all`` (every
    feature that fired).
    """
    catalogs, _ = load_annotation(run)
    if layer not in catalogs:
        raise InputError(run, f"layer {layer} was not annotated (annotated layers: {sorted(catalogs)})")
    return select_from_catalog(catalogs[layer], method, n, seed, features, min_freq)


__all__ = ["AnnotateConfig", "annotate", "annotate_layer", "load_annotation", "select_features",
           "layer_counts", "token_symbols", "load_libraries"]
