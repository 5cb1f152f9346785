"""The atlas page: one HTML file holding the data (JSON), the vendored graph library
(Cytoscape.js, MIT, see ``assets/atlas/README.md``) and the page's own script and style.

Nothing is fetched at view time: the file opens from disk with no network.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from ..datasets import assets_dir
from ..errors import InputError
from ..rundir import atomic_write_bytes
from .data import AtlasConfig, RunTables, atlas_data

ASSET_FILES = ("cytoscape.min.js", "atlas.js", "atlas.css")


def _asset(name: str) -> str:
    path = assets_dir() / "atlas" / name
    if not path.is_file():
        raise InputError(path, "shipped atlas asset missing (broken install? reinstall sccircuits)")
    return path.read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """Text that cannot close the <script> element it is embedded in."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render_page(data: dict, title: str = "sccircuits atlas") -> str:
    """The complete HTML document for an :func:`~sccircuits.atlas.data.atlas_data` dict."""
    payload = _script_safe(json.dumps(data, separators=(",", ":"), allow_nan=False))
    lib, script, css = (_asset(n) for n in ASSET_FILES)
    if "</script" in lib.lower() or "</script" in script.lower():
        raise InputError(assets_dir() / "atlas", "a shipped script contains '</script' and cannot be inlined")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{css}</style></head><body>"
            "<noscript>The atlas needs JavaScript.</noscript>"
            f"<script id='atlas-data' type='application/json'>{payload}</script>"
            f"<script>{lib}</script><script>{script}</script></body></html>")


def build_atlas(runs: list[str | os.PathLike], compare: str | os.PathLike | None = None,
                out: str | os.PathLike | None = None, cfg: AtlasConfig | None = None) -> Path:
    """Write the interactive atlas of ``runs`` (and a ``compare`` directory) and return its path.

    With no ``runs`` but a ``compare`` directory, the compared runs are used. ``out`` defaults
    to ``<first run>/atlas.html``. The file is written atomically.
    """
    cfg = cfg or AtlasConfig()
    runs = list(runs)
    if not runs and compare is not None:
        runs = _compared_runs(Path(compare))
    if not runs:
        raise InputError(None, "atlas needs at least one run directory (--run) or a comparison (--compare)")
    tables = [RunTables.load(p) for p in runs]
    names = [t.name for t in tables]
    for i, t in enumerate(tables):  # two runs with the same folder name: tell them apart
        if names.count(t.name) > 1:
            t.name = f"{t.name} ({t.path.parent.name}/{t.path.name})" if t.path.parent.name else f"{t.name} #{i + 1}"
    data = atlas_data(tables, cfg, Path(compare) if compare is not None else None)
    target = Path(out) if out is not None else tables[0].path / "atlas.html"
    atomic_write_bytes(target, render_page(data).encode("utf-8"))
    return target


def _compared_runs(cdir: Path) -> list[Path]:
    from ..rundir import RunDir

    st = RunDir(cdir, create=False).require("compare")
    return [Path(p) for p in (st.get("runs") or {}).values()]
