"""``compare --compat reference``: published tissue, disease, novel-relation and consensus rules,
each pinned to a hand-computed case. Published script: bio-sae-circuits
``src/14_biological_knowledge_extraction.py`` (src/14) and
``src/15_phase6_predictions_and_validation.py`` (src/15)."""

from __future__ import annotations

import pandas as pd
import pytest

from test_analysis_run import DOMAINS, PAIRS_A, PAIRS_B, _circuit, fake_run
from sccircuits.analysis import CompareConfig, compare
from sccircuits.analysis import disease as dis
from sccircuits.analysis import novel as nov
from sccircuits.analysis import tissue as tis
from sccircuits.errors import InputError


def test_tissue_published_one_sided_greater_no_correction():
    """src/14 L998-1087. Focus-only pairs {(c,d), (e,f)}, shared {(a,b)}. kidney: [[1, 1], [0, 1]]
    -> one-sided p = P(the one kidney pair falls in the focus-only row) = 2/3 (two-sided: 1), OR
    inf; immune and universal: [[0, 2], [1, 0]] -> p = 1; lung, blood: no pair -> not tested."""
    names = {"a": "T cell activation", "b": "ribosome biogenesis", "c": "renal system development",
             "d": "foo", "e": "bar", "f": "baz", "x": "qux", "y": "quux"}
    t = tis.tissue_specificity_published({("a", "b"), ("c", "d"), ("e", "f")}, {("a", "b"), ("x", "y")}, names)
    t = t.set_index("class")
    assert list(t.index) == ["immune", "kidney", "universal"]
    k = t.loc["kidney"]
    assert (k.focus_only_in_class, k.focus_only_not_in_class, k.shared_in_class, k.shared_not_in_class) == (1, 1, 0, 1)
    assert k.p_value == pytest.approx(2 / 3) and k.odds_ratio == float("inf")
    assert t.loc["immune", "p_value"] == 1.0 and t.loc["universal", "p_value"] == 1.0
    assert "q_value" not in t.columns


def test_disease_published_both_ends_same_category():
    """src/15 L639-903 on a hand-built case.

    Categories: DNA_damage_repair = genes of GO terms named with 'dna repair' / 'double-strand
    break' = {G1..G4}; cell_cycle_cancer ('cell division') = {G5, G6}. Domains: D1 = {G1,G2,G3,G9},
    D2 = {G1,G2,G4,G10}, D3 = {G5,G6,G11}, D4 = {G1,G9} (< 3 genes: skipped), unannotated = 50
    other genes; background 59. D1 vs DDR: [[3, 1], [1, 54]], p = (4*55 + 1)/C(59,4) = 221/455126
    -> enriched; D2 likewise; D3 vs cell cycle: [[2, 1], [0, 56]], p = 57/C(59,3) -> enriched, but
    cell cycle has one enriched domain only, so (D3, D3) is not a disease pair (L822-823).
    Pairs: (D1,D2), (D2,D1) disease; consensus {(D1,D2), (D3,D3)}; 6 pairs in all -> [[1, 1],
    [1, 3]], one-sided p = 1 - C(4,2)/C(6,2) = 0.6, OR 3."""
    go = {"GO:1": ("DNA repair", frozenset({"G1", "G2", "G3"})), "GO:2": ("double-strand break repair", frozenset({"G4"})),
          "GO:3": ("cell division", frozenset({"G5", "G6"})), "GO:4": ("other", frozenset({"G7"}))}
    sets = dis.published_disease_gene_sets(go)
    assert sets["DNA_damage_repair"] == {"G1", "G2", "G3", "G4"} and sets["cell_cycle_cancer"] == {"G5", "G6"}
    assert "trrust_TFs" not in sets and dis.published_disease_gene_sets(go, {"TP53"})["trrust_TFs"] == {"TP53"}
    genes = {"D1": {"G1", "G2", "G3", "G9"}, "D2": {"G1", "G2", "G4", "G10"}, "D3": {"G5", "G6", "G11"},
             "D4": {"G1", "G9"}, "unannotated": {f"U{i}" for i in range(50)}}
    enr = dis.published_domain_enrichment(genes, sets)
    e = enr.set_index(["domain", "category"])
    assert tuple(e.loc[("D1", "DNA_damage_repair"), ["overlap", "domain_only", "category_only", "neither"]]) == (3, 1, 1, 54)
    assert e.loc[("D1", "DNA_damage_repair"), "p_value"] == pytest.approx(221 / 455126)
    assert e.loc[("D3", "cell_cycle_cancer"), "p_value"] == pytest.approx(57 / 32509)
    assert "D4" not in set(enr["domain"]) and "unannotated" not in set(enr["domain"])
    pairs = {("D1", "D2"), ("D2", "D1"), ("D3", "D3"), ("D1", "D3"), ("D1", "unannotated"), ("unannotated", "D2")}
    dp = dis.published_disease_pairs(pairs, enr)
    assert dp == {("D1", "D2"), ("D2", "D1")}
    r = dis.published_disease_consensus(pairs, dp, {("D1", "D2"), ("D3", "D3")})
    assert (r["disease_in_consensus"], r["disease_not_consensus"], r["other_in_consensus"], r["other_not_consensus"]) == (1, 1, 1, 3)
    assert r["p_value"] == pytest.approx(0.6) and r["odds_ratio"] == pytest.approx(3.0)


