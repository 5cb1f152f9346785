"""Analyses on small constructed edge tables with known answers (issue 7)."""

from __future__ import annotations


import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from sccircuits.analysis import coherence as coh
from sccircuits.analysis import consensus as cons
from sccircuits.analysis import disease as dis
from sccircuits.analysis import hierarchy as hier
from sccircuits.analysis import novel as nov
from sccircuits.analysis import summary as summ
from sccircuits.analysis import tissue as tis
from sccircuits.analysis.graph import circuit_graph, write_graphml
from sccircuits.analysis.inputs import normalize_edges


def make_edges(rows, model="m") -> pd.DataFrame:
    """Edge table from (source_layer, source_feature, target_layer, target_feature, d[, in_cap[, slabel, tlabel]])."""
    out = []
    for r in rows:
        sl, sf, tl, tf, d = r[:5]
        in_cap = r[5] if len(r) > 5 else True
        slab = r[6] if len(r) > 6 else f"GO:{sl}{sf:04d}"
        tlab = r[7] if len(r) > 7 else f"GO:{tl}{tf:04d}"
        out.append({"model": model, "source_layer": sl, "source_feature": sf, "source_label": slab,
                    "source_label_id": None if slab == "unannotated" else slab, "target_layer": tl,
                    "target_feature": tf, "target_label": tlab, "target_label_id": None if tlab == "unannotated" else tlab,
                    "n_cells": 20, "mean_delta": d / 10, "sd_delta": 0.1, "cohens_d": d, "consistency": 0.9,
                    "consistency_nonzero": 0.9, "p_value": 0.001, "q_value": 0.01, "in_cap": in_cap})
    return normalize_edges(pd.DataFrame(out))


# --- counts, effect sizes, sign balance, attenuation, hubs -----------------------------------

D = [-1.5, -0.6, 2.5, 0.8, -3.0, 1.2]
EDGES = make_edges([(0, 1, 1, 10, D[0]), (0, 1, 2, 20, D[1]), (0, 2, 1, 10, D[2], False),
                    (1, 10, 2, 20, D[3]), (0, 1, 1, 11, D[4]), (0, 2, 3, 30, D[5], False)])


def test_counts_effect_sizes_and_sign_balance_match_hand_values():
    s = summ.describe_edges(EDGES)
    assert s["n_edges"] == 6
    assert s["n_sources"] == 3  # (0,1), (0,2), (1,10)
    assert s["n_targets"] == 4  # (1,10), (2,20), (1,11), (3,30)
    assert s["n_nodes"] == 6  # (0,1) (0,2) (1,10) (1,11) (2,20) (3,30)
    assert s["mean_abs_d"] == pytest.approx(9.6 / 6)
    assert s["median_abs_d"] == pytest.approx(1.35)
    assert s["frac_abs_d_gt_1"] == pytest.approx(4 / 6)
    assert s["frac_abs_d_gt_2"] == pytest.approx(2 / 6)
    sb = s["sign_balance"]
    assert sb["d_negative"]["n"] == 3 and sb["d_negative"]["frac"] == pytest.approx(0.5)
    assert sb["d_negative"]["paper_name"] == "inhibitory"
    assert "supports" in sb["d_negative"]["meaning"] and "d < 0" in sb["d_negative"]["meaning"]
    assert sb["d_positive"]["n"] == 3


def test_attenuation_counts_edges_per_downstream_distance():
    a = summ.attenuation(EDGES).set_index(["source_layer", "distance"])
    assert a.loc[(0, 1), "n_edges"] == 3 and a.loc[(0, 1), "n_sources"] == 2
    assert a.loc[(0, 1), "edges_per_source"] == pytest.approx(1.5)
    assert a.loc[(0, 2), "n_edges"] == 1 and a.loc[(0, 3), "n_edges"] == 1
    assert a.loc[(1, 1), "n_edges"] == 1
    assert a.loc[(0, 1), "mean_abs_d"] == pytest.approx((1.5 + 2.5 + 3.0) / 3)
    assert a.loc[(0, 1), "frac_d_negative"] == pytest.approx(2 / 3)


