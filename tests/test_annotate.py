"""Feature catalog, enrichment, labels, compat mode, network null, selection and the stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sccircuits.annotate import (AnnotateConfig, CatalogAccumulator, annotate_layer, annotation_summary,
                                 catalog_table, label_features, select_from_catalog)
from sccircuits.annotate import enrich, network
from sccircuits.errors import ConfigError
from sccircuits.genesets import write_gmt


# ------------------------------------------------------------------------------ statistics
def test_hypergeometric_p_hand_computed():
    # N=10, K=4, n=3, k=2: [C(4,2)C(6,1) + C(4,3)C(6,0)] / C(10,3) = (36 + 4) / 120
    assert enrich.hypergeom_unique([2], [3], [4], [10])[0] == pytest.approx(40 / 120)
    # N=35, K=3, n=4, k=3: C(3,3)C(32,1) / C(35,4) = 32 / 52360; k=0 gives 1
    p = enrich.hypergeom_unique([3, 0, 3], [4, 4, 4], [3, 3, 3], [35, 35, 35])
    assert p == pytest.approx([32 / 52360, 1.0, 32 / 52360])


def test_hypergeometric_unique_matches_scipy_on_both_key_paths():
    from sccircuits.stats import hypergeom_sf

    rng = np.random.default_rng(0)
    k = rng.integers(0, 10, 500)
    n = k + rng.integers(0, 10, 500)
    K = k + rng.integers(0, 300, 500)
    for N in (n + K + rng.integers(0, 50, 500),          # small key space: presence table
              n + K + rng.integers(0, 10**6, 500)):      # large key space: 1-D unique
        expected = np.clip(hypergeom_sf(k, n, K, N), 0, 1)
        assert enrich.hypergeom_unique(k, n, K, N) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_bh_with_untested_equals_statsmodels_on_padded_vector():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 0.01, 20), rng.uniform(0, 1, 30), [1.0, 0.5, 0.5]])
    n_tests = 400
    expected = multipletests(np.concatenate([p, np.ones(n_tests - p.size)]), method="fdr_bh")[1][:p.size]
    assert enrich.bh_with_untested(p, n_tests) == pytest.approx(expected, rel=1e-12)
    assert enrich.bh_with_untested(p, p.size) == pytest.approx(multipletests(p, method="fdr_bh")[1], rel=1e-12)
    with pytest.raises(ValueError):
        enrich.bh_with_untested(p, 3)


# ------------------------------------------------------------------------------ catalog
def _hand_z():
    tokens = np.array([10, 10, 11, 12, 10, 11, 13, 12])
    z = np.zeros((8, 3), dtype=np.float32)
    z[:, 0] = [1, 3, 5, 0, 2, 0, 9, 0]  # token 10: 1,3,2 (n 3, mean 2); 11: 5; 13: 9
    z[:, 1] = [0, 0, 0, 4, 0, 4, 0, 4]  # token 11: 4 (n 1); token 12: 4,4 (n 2): a tie in mean
    return z, tokens  # feature 2 never fires


@pytest.mark.parametrize("flush_every", [2, 10**9])
def test_catalog_hand_made_z(flush_every):
    z, tokens = _hand_z()
    acc = CatalogAccumulator(3, flush_every=flush_every)
    acc.update(torch.from_numpy(z[:5]), torch.from_numpy(tokens[:5]))  # two batches
    acc.update(z[5:], tokens[5:])
    counts = acc.result()
    symbols = {10: "TP53", 11: "MYC", 12: "GATA1", 13: "KLF1"}
    cat = catalog_table(counts, symbols, n_top=5, min_count=1)
    assert cat["fire_count"].tolist() == [5, 3, 0]
    assert cat["activation_freq"].tolist() == pytest.approx([5 / 8, 3 / 8, 0])
    assert cat["mean_activation"].tolist() == pytest.approx([20 / 8, 12 / 8, 0])
    assert cat["mean_when_firing"].tolist() == pytest.approx([4, 4, 0])
    assert cat["top_gene_tokens"].tolist() == [[13, 11, 10], [11, 12], []]  # tie -> lower token id
    assert cat["top_genes"][0] == ["KLF1", "MYC", "TP53"]
    assert cat["top_gene_means"][0] == pytest.approx([9, 5, 2])
    assert cat["top_gene_counts"][1] == [1, 2]
    # min_count 2: genes seen once where the feature fires are not ranked
    cat2 = catalog_table(counts, symbols, n_top=5, min_count=2)
    assert cat2["top_gene_tokens"].tolist() == [[10], [12], []]
    assert catalog_table(counts, symbols, n_top=1, min_count=1)["top_gene_tokens"].tolist() == [[13], [11], []]


def test_catalog_rejects_bad_shapes():
    acc = CatalogAccumulator(3)
    with pytest.raises(ValueError):
        acc.update(np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.int64))


# ------------------------------------------------------------------------------ enrichment
def _catalog(sets: list[list[str]], dead: tuple[int, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame({"feature": np.arange(len(sets)),
                         "fire_count": [0 if i in dead else 10 for i in range(len(sets))],
                         "activation_freq": [0.0 if i in dead else 0.1 for i in range(len(sets))],
                         "top_genes": sets})


def test_background_is_expressed_vocab_genes_and_terms_are_intersected():
    background = ["A", "B", "C", "D"] + [f"G{i}" for i in range(31)]  # 35 genes
    catalog = _catalog([["A", "B", "C", "D", "NOT_EXPRESSED"], ["G1", "G2", "G3"]])
    libs = {"go_bp": {"T1": ("t one", frozenset({"A", "B", "C", "X1", "X2"})),  # 3 in background
                      "T2": ("t two", frozenset({"G1", "G2", "G3", "G4", "G5", "X3"}))}}  # 5 in background
    cfg = AnnotateConfig(min_term_size=5, store_max_q=1.0)
    _, enr = annotate_layer(catalog, libs, background, cfg)
    assert set(enr["term_id"]) == {"T2"}  # T1 has 3 genes after intersection: filtered
    row = enr.iloc[0]
    assert (row.feature, row.overlap, row.set_size, row.term_size, row.background_size) == (1, 3, 3, 5, 35)
    cfg = AnnotateConfig(min_term_size=3, store_max_q=1.0)
    _, enr = annotate_layer(catalog, libs, background, cfg)
    t1 = enr[enr["term_id"] == "T1"].iloc[0]
    # NOT_EXPRESSED is outside the background: set size 4, not 5
    assert (t1.overlap, t1.set_size, t1.term_size, t1.background_size) == (3, 4, 3, 35)
    assert t1.p_value == pytest.approx(32 / 52360)  # C(3,3)C(32,1)/C(35,4)
    assert t1.overlap_genes == ["A", "B", "C"]
    # odds ratio of [[3, 1], [0, 31]] is infinite
    assert np.isinf(t1.odds_ratio)
    # BH per library counts every (tested feature, term) pair: 2 features x 2 terms = 4 tests
    p = enr.set_index(["feature", "term_id"])["p_value"]
    q_expected = enrich.bh_with_untested(p.to_numpy(), 4)
    assert enr.set_index(["feature", "term_id"])["q_value"].to_numpy() == pytest.approx(q_expected)


def test_features_with_too_few_top_genes_are_not_tested():
    catalog = _catalog([["A", "B"], ["A", "B", "C"]])
    libs = {"go_bp": {"T": ("t", frozenset("ABCDE"))}}
    _, enr = annotate_layer(catalog, libs, list("ABCDEFGHIJ"), AnnotateConfig(store_max_q=1.0))
    assert enr["feature"].tolist() == [1]


# ------------------------------------------------------------------------------ labels
def _enr(rows):
    cols = ["feature", "library", "term_id", "term_name", "q_value", "p_value", "overlap"]
    df = pd.DataFrame(rows, columns=cols)
    df["kind"] = "gene_set"
    df["significant"] = df["q_value"] < 0.05
    return df


def test_label_rule_go_bp_only_most_significant_deterministic():
    enr = _enr([
        (0, "go_bp", "GO:a", "a", 0.01, 1e-3, 3),
        (0, "go_bp", "GO:b", "b", 0.001, 1e-4, 3),   # most significant GO BP term of feature 0
        (0, "kegg", "K1", "k", 1e-9, 1e-10, 5),      # more significant but not GO BP
        (1, "go_bp", "GO:d", "d", 0.01, 1e-3, 3),
        (1, "go_bp", "GO:c", "c", 0.01, 1e-3, 3),    # full tie with GO:d -> term id order
        (1, "go_bp", "GO:e", "e", 0.01, 2e-3, 9),    # same q, larger p
        (2, "kegg", "K2", "k2", 1e-6, 1e-7, 4),      # only KEGG -> unannotated
        (3, "go_bp", "GO:f", "f", 0.05, 1e-2, 3),    # q == alpha: not below it
        (4, "go_bp", "GO:h", "h", 0.02, 1e-3, 2),
        (4, "go_bp", "GO:g", "g", 0.02, 1e-3, 4),    # same q and p, larger overlap wins
    ])
    lab = label_features(enr, 6, "go_bp", alpha=0.05)
    assert lab["label_id"].tolist() == ["GO:b", "GO:c", None, None, "GO:g", None]
    assert lab["label_name"].tolist() == ["b", "c", "unannotated", "unannotated", "g", "unannotated"]
    assert lab["label_q"][0] == 0.001 and np.isnan(lab["label_q"][5])
    shuffled = label_features(enr.sample(frac=1.0, random_state=3), 6, "go_bp", alpha=0.05)
    pd.testing.assert_frame_equal(lab, shuffled)
    assert label_features(enr, 6, "go_bp", alpha=0.05, inclusive=True)["label_id"][3] == "GO:f"


def test_label_library_must_exist():
    with pytest.raises(ConfigError, match="GO biological-process"):
        annotate_layer(_catalog([["A", "B", "C"]]), {"kegg": {"K": ("k", frozenset("ABCDE"))}},
                       list("ABCDEF"), AnnotateConfig())


def test_richness_score():
    enr = _enr([(0, "go_bp", "GO:a", "a", 1e-4, 1e-6, 3), (0, "go_bp", "GO:b", "b", 0.01, 1e-3, 3),
                (0, "kegg", "K", "k", 0.02, 1e-3, 3), (1, "go_bp", "GO:c", "c", 0.5, 0.1, 2)])
    s = annotation_summary(enr, 3)
    assert s["n_annotations"].tolist() == [3, 0, 0]
    assert s["n_libraries"].tolist() == [2, 0, 0]
    assert s["richness"].tolist() == pytest.approx([10 * 2 + 3 + 4, 0, 0])


# ------------------------------------------------------------------------------ compat
def _compat_case():
    """Hand-made published-annotation case (expected numbers written out in the test)."""
    filler = [f"F{i}" for i in range(15)]
    catalog = _catalog([["A", "B", "C", "D"], ["A", "B", "E"], filler, ["Z9"]], dead=(3,))
    go = {"T1": ("one", frozenset({"A", "B", "C", "X1", "X2"})),           # K = 5 (X not in union)
          "T2": ("two", frozenset({"A", "E", "Y1", "Y2", "Y3"})),          # K = 5
          "T3": ("three", frozenset({"C", "D", "Z1", "Z2", "Z3", "Z4"})),  # K = 6
          "T4": ("small", frozenset({"A", "B", "C", "D"})),                 # K = 4 < 5: dropped
          "T5": ("big", frozenset({"A", "B", *[f"W{i}" for i in range(18)]}))}  # K = 20 = N
    return catalog, {"go_bp": go}


def test_compat_reference_hand_case():
    catalog, libs = _compat_case()
    cfg = AnnotateConfig(compat="reference", alpha=0.2, store_max_q=1.0)
    assert cfg.min_count == 1
    cat, enr = annotate_layer(catalog, libs, None, cfg)
    got = {(r.feature, r.term_id): r for r in enr.itertuples()}
    # background = union of alive features' top genes: A B C D E + 15 fillers = 20 (Z9 is dead)
    assert set(enr["background_size"]) <= {20, 21, 22}
    # only overlaps >= 2 are tested: 6 tests (f0: T1 T3 T5, f1: T1 T2 T5)
    assert sorted(got) == [(0, "T1"), (0, "T3"), (0, "T5"), (1, "T1"), (1, "T2"), (1, "T5")]
    # f0 vs T1: n 4, K 5, k 3, N 20: [C(5,3)C(15,1) + C(5,4)] / C(20,4) = 155/4845
    assert got[0, "T1"].p_value == pytest.approx(155 / 4845)
    assert got[0, "T1"].term_size == 5 and got[0, "T1"].background_size == 20
    # f1 vs T1 / T2: n 3, K 5, k 2: [C(5,2)C(15,1) + C(5,3)] / C(20,3) = 160/1140
    assert got[1, "T1"].p_value == pytest.approx(160 / 1140)
    assert got[1, "T2"].p_value == pytest.approx(160 / 1140)
    # f0 vs T3: n 4, K 6, k 2: 1 - [C(14,4) + 6 C(14,3)] / C(20,4) = 1660/4845
    assert got[0, "T3"].p_value == pytest.approx(1660 / 4845)
    # T5 (K 20 = N): the published table has a negative cell; clipped, p = 1
    assert got[0, "T5"].p_value == pytest.approx(1.0) and got[0, "T5"].background_size == 22
    assert got[1, "T5"].background_size == 21
    # BH over the 6 tests run: q = p * 6 / rank, then the running minimum from the end
    assert got[0, "T1"].q_value == pytest.approx(6 * 155 / 4845)          # 0.19195
    assert got[1, "T1"].q_value == pytest.approx(160 / 1140 * 6 / 3)      # 0.28070 (rank 2 takes rank 3)
    assert got[1, "T2"].q_value == pytest.approx(160 / 1140 * 6 / 3)
    assert got[0, "T3"].q_value == pytest.approx(1660 / 4845 * 6 / 4)
    # labels at alpha 0.2 (published threshold q <= alpha): only feature 0 (T1)
    assert cat["label_id"].tolist() == ["T1", None, None, None]


def test_compat_network_counts_and_tf_test():
    catalog, libs = _compat_case()
    networks = {"STRING": [("A", "B"), ("B", "C"), ("D", "Q"), ("E", "A")],
                "TRRUST": [("B", "A"), ("A", "D")]}  # (B, A): TF sorts after target -> never found
    cfg = AnnotateConfig(compat="reference", alpha=0.2, store_max_q=1.0)
    cat, enr = annotate_layer(catalog, libs, None, cfg, networks=networks)
    net = enr[enr["kind"] == "network"].set_index(["library", "feature"])
    assert net.loc[("STRING", 0), "overlap"] == 2  # A-B, B-C
    assert net.loc[("STRING", 1), "overlap"] == 2  # A-B, E-A
    assert net.loc[("TRRUST", 0), "overlap"] == 1  # A-D only
    assert ("TRRUST", 1) not in net.index          # no edge found -> no row
    assert net["significant"].all() and net["p_value"].isna().all()  # counted, never tested
    tf = enr[enr["library"] == "TRRUST_TF_enrichment"].set_index("feature")
    # TFs in the union = {A, B}: f0 n 4, k 2: C(18,2)/C(20,4) = 153/4845; f1 n 3: 18/1140
    assert tf.loc[0, "p_value"] == pytest.approx(153 / 4845)
    assert tf.loc[1, "p_value"] == pytest.approx(18 / 1140)
    assert cat["n_annotations"][0] >= 3


# ------------------------------------------------------------------------------ networks
def test_rewiring_preserves_degrees():
    rng = np.random.default_rng(0)
    n = 60
    pairs = {tuple(sorted(rng.choice(n, 2, replace=False))) for _ in range(150)}
    edges = np.array(sorted(pairs), dtype=np.int64)
    deg = np.bincount(edges.ravel(), minlength=n)
    cur, swapped = edges, 0
    for _ in range(5):
        cur, k = network.rewire_round(cur, n, rng)
        swapped += k
    assert swapped > 50
    assert np.array_equal(np.bincount(cur.ravel(), minlength=n), deg)
    assert np.all(cur[:, 0] < cur[:, 1])
    assert len({tuple(e) for e in cur.tolist()}) == len(cur)
    assert not np.array_equal(np.sort(cur, axis=0), np.sort(edges, axis=0))


def test_pair_counts_equal_adjacency_counts():
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    n = 80
    edges = np.unique(np.sort(rng.integers(0, n, size=(300, 2)), axis=1), axis=0)
    edges = edges[edges[:, 0] < edges[:, 1]]
    rows = np.repeat(np.arange(30), 6)
    S = sp.csr_matrix((np.ones(rows.size), (rows, rng.integers(0, n, rows.size))), shape=(30, n))
    S.sum_duplicates()
    S.data[:] = 1
    keys = np.sort(network._keys(edges[:, 0], edges[:, 1], n))
    pr, pk = network.set_pairs(S, n)
    naive = [sum(1 for a, b in edges.tolist() if S[r, a] and S[r, b]) for r in range(30)]
    assert network.count_pairs(keys, pr, pk, 30).tolist() == naive
    assert network.within_counts(S, edges, n).tolist() == naive


def test_degree_null_finds_a_planted_module():
    rng = np.random.default_rng(1)
    genes = [f"G{i}" for i in range(200)]
    pairs = [(genes[a], genes[b]) for a, b in rng.integers(0, 200, size=(300, 2)) if a != b]
    module = genes[:8]
    pairs += [(a, b) for i, a in enumerate(module) for b in module[i + 1:]]
    catalog = _catalog([module, genes[100:108]])
    libs = {"go_bp": {"T": ("t", frozenset(genes[150:160]))}}
    cfg = AnnotateConfig(network_permutations=99, store_max_q=1.0, seed=0)
    _, enr = annotate_layer(catalog, libs, genes, cfg, networks={"STRING": pairs})
    net = enr[enr["library"] == "STRING"].set_index("feature")
    assert net.loc[0, "overlap"] >= 28 and net.loc[0, "p_value"] == pytest.approx(1 / 100)
    assert net.loc[1, "p_value"] > 0.05
    assert net.loc[0, "kind"] == "network" and net.loc[0, "odds_ratio"] > 5


# ------------------------------------------------------------------------------ selection
def test_select_features_methods():
    cat = pd.DataFrame({"feature": np.arange(6), "fire_count": [10, 10, 10, 0, 10, 10],
                        "activation_freq": [0.5, 0.02, 0.005, 0.0, 0.3, 0.02],
                        "richness": [5.0, 27.0, 99.0, 0.0, 5.0, 27.0]})
    # feature 2 is too rare (< 0.01); ties in richness -> frequency, then id
    assert select_from_catalog(cat, "richness", n=3) == [1, 5, 0]
    assert select_from_catalog(cat, "richness", n=3, min_freq=0.0) == [2, 1, 5]
    assert select_from_catalog(cat, "frequency", n=2) == [0, 4]
    r1 = select_from_catalog(cat, "random", n=3, seed=7)
    assert r1 == select_from_catalog(cat, "random", n=3, seed=7) and len(r1) == 3
    assert set(r1) <= {0, 1, 4, 5} and r1 == sorted(r1)
    assert select_from_catalog(cat, "list", features=[4, 1, 4]) == [4, 1]
    assert select_from_catalog(cat, "all") == [0, 1, 2, 4, 5]
    with pytest.raises(ConfigError):
        select_from_catalog(cat, "list", features=[9])
    with pytest.raises(ConfigError):
        select_from_catalog(cat, "best")


def test_config_validation():
    assert AnnotateConfig().min_count == 5
    with pytest.raises(ConfigError):
        AnnotateConfig(compat="published")
    with pytest.raises(ConfigError):
        AnnotateConfig(min_term_size=10, max_term_size=5)


# ------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def annotated_run(tmp_path_factory, tiny_geneformer):
    from sccircuits.activations import ExtractConfig, extract
    from sccircuits.models import testing
    from sccircuits.sae import TopKSAE, save_sae

    tmp = tmp_path_factory.mktemp("annot")
    run = tmp / "run"
    adata = testing.make_synthetic_adata(n_cells=24, n_genes=60, seed=0)
    store = extract(run, tiny_geneformer, adata, ExtractConfig(layers="0,2", dtype="float32"), progress=False)
    gen = torch.Generator().manual_seed(0)
    for layer in (0, 2):
        sae = TopKSAE(store.d_model, 48, k=4, activation_mean=torch.as_tensor(store.mean(layer)))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(store.d_model, 48, generator=gen))
            sae.W_dec.copy_(sae.W_enc.T)
        save_sae(sae, run / "saes" / f"layer{layer:02d}")
    genes = testing.gene_symbols(60)
    go = {f"GO:{i:07d}": (f"process {i}", frozenset(genes[(7 * i) % 60:(7 * i) % 60 + 8])) for i in range(12)}
    write_gmt(tmp / "go_bp.gmt.gz", go)
    write_gmt(tmp / "kegg.gmt", {f"K{i}": (f"pathway {i}", frozenset(genes[i::6])) for i in range(6)})
    (tmp / "string.tsv").write_text("".join(f"{genes[i]}\t{genes[i + 1]}\n" for i in range(0, 58)))
    return run, tmp, store


def test_annotate_stage_end_to_end(annotated_run):
    from sccircuits.activations import ActivationStore
    from sccircuits.annotate import annotate, load_annotation, select_features
    from sccircuits.rundir import RunDir
    from sccircuits.sae import load_saes

    run, tmp, _ = annotated_run
    cfg = AnnotateConfig(min_count=2, top_genes=10, alpha=0.5, network_permutations=19,
                         string_pairs=str(tmp / "string.tsv"), batch_size=100)
    metrics = annotate(run, [tmp / "go_bp.gmt.gz", tmp / "kegg.gmt"], cfg, progress=False)
    assert set(metrics["layers"]) == {"0", "2"} and metrics["label_library"] == "go_bp"
    rd = RunDir(run, create=False)
    assert rd.is_complete("annotate")
    catalogs, enrichment = load_annotation(run)
    assert sorted(catalogs) == [0, 2] and sorted(enrichment) == [0, 2]
    cat = catalogs[0]
    for col in ["feature", "fire_count", "activation_freq", "mean_activation", "top_genes", "top_gene_tokens",
                "label_id", "label_name", "label_q"]:
        assert col in cat.columns
    for col in ["feature", "library", "term_id", "term_name", "overlap", "set_size", "term_size",
                "background_size", "odds_ratio", "p_value", "q_value", "overlap_genes"]:
        assert col in enrichment[0].columns

    # the streamed catalog equals a naive per-position computation
    store = ActivationStore(run)
    sae = load_saes(run / "saes")[0]
    acts = np.concatenate([b[0] for b in store.iter_batches(0, 1000)])
    toks = np.concatenate([b[2] for b in store.iter_batches(0, 1000)])
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(acts)).numpy()
    assert cat["fire_count"].tolist() == (z > 0).sum(0).tolist()
    assert cat["fire_count"].sum() > 0
    f = int(cat["fire_count"].idxmax())
    means = {t: z[(toks == t) & (z[:, f] > 0), f].mean() for t in np.unique(toks[z[:, f] > 0])
             if ((toks == t) & (z[:, f] > 0)).sum() >= 2}
    best = sorted(means, key=lambda t: (-means[t], t))[:10]
    assert cat.loc[f, "top_gene_tokens"].tolist() == best
    genes = store.genes().set_index("token_id")["symbol"]
    assert cat.loc[f, "top_genes"].tolist() == [genes[t] for t in best]

    # background = the store's genes; every label is a GO BP term
    go_rows = enrichment[0][enrichment[0]["library"] == "go_bp"]
    assert set(go_rows["background_size"]) <= {len(store.genes())}
    labelled = cat[cat["label_name"] != "unannotated"]
    assert labelled["label_id"].str.startswith("GO:").all()
    assert set(enrichment[0]["library"]) <= {"go_bp", "kegg", "STRING"}

    sel = select_features(run, 0, "richness", n=5, min_freq=0.0)
    assert len(sel) == 5 and sel == select_features(run, 0, "richness", n=5, min_freq=0.0)
    assert select_features(run, 2, "all") == cat_alive(catalogs[2])


def cat_alive(cat):
    return cat.loc[cat["fire_count"] > 0, "feature"].astype(int).tolist()


def test_annotate_cli(annotated_run):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    run, tmp, _ = annotated_run
    res = CliRunner().invoke(app, ["annotate", "--run", str(run), "--gene-sets", str(tmp / "go_bp.gmt.gz"),
                                   "--compat", "reference", "--layers", "2"])
    assert res.exit_code == 0, res.output
    assert "layer  2:" in res.output
    res = CliRunner().invoke(app, ["annotate", "--run", str(run), "--gene-sets", str(tmp / "kegg.gmt")])
    assert res.exit_code != 0  # no GO BP library to label with


def test_default_test_on_the_bundled_libraries_error_rate_and_power():
    """The default annotation criterion on the shipped GO BP / Reactome / Hallmark sets over the
    blood cells' genes. Null built to fool it: 'top genes' drawn at random with the genes'
    detection frequency as weight (frequent genes, e.g. ribosomal and MHC genes, share terms),
    so a test that ignored popularity would label them; 256 sets, as many as a demo layer has
    features, so the BH correction is the one a layer gets. Power: sets of 20 genes co-expressed
    with one of the 64 most variable genes. Measured: 2 of 768 null sets labelled (seeds 0-2,
    256 each: 2, 0, 0), 64 of 64 co-expression sets (92.6% of 256 such sets with 10 genes)."""
    import scipy.sparse as sp

    from sccircuits import datasets
    from sccircuits.annotate.stage import load_libraries

    libs = {k: v for k, v in load_libraries(datasets.gene_set_paths()).items() if k in ("go_bp", "reactome", "hallmark")}
    a = datasets.blood()
    X = sp.csr_matrix(a.X, dtype=np.float64)
    X = sp.diags(1e4 / np.asarray(X.sum(axis=1)).ravel()) @ X
    X.data = np.log1p(X.data)
    genes = np.array([g.upper() for g in a.var_names])
    detected = np.asarray((a.X > 0).sum(axis=0)).ravel()
    keep = detected >= 20
    D = X[:, keep].toarray()
    Z = (D - D.mean(0)) / D.std(0)
    seeds = np.argsort(-D.var(0))[:64]
    corr = Z[:, seeds].T @ Z / Z.shape[0]
    modules = [list(genes[keep][np.argsort(-c)[:20]]) for c in corr]
    rng = np.random.default_rng(0)
    w = detected / detected.sum()
    null = [list(rng.choice(genes, 20, replace=False, p=w)) for _ in range(256)]

    def labelled(sets):
        cat = pd.DataFrame({"feature": np.arange(len(sets)), "fire_count": 1, "top_genes": sets})
        out, _ = annotate_layer(cat, libs, list(genes), AnnotateConfig(), label_library="go_bp")
        return int((out["n_annotations"] > 0).sum())

    assert labelled(null) <= 12  # 5% of 256
    assert labelled(modules) >= 58  # 90% of 64