def test_novel_published_domain_genes_by_substring():
    """src/14 L521-534: exact key, else the first term (GO, then KEGG, then Reactome, file order)
    whose name contains the domain's or is contained in it."""
    go = {"GO:1": ("DNA repair", frozenset("ab")), "GO:2": ("regulation of DNA repair", frozenset("cd"))}
    kegg = {"hsa1": ("Base excision repair", frozenset("ef"))}
    names = {"GO:2": "whatever", "X": "repair", "Y": "positive regulation of DNA repair", "Z": "unrelated",
             "W": "excision"}
    gs = nov.gene_sets_published(names, [go, kegg])
    assert gs["GO:2"] == frozenset("cd")  # exact id
    assert gs["X"] == frozenset("ab")  # "repair" in "DNA repair" (first term)
    assert gs["Y"] == frozenset("ab")  # "DNA repair" in the domain's name
    assert gs["W"] == frozenset("ef") and "Z" not in gs


@pytest.fixture
def ref_runs(tmp_path):
    ea, la = _circuit(PAIRS_A, seed=1)
    eb, lb = _circuit(PAIRS_B, d=1.2, seed=2)
    runs = [fake_run(tmp_path / "gf_k562", "geneformer", ea, la), fake_run(tmp_path / "scgpt_ts", "scgpt", eb, lb)]
    for run in runs:  # published gene lists: annotated features only (src/14 L117-132)
        for p in (run / "annotation").glob("*_catalog.parquet"):
            cat = pd.read_parquet(p)
            cat["n_annotations"] = [0 if n == "unannotated" else 2 for n in cat["label_name"]]
            cat.to_parquet(p)
    gmt = tmp_path / "go_bp.gmt"
    lines = [f"{k}\t{n}\t" + "\t".join(g) for k, (n, g) in DOMAINS.items()]
    lines.append("GO:7\timmune response\tCD3E\tCD2\tLCK\tZAP70\tBAX\tBCL2\tCASP3")
    gmt.write_text("\n".join(lines) + "\n")
    return runs, gmt


