"""Code comments cite docs/method.md sections that exist (no outside document)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_method_citations_point_to_existing_sections():
    doc = (ROOT / "docs" / "method.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", doc, flags=re.M)}
    cited = []
    for path in list((ROOT / "src").rglob("*.py")) + list((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        assert path.name == "test_method_doc.py" or "method " + "notes" not in text, f"{path}: cites the old notes"
        cited += [(path.name, int(n)) for n in re.findall(r"docs/method\.md §(\d+)", text)]
    assert len(cited) >= 10
    missing = [(f, n) for f, n in cited if n not in sections]
    assert not missing, missing