def test_hubs_out_and_in_degree():
    h = summ.hubs(EDGES).set_index("node")
    assert h.loc["L0:F1", "out_degree"] == 3 and h.loc["L0:F1", "in_degree"] == 0
    assert h.loc["L1:F10", "in_degree"] == 2 and h.loc["L1:F10", "out_degree"] == 1
    assert h.loc["L2:F20", "in_degree"] == 2
    assert summ.hubs(EDGES).iloc[0]["node"] in ("L0:F1", "L1:F10")  # degree 3, most connected first
    assert summ.hubs(EDGES, top=2).shape[0] == 2


def test_capped_subset_changes_counts():
    capped = EDGES[EDGES["in_cap"]]
    assert summ.describe_edges(capped)["n_edges"] == 4


# --- coherence ---------------------------------------------------------------------------------

def enrichment_table(sets: dict[int, list[str]], library="GO_Biological_Process", q=0.01) -> pd.DataFrame:
    rows = [{"feature": f, "library": library, "term_id": t, "term_name": t, "q_value": q}
            for f, terms in sets.items() for t in terms]
    return pd.DataFrame(rows)


def test_term_sets_keep_only_significant_functional_terms():
    enr = {0: pd.concat([enrichment_table({1: ["A", "B"]}),
                         enrichment_table({1: ["S1"]}, library="STRING_ppi"),
                         enrichment_table({1: ["T1"]}, library="TRRUST_2019"),
                         enrichment_table({2: ["C"]}, library="KEGG_2021_Human"),
                         enrichment_table({2: ["D"]}, library="Reactome_2022", q=0.2),
                         enrichment_table({3: ["E"]}, library="CellMarker")])}
    ts = coh.term_sets_from_enrichment(enr)
    assert ts == {0: {1: frozenset({"A", "B"}), 2: frozenset({"C"})}}
    # rows the annotation stage marks as network counts never count, whatever the library name
    marked = enr[0].assign(kind=["gene_set"] * (len(enr[0]) - 1) + ["network"], library="go_bp")
    assert coh.term_sets_from_enrichment({0: marked}) == {0: {1: frozenset({"A", "B", "S1", "T1"}), 2: frozenset({"C"})}}


def test_coherence_hand_example():
    ts = {0: {1: frozenset({"A", "B"}), 2: frozenset({"C"})}, 1: {5: frozenset({"B"}), 6: frozenset({"D"})}}
    e = make_edges([(0, 1, 1, 5, 1.0), (0, 2, 1, 6, 1.0), (0, 1, 1, 6, 1.0), (0, 3, 1, 5, 1.0)])
    res, null = coh.coherence_test(e, ts, n_perm=50, seed=1)
    assert res["n_edges_annotated"] == 3  # (0,3) has no terms
    assert res["n_coherent"] == 1 and res["coherence"] == pytest.approx(1 / 3)
    assert null.shape == (50,)
    assert 1 / 51 <= res["p_value"] <= 1


def test_stratified_permutation_keeps_strata():
    rng = np.random.default_rng(0)
    strata = coh.richness_strata([1, 1, 2, 3, 4, 7, 8, 1, 5])
    assert strata.tolist() == [0, 0, 1, 1, 2, 2, 3, 0, 2]
    for _ in range(20):
        p = coh.stratified_permutation(strata, rng)
        assert sorted(p.tolist()) == list(range(9))
        assert (strata[p] == strata).all()


def _planted(n=40, seed=0, coherent=True):
    """Layer-0 feature i and layer-1 feature i share term T_i; edges i -> i (coherent) or i -> random."""
    ts = {0: {i: frozenset({f"T{i}", f"X{i}"}) for i in range(n)}, 1: {i: frozenset({f"T{i}", f"Y{i}"}) for i in range(n)}}
    rng = np.random.default_rng(seed)
    tgt = np.arange(n) if coherent else rng.permutation(n)
    return make_edges([(0, i, 1, int(t), 1.0) for i, t in enumerate(tgt)]), ts


def test_planted_coherent_graph_is_significant_and_shuffled_is_not():
    e, ts = _planted(coherent=True)
    res, _ = coh.coherence_test(e, ts, n_perm=200, seed=3)
    assert res["coherence"] == 1.0
    assert res["p_value"] == pytest.approx(1 / 201)  # the lower bound
    assert res["fold_enrichment"] > 10
    e2, ts2 = _planted(coherent=False, seed=5)
    res2, _ = coh.coherence_test(e2, ts2, n_perm=200, seed=3)
    assert res2["p_value"] > 0.05
    assert res2["fold_enrichment"] < 3