def test_compare_compat_reference_end_to_end(ref_runs, tmp_path):
    """Capped edges (3 of each pair's 5 edges, plus (GO:1, unannotated) and (unannotated,
    unannotated)). Consensus {(GO:1,GO:2), (GO:3,GO:3)}.
    Disease: immune_response = genes of 'T cell activation' and 'immune response' = 7 genes;
    background = the 19 genes of the annotated features; GO:1 and GO:2 are each [[4, 0], [3, 12]]
    -> p = C(7,4)/C(19,4) = 0.009, enriched; all 7 pairs, disease pairs (GO:1,GO:1), (GO:1,GO:2);
    [[1, 1], [1, 4]] -> p = 1 - C(5,2)/C(7,2) = 11/21, OR 4.
    Novel: no two domains share >= 3 genes, so every annotated pair with two different domains is
    novel: (1,2), (4,2), (5,6) = 3 pairs, 6 + 3 + 3 = 12 capped edges.
    Tissue (gf_k562 vs scgpt_ts): focus-only {(1,1), (4,2)}, shared {(1,2), (3,3)}; kidney [[1, 1],
    [0, 2]] -> p = 1/2."""
    (a, b), gmt = ref_runs
    cfg = CompareConfig(n_perm=49, n_rewire=9, n_edge_perm=9, disease_n_perm=9, contrasts=["gf_k562:scgpt_ts"], progress=False, compat="reference",
                        compat_gene_sets=[str(gmt)])
    r = compare([a.path, b.path], f"geneformer={a.path};scgpt=scgpt_ts", tmp_path / "cmp", cfg)["reference"]
    assert r["consensus"]["n_consensus"] == 2
    exp = r["consensus"]["permutation_expected"]
    assert r["consensus"]["enrichment_ratio"] == pytest.approx(2 / max(exp, 1))
    d = r["disease"]
    assert d["n_pairs"] == 7 and d["n_disease_pairs"] == 2 and d["n_domains_enriched"] == 2
    assert d["p_value"] == pytest.approx(11 / 21) and d["odds_ratio"] == pytest.approx(4.0)
    assert r["novel"]["n_novel_pairs"] == 3 and r["novel"]["n_novel_edges"] == 12 and r["novel"]["n_known_links"] == 0
    t = pd.DataFrame(r["tissue"]["tests"]).set_index("class")
    assert t.loc["kidney", "p_value"] == pytest.approx(0.5) and "lung" not in t.index
    for name in ("reference_novel_pairs", "reference_disease_domains", "reference_tissue"):
        assert (tmp_path / "cmp" / f"{name}.parquet").is_file()


def test_compare_compat_needs_gene_sets(ref_runs, tmp_path):
    (a, b), _ = ref_runs
    cfg = CompareConfig(n_perm=9, n_rewire=9, n_edge_perm=9, disease_n_perm=9, progress=False, compat="reference")
    with pytest.raises(InputError, match="compat-gene-sets"):
        compare([a.path, b.path], None, tmp_path / "cmp", cfg)


# --- feature labels --------------------------------------------------------------------------------

