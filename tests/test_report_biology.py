"""The biology-first report section: when no consensus domain pair is significant it says why,
with the comparison's own numbers; when one is, it does not claim there is none."""

from __future__ import annotations

import html


def _compare_dir(tmp_path, p_value: float, per_group: dict, n_consensus: int, n_self: int, expected: float):
    from sccircuits import artifacts

    null = {"observed": n_consensus, "expected": expected, "null_sd": 0.0, "fold_enrichment": 1.0,
            "p_value": p_value, "n_draws": 200}
    cons = {"pairs_per_group": per_group, "n_consensus": n_consensus, "edge_permutation_null": null,
            "label_permutation_null": {**null, "p_value": 1.0}, "headline_null": "edge_permutation_null",
            "n_consensus_self_pairs": n_self, "n_consensus_other_pairs": n_consensus - n_self}
    cdir = tmp_path / "cmp"
    cdir.mkdir()
    artifacts.write_compare(cdir, "compare", {"consensus": {"all": cons}})
    return cdir


def test_no_significant_consensus_is_explained_with_the_runs_numbers(tmp_path):
    from sccircuits.report_biology import consensus_explained

    cdir = _compare_dir(tmp_path, p_value=1.0, per_group={"geneformer": 2, "scgpt": 1}, n_consensus=1, n_self=1,
                        expected=1.0)
    text = html.unescape(consensus_explained(cdir))
    assert "No consensus domain pair reaches p < 0.05" in text
    assert "geneformer has 2 labelled domain pair(s)" in text and "scgpt has 1 labelled domain pair(s)" in text
    assert "1 pair(s) are shared by both models" in text
    assert "the null expects 1.00 shared pair(s) (p = 1, 200 draws)" in text
    assert "1 of the shared pairs link a domain to itself" in text


def test_significant_consensus_is_not_explained_away(tmp_path):
    from sccircuits.report_biology import consensus_explained

    cdir = _compare_dir(tmp_path, p_value=0.004, per_group={"geneformer": 40, "scgpt": 35}, n_consensus=12,
                        n_self=0, expected=2.5)
    text = html.unescape(consensus_explained(cdir))
    assert "No consensus domain pair" not in text
    assert "0.004" in text  # the headline null's p is in the table


def test_no_comparison_is_said(tmp_path):
    from sccircuits.report_biology import consensus_explained

    assert "no comparison" in consensus_explained(None)
    assert "compare has not run" in consensus_explained(tmp_path)