def test_coherence_null_is_reproducible_with_seed():
    e, ts = _planted(coherent=False, seed=2)
    a = coh.coherence_test(e, ts, n_perm=30, seed=9)[1]
    b = coh.coherence_test(e, ts, n_perm=30, seed=9)[1]
    assert np.array_equal(a, b)


# --- consensus ---------------------------------------------------------------------------------

def test_consensus_is_intersection_of_group_unions():
    a = {("a", "b"), ("b", "c"), ("c", "a")}
    b1, b2 = {("a", "b")}, {("b", "c"), ("x", "y")}
    assert cons.consensus({"gf": a, "scgpt": b1 | b2}) == {("a", "b"), ("b", "c")}
    assert cons.consensus({"gf": a}) == a


def test_domain_pairs_use_annotated_ends_only():
    e = make_edges([(0, 1, 1, 2, -2.0, True, "GO:1", "GO:2"), (0, 3, 1, 4, 1.0, False, "GO:1", "GO:2"),
                    (0, 5, 1, 6, 1.0, True, "unannotated", "GO:2")])
    p = cons.domain_pairs(e)
    assert len(p) == 1
    r = p.iloc[0]
    assert (r.source_domain, r.target_domain, r.n_edges, r.n_edges_capped) == ("GO:1", "GO:2", 2, 1)
    assert r.mean_abs_d == pytest.approx(1.5) and r.frac_d_negative == pytest.approx(0.5)


def test_label_permutation_null_bounds_and_planted_overlap():
    rng = np.random.default_rng(0)
    doms = [f"D{i:02d}" for i in range(30)]
    pairs = {(doms[i], doms[j]) for i, j in rng.integers(0, 30, size=(60, 2))}
    sets = {"gf": pairs, "sc": set(pairs)}
    null = cons.label_permutation_null(sets, n_perm=199, seed=42)
    res = cons.null_summary(len(pairs), null)
    assert res["p_value"] == pytest.approx(1 / 200)  # nothing in the null reaches identical graphs
    assert res["fold_enrichment"] > 5
    assert (null <= len(pairs)).all() and (null >= 0).all()
    assert np.array_equal(null, cons.label_permutation_null(sets, n_perm=199, seed=42))
    # unrelated graphs: p is a valid permutation p, not significant
    other = {(doms[i], doms[j]) for i, j in rng.integers(0, 30, size=(60, 2))}
    obs = len(cons.consensus({"gf": pairs, "sc": other}))
    res2 = cons.null_summary(obs, cons.label_permutation_null({"gf": pairs, "sc": other}, 199, seed=1))
    assert 1 / 200 <= res2["p_value"] <= 1 and res2["p_value"] > 0.05


def test_rewire_preserves_degrees_without_duplicates():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 15, 80)
    t = rng.integers(0, 15, 80)
    uniq = np.unique(s * 100 + t)
    s, t = uniq // 100, uniq % 100
    s2, t2 = cons.rewire(s, t, 2000, np.random.default_rng(2))
    assert np.array_equal(np.bincount(s, minlength=15), np.bincount(s2, minlength=15))
    assert np.array_equal(np.bincount(t, minlength=15), np.bincount(t2, minlength=15))
    assert np.unique(s2 * 100 + t2).size == s2.size
    assert not np.array_equal(t, t2)


def test_rewiring_null_planted_overlap_is_significant():
    rng = np.random.default_rng(3)
    doms = [f"D{i:02d}" for i in range(25)]
    pairs = {(doms[i], doms[j]) for i, j in rng.integers(0, 25, size=(50, 2))}
    null = cons.rewiring_null({"gf": pairs, "sc": set(pairs)}, n_draws=99, seed=0)
    res = cons.null_summary(len(pairs), null)
    assert res["p_value"] == pytest.approx(1 / 100) and res["fold_enrichment"] > 2


def test_consensus_table_high_confidence():
    gf = pd.DataFrame({"source_domain": ["A", "B"], "target_domain": ["B", "C"], "source_name": ["a", "b"],
                       "target_name": ["b", "c"], "n_edges": [3, 1], "mean_abs_d": [1.5, 0.8], "mean_d": [-1.5, 0.8]})
    sc = gf.assign(mean_abs_d=[1.2, 2.0])
    t = cons.consensus_table({"gf": gf, "sc": sc})
    assert t["high_confidence"].tolist() == [True, False]
    assert t["source_name"].tolist() == ["a", "b"]


# --- hierarchy ---------------------------------------------------------------------------------

