"""The interactive circuit atlas: one offline HTML page to explore a run's features and edges.

Public API::

    from sccircuits.atlas import AtlasConfig, build_atlas
    build_atlas(["runs/gf"], compare="runs/compare", out="atlas.html")

Modules: :mod:`.data` (the run's tables -> the compact dict the page embeds, size caps),
:mod:`.celltypes` (activity of features per cell type), :mod:`.page` (the HTML file, with the
vendored Cytoscape.js and the page's own script and style from ``assets/atlas/``).
"""

_EXPORTS = {"AtlasConfig": ".config", "atlas_data": ".data", "build_atlas": ".page", "render_page": ".page"}

__all__ = ["AtlasConfig", "build_atlas", "atlas_data", "render_page"]


def __getattr__(name: str):
    """Import the atlas code only when one of its names is used (cheap CLI start-up)."""
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
