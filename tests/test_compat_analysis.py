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
    cfg = CompareConfig(n_perm=49, n_rewire=9, contrasts=["gf_k562:scgpt_ts"], progress=False, compat="reference",
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
    cfg = CompareConfig(n_perm=9, n_rewire=9, progress=False, compat="reference")
    with pytest.raises(InputError, match="compat-gene-sets"):
        compare([a.path, b.path], None, tmp_path / "cmp", cfg)
