"""One module owns the run directory's files (sccircuits.artifacts): no stage output is
parsed elsewhere, and every consumer follows the same annotation pointer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from sccircuits import artifacts
from sccircuits.analysis import AnalyzeConfig, analyze
from sccircuits.errors import InputError
from sccircuits.validate import PredictConfig, predict_genes

from test_analysis_run import PAIRS_A, _circuit, fake_run

SRC = Path(__file__).resolve().parents[1] / "src" / "sccircuits"

# Stage outputs that other stages read. Their names may appear only in artifacts.py (reader
# and writer), in docstrings/comments, and in the stage that produces extra copies (csv).
OUTPUT_NAMES = ("edges.parquet", "features.parquet", "null.parquet", "trace_meta.json", "_catalog.parquet",
                "_enrichment.parquet", "summary.json", "novel_pairs.parquet", "coherence_null.parquet",
                "consensus_pairs.parquet", "consensus_null.parquet", "comparison_table.parquet",
                "disease.parquet", "compare.json", "d_distribution.parquet", "hubs.parquet", "kruskal.parquet",
                "activity.parquet")


def _code_lines(path: Path):
    """(line number, code) of a module without docstrings, comments and prose strings (a string
    with a space is help text or a message, not a path)."""
    import ast
    import io
    import tokenize

    text = path.read_text()
    doc_lines = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) \
                and isinstance(node.value.value, str):
            doc_lines.update(range(node.lineno, node.end_lineno + 1))
    keep: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT or tok.start[0] in doc_lines:
            continue
        if tok.type == tokenize.STRING and " " in tok.string:
            continue
        keep[tok.start[0]] = keep.get(tok.start[0], "") + " " + tok.string
    return sorted(keep.items())


def test_no_stage_output_is_parsed_outside_its_reader():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "artifacts.py":
            continue
        for lineno, code in _code_lines(path):
            for name in OUTPUT_NAMES:
                if name in code:
                    offenders.append(f"{path.relative_to(SRC)}:{lineno}: {name}")
            # predictions.py reads user-supplied pair tables; activations.py is the extract stage's
            # own store (ActivationStore), read by train-sae through that class
            if re.search(r"\bread_parquet\s*\(", code) and path.name not in ("predictions.py", "activations.py"):
                offenders.append(f"{path.relative_to(SRC)}:{lineno}: read_parquet")
    assert not offenders, "\n".join(offenders)


def test_one_unannotated_spelling():
    hits = [p for p in SRC.rglob("*.py") if re.search(r"^UNANNOTATED\s*=", p.read_text(), flags=re.M)]
    assert [p.name for p in hits] == ["artifacts.py"]


def _traced_elsewhere(tmp_path):
    """Run B traced with ``--annotation A``: B has edges but no annotate stage of its own."""
    edges, labels = _circuit(PAIRS_A, seed=1)
    a = fake_run(tmp_path / "A", "geneformer", edges, labels)
    b = fake_run(tmp_path / "B", "geneformer", edges, labels, annotate=False)
    (b / "trace/trace_meta.json").write_text(json.dumps({"annotation": str(a.path)}))
    return a, b


def test_analyze_and_validate_agree_on_labels_of_a_run_annotated_elsewhere(tmp_path):
    a, b = _traced_elsewhere(tmp_path)
    assert artifacts.annotation_run(b).path == a.path
    s = analyze(b, AnalyzeConfig(n_perm=19, progress=False, graphml=False))
    c = s["all"]["coherence"]
    assert c.get("n_edges_annotated") == 20, c  # found A's labels: not skipped
    own = analyze(a, AnalyzeConfig(n_perm=19, progress=False, graphml=False))["all"]["coherence"]
    assert (c["n_edges_annotated"], c["n_coherent"]) == (own["n_edges_annotated"], own["n_coherent"])
    # validate's predictions read the same catalogs: the same gene pairs as for A itself
    cfg = PredictConfig(min_edges=1)
    pb, pa = predict_genes(b.path, cfg, progress=False), predict_genes(a.path, cfg, progress=False)
    assert len(pb) > 0
    key = ["source", "target", "n_edges", "weight"]
    pd.testing.assert_frame_equal(pb[key].sort_values(key[:2]).reset_index(drop=True),
                                  pa[key].sort_values(key[:2]).reset_index(drop=True))


def test_pointer_to_an_unannotated_run_is_a_clear_error(tmp_path):
    a, b = _traced_elsewhere(tmp_path)
    (b / "trace/trace_meta.json").write_text(json.dumps({"annotation": str(b.path)}))
    with pytest.raises(InputError, match="stage 'annotate' has not completed"):
        artifacts.annotation_run(b)
    assert not artifacts.has_annotation(b)


def test_edge_contract_is_checked_by_the_reader(tmp_path):
    from sccircuits.rundir import RunDir

    run = RunDir(tmp_path / "r")
    run.begin_stage(artifacts.TRACE, {})
    artifacts.write_table(run, artifacts.trace_file("edges"), pd.DataFrame({"source_layer": [0]}))
    run.complete_stage(artifacts.TRACE)
    with pytest.raises(InputError, match=r"edges.parquet: missing column\(s\) source_feature"):
        artifacts.read_edges(run)
