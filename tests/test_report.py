"""The HTML report: built from a real (tiny) pipeline run, its numbers match the run's tables,
it is self-contained, and headless Chromium shows it without console errors."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from browser import chromium, console_messages


def test_report_numbers_match_tables(pipeline):
    from sccircuits.report import build_report

    out, runs = pipeline
    path = build_report(runs, compare=out / "cmp", out=out / "report.html")
    page = path.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 3  # d distribution, SAE quality, attenuation
    for run in runs:
        edges = pd.read_parquet(run / "trace" / "edges.parquet")
        # the edge summary row of this run: edges, mean |d|, % d<0 computed from edges.parquet
        row = re.search(rf"<td>{run.name}</td>\s*<td>([\d.]+)</td>\s*<td>[\d.]+</td>\s*<td>([\d.]+)</td>"
                        rf"\s*<td>[\d.]+</td>\s*<td>([\d.]+)</td>", page)
        assert row, f"edge summary of {run.name} missing"
        assert float(row.group(1)) == len(edges)
        assert float(row.group(2)) == pytest.approx(edges.cohens_d.abs().mean(), abs=6e-4)
        assert float(row.group(3)) == pytest.approx(100 * (edges.cohens_d < 0).mean(), abs=0.06)
    assert "Cross-model comparison" in page


def test_report_needs_a_run(tmp_path):
    from sccircuits.errors import InputError
    from sccircuits.report import build_report

    with pytest.raises(InputError, match="no manifest.json"):
        build_report([tmp_path / "missing"])


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian package 'chromium')")
def test_report_loads_in_chromium_without_console_errors(pipeline, tmp_path):
    from sccircuits.report import build_report

    out, runs = pipeline
    path = build_report(runs, compare=out / "cmp", out=tmp_path / "report.html")
    broken = tmp_path / "broken.html"  # positive control: the check does see console errors
    broken.write_text("<html><body><script>console.error('planted')</script></body></html>")
    assert any("planted" in m for m in console_messages(broken))
    assert console_messages(path) == []