def _pairs(edges_list):
    return pd.DataFrame({"source_domain": [a for a, _, _ in edges_list], "target_domain": [b for _, b, _ in edges_list],
                         "source_name": [a.lower() for a, _, _ in edges_list], "target_name": [b.lower() for _, b, _ in edges_list],
                         "n_edges": [w for _, _, w in edges_list], "mean_abs_d": 1.0})


def test_pagerank_matches_networkx_and_loops_sccs_are_found():
    el = [("A", "B", 2), ("B", "A", 1), ("B", "C", 3), ("C", "D", 1), ("D", "B", 5), ("A", "E", 1), ("E", "E", 1)]
    nodes, s = hier.hierarchy(_pairs(el))
    g = nx.DiGraph()
    g.add_weighted_edges_from(el)
    ref = nx.pagerank(g, alpha=0.85, weight="weight")
    for r in nodes.itertuples():
        assert r.pagerank == pytest.approx(ref[r.domain], rel=1e-6)
    assert sum(nodes["pagerank"]) == pytest.approx(1.0)
    assert s["n_reciprocal_pairs"] == 1 and s["reciprocal_pairs"] == [["A", "B"]]
    assert s["three_cycles"] == [["B", "C", "D"]]
    assert s["n_self_loops"] == 1
    assert s["largest_scc_size"] == 4 and s["n_nontrivial_scc"] == 1 and s["n_scc"] == 2
    assert "construction" in s["depth_note"]


def test_pagerank_of_a_cycle_is_uniform():
    nodes, _ = hier.hierarchy(_pairs([("A", "B", 1), ("B", "C", 1), ("C", "A", 1)]))
    assert np.allclose(nodes["pagerank"], 1 / 3)


def test_domain_depth_is_relative_layer():
    e = make_edges([(0, 1, 6, 2, 1.0, True, "GO:1", "GO:2"), (3, 4, 6, 2, 1.0, True, "GO:1", "GO:2")])
    d = hier.domain_depths(e, n_layers=7).set_index("domain")
    assert d.loc["GO:1", "mean_layer"] == pytest.approx(1.5)
    assert d.loc["GO:1", "mean_relative_depth"] == pytest.approx(0.25)
    assert d.loc["GO:2", "n_features"] == 1 and d.loc["GO:2", "mean_relative_depth"] == 1.0


# --- Fisher tables: tissue and disease ----------------------------------------------------------

def test_tissue_fisher_tables_match_scipy():
    focus = _pairs([("I1", "X1", 1), ("I2", "X2", 1), ("I3", "X3", 1), ("K1", "X4", 1), ("X5", "X6", 1), ("X7", "X8", 1)])
    names = {"I1": "T cell activation", "I2": "interferon signaling", "I3": "inflammatory response",
             "K1": "kidney development", "X5": "RNA splicing", "X7": "translation"}
    focus["source_name"] = focus["source_domain"].map(names)
    focus["target_name"] = "ribosome biogenesis"
    baseline = focus.iloc[[2, 4, 5]]  # shared: I3 (immune), X5, X7 (universal)
    t = tis.tissue_specificity(focus, baseline).set_index("class")
    row = t.loc["immune"]
    assert (row.focus_only_in_class, row.focus_only_not_in_class, row.shared_in_class, row.shared_not_in_class) == (2, 1, 1, 2)
    odds, p = st.fisher_exact([[2, 1], [1, 2]])
    assert row.odds_ratio == pytest.approx(odds) and row.p_value == pytest.approx(p)
    u = t.loc["universal"]
    assert (u.focus_only_in_class, u.shared_in_class) == (0, 2)
    assert t["q_value"].notna().all() and (t["q_value"] >= t["p_value"] - 1e-12).all()


def test_fisher_2x2_reproduces_the_published_disease_odds_ratio():
    # published: 1126 of 15434 disease pairs vs 16 of 746 other pairs are consensus (OR 3.59)
    odds, p = tis.fisher_2x2(1126, 15434 - 1126, 16, 746 - 16)
    assert odds == pytest.approx(3.59, abs=0.005)
    assert p == pytest.approx(st.fisher_exact([[1126, 14308], [16, 730]])[1])


