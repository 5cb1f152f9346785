"""The interactive circuit atlas: one offline HTML page to explore a run's features and edges.

Public API::

    from sccircuits.atlas import AtlasConfig, build_atlas
    build_atlas(["runs/gf"], compare="runs/compare", out="atlas.html")

Modules: :mod:`.data` (the run's tables -> the compact dict the page embeds, size caps),
:mod:`.celltypes` (activity of features per cell type), :mod:`.page` (the HTML file, with the
vendored Cytoscape.js and the page's own script and style from ``assets/atlas/``).
"""

from .data import AtlasConfig, atlas_data
from .page import build_atlas, render_page

__all__ = ["AtlasConfig", "build_atlas", "atlas_data", "render_page"]