def test_published_label_rules_first_listed_source_best_p_target():
    """Published source label: the first GO BP / KEGG / Reactome entry of the feature's
    annotation list (bio-sae-circuits src/13_causal_circuit_tracing.py L171-175); the list holds
    significant tests in test order, GO BP in file order, then KEGG, then Reactome (bio-sae
    src/04_annotate_features.py L243-262, L332-343). Target label: lowest adjusted p among GO BP
    terms, ties to the first listed (src/14 L120-129, strict <).

    GO file order T3, T2, T1, T4, T5; alpha 0.95 makes every tested term significant except T5
    (p 1, its table clipped). BH over the 7 tests (p .032, .14, .14, .343, .634, 1, 1).
    f0 (A B C D) tests T3 (p 1660/4845), T1 (p 155/4845): source T3 (listed first), target T1.
    f1 (A B E) tests T2 and T1 with equal p (160/1140): source T2, target T2 (tie -> listed first;
    the default rule breaks the tie by term id: T1). f2 (15 fillers) overlaps KEGG K1 in 4 genes
    (p 9828/15504, q .887): source K1, target unannotated (targets take GO BP only). f3 is dead."""
    from sccircuits.annotate import AnnotateConfig, annotate_layer

    filler = [f"F{i}" for i in range(15)]
    catalog = pd.DataFrame({"feature": [0, 1, 2, 3], "fire_count": [10, 10, 10, 0],
                            "activation_freq": [0.1, 0.1, 0.1, 0.0],
                            "top_genes": [["A", "B", "C", "D"], ["A", "B", "E"], filler, ["Z9"]]})
    go = {"T3": ("three", frozenset({"C", "D", "Z1", "Z2", "Z3", "Z4"})),
          "T2": ("two", frozenset({"A", "E", "Y1", "Y2", "Y3"})),
          "T1": ("one", frozenset({"A", "B", "C", "X1", "X2"})),
          "T4": ("small", frozenset({"A", "B", "C", "D"})),
          "T5": ("big", frozenset({"A", "B", *[f"W{i}" for i in range(18)]}))}
    kegg = {"K1": ("kegg one", frozenset({"Q1", "F0", "F1", "F2", "F3"}))}
    libs = {"kegg": kegg, "go_bp": go}  # the GO BP library comes first whatever the order given
    cat, _ = annotate_layer(catalog, libs, None, AnnotateConfig(compat="reference", alpha=0.95, store_max_q=1.0))
    assert cat["source_label_id"].tolist() == ["T3", "T2", "K1", None]
    assert cat["label_id"].tolist() == ["T1", "T2", None, None]
    assert cat["source_label_name"].tolist() == ["three", "two", "kegg one", "unannotated"]
    default, _ = annotate_layer(catalog, libs, ["A", "B", "C", "D", "E", *filler, "Z9"],
                                AnnotateConfig(alpha=0.95, store_max_q=1.0, min_count=1))
    assert "source_label_id" not in default.columns
    # the tie of f1 alone: published order (term_order) -> T2, default (p, overlap, term id) -> T1
    from sccircuits.annotate import label_features

    tie = pd.DataFrame({"feature": [1, 1], "library": "go_bp", "term_id": ["T2", "T1"], "term_name": ["two", "one"],
                        "q_value": 0.01, "p_value": 0.001, "overlap": 2, "kind": "gene_set", "term_order": [1, 2]})
    assert label_features(tie, 2, "go_bp")["label_id"].tolist()[1] == "T2"
    assert label_features(tie.drop(columns="term_order"), 2, "go_bp")["label_id"].tolist()[1] == "T1"


def test_tracer_labels_sources_with_the_published_source_label():
    """Edges take source labels from the catalog's source_label_* columns when present (compat
    annotation), target labels from label_*."""
    from sccircuits.trace.edges import _label_maps, _labels

    cat = pd.DataFrame({"feature": [0, 1], "label_id": ["T1", None], "label_name": ["one", "unannotated"],
                        "source_label_id": ["T3", "K1"], "source_label_name": ["three", "kegg one"]})
    src = _labels(_label_maps({0: cat}, "source_label"), 0, [0, 1])
    tgt = _labels(_label_maps({0: cat}), 0, [0, 1])
    assert src == (["three", "kegg one"], ["T3", "K1"]) and tgt == (["one", "unannotated"], ["T1", ""])
    plain = cat.drop(columns=["source_label_id", "source_label_name"])
    assert _labels(_label_maps({0: plain}, "source_label"), 0, [0, 1]) == tgt


def test_cli_compare_and_predict_with_compat(ref_runs, tmp_path):
    from typer.testing import CliRunner

    from sccircuits.cli import app

    (a, b), gmt = ref_runs
    r = CliRunner().invoke(app, ["compare", str(a.path), str(b.path), "--groups", f"geneformer={a.path};scgpt=scgpt_ts",
                                 "--out", str(tmp_path / "cmp"), "--permutations", "9", "--rewirings", "9", "--edge-permutations", "9",
                                 "--disease-permutations", "9",
                                 "--compat", "reference", "--compat-gene-sets", str(gmt),
                                 "--compat-contrasts", "gf_k562+scgpt_ts:scgpt_ts"])
    assert r.exit_code == 0, r.output
    assert "compat reference: 2 consensus pairs; disease pairs 2/7, OR 4.00" in r.output
    r = CliRunner().invoke(app, ["predict", "--run", str(a.path), "--out", str(tmp_path / "p.tsv"), "--compat", "reference"])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert "mean_abs_d" in pred.columns and len(pred) > 0