def test_disease_vs_consensus_table():
    pairs = _pairs([("A", "B", 1), ("A", "C", 1), ("D", "E", 1), ("F", "G", 1), ("H", "I", 1)])
    cats = dis.keyword_categories({"A": "apoptotic process", "B": "x", "C": "y", "D": "insulin secretion",
                                   "E": "z", "F": "f", "G": "g", "H": "h", "I": "i"})
    assert cats["A"] == {"cancer"} and cats["D"] == {"metabolic"} and cats["F"] == frozenset()
    t = dis.disease_vs_consensus(pairs, [True, True, False, False, True], cats).set_index("category")
    anyr = t.loc["any"]
    assert (anyr.consensus_in_category, anyr.other_in_category, anyr.consensus_not_in_category,
            anyr.other_not_in_category) == (2, 1, 1, 1)
    assert anyr.p_value == pytest.approx(st.fisher_exact([[2, 1], [1, 1]])[1])
    assert t.loc["cancer", "n_pairs"] == 2


def test_disease_gmt_categories_by_hypergeometric_overlap():
    genes = {f"G{i}" for i in range(100)}
    domain_genes = {"A": frozenset(f"G{i}" for i in range(10)), "B": frozenset(f"G{i}" for i in range(50, 60)),
                    "C": frozenset(genes - {f"G{i}" for i in range(20)})}
    disease = {"DOID:1": ("leukemia", frozenset(f"G{i}" for i in range(8)))}
    cats, t = dis.gmt_categories(domain_genes, disease)
    assert cats["A"] == {"leukemia"} and cats["B"] == frozenset()
    row = t.set_index("domain").loc["A"]
    # background = union of domain genes = G0-G9 and G20-G99 (90 genes)
    assert row.p_value == pytest.approx(st.hypergeom.sf(7, 90, 8, 10))


# --- novel relations ------------------------------------------------------------------------------

def test_novel_relations_hypergeometric_and_compat():
    gs = {"A": frozenset("abcdef"), "B": frozenset("abcxyz"), "C": frozenset("uvw"), "D": frozenset("ab")}
    pairs = _pairs([("A", "B", 2), ("A", "C", 1), ("A", "D", 1), ("A", "A", 1), ("A", "Z", 1)])
    t = nov.novel_relations(pairs, gs, background=20).set_index("target_domain")
    assert t.loc["B", "shared_genes"] == 3
    assert t.loc["B", "p_overlap"] == pytest.approx(st.hypergeom.sf(2, 20, 6, 6))
    assert t.loc["C", "p_overlap"] == pytest.approx(1.0)
    assert bool(t.loc["C", "novel"]) and bool(t.loc["C", "novel_compat"])
    assert not t.loc["B", "novel_compat"]  # 3 shared genes
    assert bool(t.loc["D", "novel_compat"])  # 2 shared genes
    assert not t.loc["A", "novel"] and not t.loc["A", "novel_compat"]  # same domain
    assert not t.loc["Z", "novel"] and t.loc["Z", "shared_genes"] == -1  # no gene set
    # published (src/14_biological_knowledge_extraction.py L546-570): only matched domains can be
    # "known", so a pair with an unmatched domain is novel
    assert bool(t.loc["Z", "novel_compat"])
    s = nov.novel_summary(t.reset_index())
    assert s["n_pairs_with_gene_sets"] == 4 and s["n_edges_novel_compat"] == 3


def test_gene_sets_from_catalogs_union_top_genes():
    cat = pd.DataFrame({"feature": [0, 1, 2], "label_id": ["GO:1", "GO:1", None],
                        "label_name": ["x", "x", "unannotated"], "top_genes": [["A", "B"], ["B", "C"], ["Z"]]})
    assert nov.gene_sets_from_catalogs([cat]) == {"GO:1": frozenset("ABC")}


# --- GraphML ---------------------------------------------------------------------------------------

def test_graphml_round_trip(tmp_path):
    g = circuit_graph(EDGES)
    write_graphml(g, tmp_path / "c.graphml")
    h = nx.read_graphml(tmp_path / "c.graphml")
    assert set(h.nodes) == set(g.nodes) and h.number_of_edges() == 6
    assert h.nodes["L0:F1"]["layer"] == 0 and h.nodes["L1:F10"]["label"] == "GO:10010"
    assert h.edges["L0:F1", "L1:F10"]["cohens_d"] == pytest.approx(-1.5)
    assert h.edges["L0:F2", "L3:F30"]["in_cap"] is False
    assert h.edges["L0:F1", "L1:F11"]["consistency"] == pytest.approx(0.9)
