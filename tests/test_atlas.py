"""The interactive atlas: its embedded data equals the run's tables, the size cap keeps the
strongest edges and says so, and in headless Chromium a user can search a gene, open the first
feature, click a neighbour in the graph and read cards that match the tables, without console
errors or network requests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from browser import Browser, chromium, console_messages

from sccircuits.models import testing


def _embedded(path) -> dict:
    m = re.search(r"<script id='atlas-data' type='application/json'>(.*?)</script>", path.read_text(), re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def atlas(pipeline, tmp_path_factory):
    """A labelled copy of the Geneformer run (annotated with gene sets that contain the top genes
    of its traced features, so labels and terms exist) and the scGPT run, with the comparison."""
    from sccircuits.annotate import AnnotateConfig, annotate, load_annotation
    from sccircuits.atlas import AtlasConfig, build_atlas
    from sccircuits.genesets import write_gmt

    out, runs = pipeline
    tmp = tmp_path_factory.mktemp("atlas")
    run = tmp / "gf_labelled"
    shutil.copytree(runs[0], run)
    edges = pd.read_parquet(run / "trace" / "edges.parquet")
    catalogs, _ = load_annotation(run)
    sets = {}
    for i, (layer, feat) in enumerate(edges[["source_layer", "source_feature"]].drop_duplicates().itertuples(index=False)):
        genes = catalogs[layer].set_index("feature").loc[feat, "top_genes"][:10]
        sets[f"GO:{9000000 + i:07d}"] = (f"planted process {i}", frozenset(genes))
    rng = np.random.default_rng(1)
    syms = testing.gene_symbols(60)
    for i in range(20):
        sets[f"GO:{i:07d}"] = (f"random process {i}", frozenset(rng.choice(syms, size=8, replace=False)))
    write_gmt(tmp / "go_bp.gmt", sets)
    annotate(run, [tmp / "go_bp.gmt"], AnnotateConfig(min_count=2), progress=False)
    path = build_atlas([run, runs[1]], compare=out / "cmp", out=tmp / "atlas.html", cfg=AtlasConfig())
    return path, [run, runs[1]], out / "cmp"


def test_atlas_data_equals_the_tables(atlas):
    from sccircuits.annotate import load_annotation
    from sccircuits.sae import load_saes

    path, runs, _ = atlas
    data = _embedded(path)
    F, E = data["features"], data["edges"]
    key = {(r, l, f): i for i, (r, l, f) in enumerate(zip(F["run"], F["layer"], F["id"]))}
    n_total = 0
    for ri, run in enumerate(runs):
        edges = pd.read_parquet(run / "trace" / "edges.parquet")
        null = pd.read_parquet(run / "trace" / "null.parquet").set_index(["source_layer", "target_layer"])
        n_total += len(edges)
        got = {(E["s"][j], E["t"][j]): j for j in range(len(E["s"])) if F["run"][E["s"][j]] == ri}
        assert len(got) == len(edges)
        for r in edges.itertuples():
            j = got[key[(ri, r.source_layer, r.source_feature)], key[(ri, r.target_layer, r.target_feature)]]
            assert E["d"][j] == pytest.approx(r.cohens_d, abs=6e-4)
            assert E["q"][j] == pytest.approx(r.q_value, rel=0.006)
            assert E["n"][j] == r.n_cells and E["cap"][j] == int(r.in_cap)
            floor = null.loc[(r.source_layer, r.target_layer), "abs_d_q99"]
            assert E["sp"][j] == pytest.approx(abs(r.cohens_d) / floor, abs=6e-3)
        catalogs, enrichment = load_annotation(run)
        for layer, cat in catalogs.items():
            for c in cat[cat.fire_count > 0].itertuples():
                i = key[(ri, layer, c.feature)]
                assert [data["genes"][g] for g in F["genes"][i]] == list(c.top_genes)
                assert F["gene_counts"][i] == list(c.top_gene_counts)
                assert F["fires"][i] == c.fire_count
                label = data["terms"][F["label"][i]][:2] if F["label"][i] >= 0 else [None, "unannotated"]
                assert label[1] == c.label_name and (label[0] is None or label[0] == c.label_id)
            sig = enrichment[layer][enrichment[layer].significant]
            for feat, grp in sig.groupby("feature"):
                i = key[(ri, layer, feat)]
                assert [data["terms"][t][0] for t in F["terms"][i]] == grp.sort_values(["q_value", "term_id"]).term_id.head(10).tolist()
    assert data["limits"]["n_edges_total"] == n_total and data["messages"] == []
    assert any(label >= 0 for label in F["label"])  # the planted sets label features

    # activity per cell type, recomputed by brute force: dense SAE codes of every position
    import anndata as ad
    import torch

    from sccircuits.activations import ActivationStore

    run = runs[0]
    store = ActivationStore(run)
    ct = data["runs"][0]["cell_types"]
    labels = ad.read_h5ad(store.run.recorded_path("extract", "data_path")).obs["cell_type"].astype(str).to_numpy()
    sae = load_saes(run, layers=[1])[1]
    acts = np.concatenate([a for a, _, _ in store.iter_batches(1, 4096)])
    cells = store.cell_index()
    with torch.no_grad():
        fired = (sae.encode(torch.from_numpy(acts)) > 0).numpy()
    assert ct["column"] == "cell_type" and sum(ct["n_cells"]) == len(np.unique(cells))  # 40 cells < 300 sampled
    checked = 0
    for i in [i for i in range(len(F["id"])) if F["run"][i] == 0 and F["layer"][i] == 1][:10]:
        in_cell = pd.Series(fired[:, F["id"][i]]).groupby(cells).any()
        types = labels[in_cell.index.to_numpy()]
        expect = [in_cell.to_numpy()[types == t].mean() for t in ct["types"]]
        assert F["cells"][i] == pytest.approx(expect, abs=6e-4)
        checked += 1
    assert checked == 10


def test_size_cap_keeps_the_strongest_edges_and_says_so(atlas, tmp_path):
    from sccircuits.atlas import AtlasConfig, build_atlas
    from sccircuits.atlas.data import keep_strongest

    _, runs, _ = atlas
    path = build_atlas(runs[:1], out=tmp_path / "small.html", cfg=AtlasConfig(max_edges=7, cell_type_column=""))
    data = _embedded(path)
    edges = pd.read_parquet(runs[0] / "trace" / "edges.parquet")
    assert sorted(np.abs(data["edges"]["d"])) == pytest.approx(sorted(edges.cohens_d.abs().nlargest(7)), abs=6e-4)
    assert f"the 7 strongest edges (by |d|) of {len(edges)}" in data["messages"][0]
    assert data["runs"][0]["cell_types"] is None
    # the feature cap stops at the last edge whose end points still fit
    keys = (np.array(["a", "a", "b", "c"]), np.array(["x", "y", "x", "z"]))
    assert keep_strongest(keys, np.array([4.0, 3.0, 2.0, 1.0]), 10, 4).tolist() == [0, 1, 2]
    assert keep_strongest(keys, np.array([4.0, 3.0, 2.0, 1.0]), 2, 99).tolist() == [0, 1]


def test_atlas_errors(tmp_path, pipeline):
    from typer.testing import CliRunner

    from sccircuits.atlas import build_atlas
    from sccircuits.cli import app
    from sccircuits.errors import InputError
    from sccircuits.rundir import RunDir

    with pytest.raises(InputError, match="no manifest.json"):
        build_atlas([tmp_path / "missing"])
    RunDir(tmp_path / "empty")
    with pytest.raises(InputError, match="nothing to show"):
        build_atlas([tmp_path / "empty"], out=tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()
    res = CliRunner().invoke(app, ["atlas", "--out", str(tmp_path / "b.html")])
    assert isinstance(res.exception, InputError) and "at least one run" in str(res.exception)
    bad = subprocess.run([sys.executable, "-m", "sccircuits.cli", "atlas", "--run", str(tmp_path / "empty"),
                          "--out", str(tmp_path / "b.html")], capture_output=True, text=True)
    assert bad.returncode == 2 and "nothing to show" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.html").exists()


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian package 'chromium')")
def test_atlas_in_chromium_search_card_neighbour(atlas, tmp_path):
    from sccircuits.annotate import load_annotation

    path, runs, _ = atlas
    data = _embedded(path)
    F = data["features"]
    # the page's rule for a gene: features ranked by the gene's place in their top-gene list, then
    # its count; pick a gene whose first result has edges
    ranking: dict[str, list] = {}
    ends = set()
    for ri, r in enumerate(runs):
        for layer, cat in load_annotation(r)[0].items():
            for c in cat.itertuples():
                for k, g in enumerate(c.top_genes):
                    ranking.setdefault(g, []).append((k, -c.top_gene_counts[k], ri, layer, c.feature))
        e = pd.read_parquet(r / "trace" / "edges.parquet")
        for side in ("source", "target"):
            ends |= {(ri, *x) for x in e[[f"{side}_layer", f"{side}_feature"]].itertuples(index=False, name=None)}
    firsts = {g: min(h) for g, h in ranking.items()}  # ties: run, layer, feature as on the page
    gene = sorted(g for g, f in firsts.items() if f[2:] in ends)[0]
    first = firsts[gene]
    edges = pd.read_parquet(runs[first[2]] / "trace" / "edges.parquet")

    control = tmp_path / "broken.html"  # positive control: the console check sees errors
    control.write_text("<html><body><script>console.error('planted')</script></body></html>")
    assert any("planted" in m for m in console_messages(control))

    with Browser() as b:
        b.open(path)
        b.wait_for("window.atlas && window.atlas.ready")
        b.type_text("#search", gene.lower())
        b.wait_for("document.querySelectorAll('#results li.result').length")
        top = b.evaluate("document.querySelector('#results li.result .fid').textContent")
        assert top == f"L{first[3]}:F{first[4]}"
        b.click_selector("#results li.result")
        b.wait_for("!!document.getElementById('card-title')")
        ri, layer, feat = first[2:]
        _assert_card(b, runs[ri], ri, layer, feat)

        # click the strongest neighbour in the graph (a real mouse click on the canvas)
        b.evaluate("document.getElementById('graph').scrollIntoView({block: 'center'})")
        nb = b.evaluate("""(() => { const cy = window.atlas.cy, me = cy.nodes('[focus = 1]')[0], d = window.atlas.data.edges.d;
            const size = e => Math.abs(d[+e.id().slice(1)]);
            const e = me.connectedEdges().sort((a, b) => size(b) - size(a))[0];
            const n = e.source().same(me) ? e.target() : e.source(); const p = n.renderedPosition();
            const r = cy.container().getBoundingClientRect(); return [r.left + p.x, r.top + p.y, n.data('f')]; })()""")
        b.click(nb[0], nb[1])
        b.wait_for(f"location.hash === '#f={nb[2]}' && !!document.getElementById('card-title')")
        n_run, n_layer, n_feat = F["run"][nb[2]], F["layer"][nb[2]], F["id"][nb[2]]
        _assert_card(b, runs[n_run], n_run, n_layer, n_feat)
        mine = edges[((edges.source_layer == layer) & (edges.source_feature == feat)) |
                     ((edges.target_layer == layer) & (edges.target_feature == feat))]
        strongest = mine.loc[mine.cohens_d.abs().idxmax()]
        other = ("target" if (strongest.source_layer, strongest.source_feature) == (layer, feat) else "source")
        assert (n_run, n_layer, n_feat) == (ri, strongest[f"{other}_layer"], strongest[f"{other}_feature"])
        # sort an edge table by q with clicks on its header: descending, then ascending
        table = b.evaluate("document.querySelector('table.edges').id")
        for desc, mark in ((True, "\u25bc"), (False, "\u25b2")):
            b.click_selector(f"#{table} th[data-col='4']")
            b.wait_for(f"document.querySelector('#{table} th[data-col=\"4\"]').textContent.endsWith('{mark}')")
            qs = b.evaluate(f"[...document.getElementById('{table}').tBodies[0].rows].map(r => +r.cells[4].textContent)")
            assert len(qs) and qs == sorted(qs, reverse=desc)
        # two hops show at least the one-hop neighbourhood
        one = b.evaluate("window.atlas.cy.nodes().length")
        b.evaluate("(() => { const s = document.getElementById('hops'); s.value = '2';"
                   " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        assert b.wait_for("window.atlas.cy.nodes().length") >= one
        b.screenshot(tmp_path / "neighbour.png")
        assert b.console == []
        assert all(u.startswith("file:") or u.startswith("data:") for u in b.requests), b.requests


def _assert_card(b: Browser, run, ri: int, layer: int, feat: int) -> None:
    """The open card shows this feature's catalog row, label and edges as in the run's tables."""
    from sccircuits.annotate import load_annotation

    title = b.evaluate("document.getElementById('card-title').textContent")
    assert title == f"{run.name} · layer {layer} · feature {feat}"
    cat = load_annotation(run)[0][layer].set_index("feature").loc[feat]
    rows = b.evaluate("[...document.querySelectorAll('#card-genes tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert [r[1] for r in rows] == list(cat.top_genes)
    assert [int(r[2].replace(",", "")) for r in rows] == list(cat.top_gene_counts)
    label = b.evaluate("document.getElementById('card-label').textContent")
    assert label.startswith(cat.label_name) and (cat.label_name == "unannotated" or cat.label_id in label)
    stats = b.evaluate("document.getElementById('card-stats').textContent")
    freq = float(re.search(r"activation frequency([\d.]+)% of positions", stats).group(1))
    assert freq == pytest.approx(100 * cat.activation_freq, rel=6e-3)
    edges = pd.read_parquet(run / "trace" / "edges.parquet")
    for side, other, table in (("source", "target", "out"), ("target", "source", "in")):
        mine = edges[(edges[f"{side}_layer"] == layer) & (edges[f"{side}_feature"] == feat)]
        shown = b.evaluate(f"(() => {{ const t = document.getElementById('{table}'); return t ? "
                           "[...t.tBodies[0].rows].map(r => [r.cells[0].textContent, r.cells[2].textContent]) : []; })()")
        assert len(shown) == min(len(mine), 100)
        if len(mine):
            best = mine.loc[mine.cohens_d.abs().idxmax()]
            assert shown[0][0] == f"L{best[f'{other}_layer']}:F{best[f'{other}_feature']}"
            assert float(shown[0][1]) == pytest.approx(best.cohens_d, rel=6e-3)  # 3 significant digits


def test_consensus_view_lists_the_edges_behind_each_pair(tmp_path):
    """The cross-model view: each consensus pair of a compare directory points at the embedded
    edges whose (source, target) labels are that pair, run by run; compared runs missing from
    the atlas are named."""
    from sccircuits.analysis.inputs import normalize_edges
    from sccircuits.atlas import AtlasConfig, atlas_data
    from sccircuits.atlas.data import RunTables
    from sccircuits.rundir import RunDir, atomic_write_json, atomic_write_parquet

    def edges(rows):
        cols = ["source_layer", "source_feature", "source_label", "source_label_id", "target_layer",
                "target_feature", "target_label", "target_label_id", "cohens_d"]
        e = pd.DataFrame(rows, columns=cols).assign(consistency=0.9, in_cap=True, q_value=0.01, n_cells=10)
        return normalize_edges(e)

    a = edges([(0, 1, "apoptosis", "GO:A", 1, 2, "mitosis", "GO:B", -1.2),
               (0, 1, "apoptosis", "GO:A", 1, 3, "unannotated", "", 0.8),
               (0, 4, "mitosis", "GO:B", 1, 2, "mitosis", "GO:B", 0.7),
               (0, 6, "apoptosis", "GO:A", 1, 9, "mitosis", "GO:B", 2.5)])
    a["edge"] = [True, True, True, False]  # a tested pair outside the trace's edge set: not shown
    b = edges([(0, 5, "apoptosis", "GO:A", 2, 7, "mitosis", "GO:B", 0.9)])
    tables = []
    for name, e in (("gf", a), ("sg", b)):
        rd = RunDir(tmp_path / name)
        tables.append(RunTables(name, rd.path, name, e, None, {}, {}, None, rd))
    cmp = RunDir(tmp_path / "cmp")
    runs = {"gf": str(tmp_path / "gf"), "sg": str(tmp_path / "sg"), "other": str(tmp_path / "other")}
    cmp.begin_stage("compare", {}, runs=runs, groups={"geneformer": ["gf", "other"], "scgpt": ["sg"]})
    atomic_write_parquet(cmp / "consensus_pairs.parquet", pd.DataFrame([
        {"source_domain": "GO:A", "target_domain": "GO:B", "source_name": "apoptosis", "target_name": "mitosis",
         "n_edges_geneformer": 1, "mean_abs_d_geneformer": 1.2, "mean_d_geneformer": -1.2, "n_edges_scgpt": 1,
         "mean_abs_d_scgpt": 0.9, "mean_d_scgpt": 0.9, "high_confidence": False, "edge_set": "all"}]))
    atomic_write_json(cmp / "compare.json", {"consensus": {"all": {"n_consensus": 1, "pairs_per_group": {
        "geneformer": 2, "scgpt": 1}, "label_permutation_null": {"expected": 0.2, "p_value": 0.1},
        "edge_permutation_null": {"expected": 0.5, "p_value": 0.4}, "headline_null": "edge_permutation_null"}}})
    cmp.complete_stage("compare", outputs=["consensus_pairs.parquet", "compare.json"])

    data = atlas_data(tables, AtlasConfig(cell_type_column=""), cmp.path)
    C, E, F = data["compare"], data["edges"], data["features"]
    assert C["n_consensus"] == 1 and C["runs_not_in_atlas"] == ["other"]
    assert list(C["nulls"]) == ["edge_permutation_null", "label_permutation_null"]  # headline first
    assert C["groups"] == {"geneformer": ["gf", "other"], "scgpt": ["sg"]}
    pair = C["pairs"][0]
    assert pair["source"] == ["GO:A", "apoptosis"] and pair["groups"]["geneformer"]["runs"] == [0]
    behind = {run: [(F["layer"][E["s"][i]], F["id"][E["s"][i]], F["layer"][E["t"][i]], F["id"][E["t"][i]], E["d"][i])
                    for i in ix] for run, ix in pair["edges"].items()}
    assert behind == {"0": [(0, 1, 1, 2, -1.2)], "1": [(0, 5, 2, 7, 0.9)]}
    assert len(E["s"]) == 4 and data["runs"][0]["n_edges"] == 3
    assert [data["terms"][F["label"][E["s"][i]]][0] for i in pair["edges"]["0"]] == ["GO:A"]  # labels from the edges
