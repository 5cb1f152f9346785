"""Loaders for the analysis stage: the tracer's edge table and the annotation tables.

Each loader checks the contract columns and raises a one-line :class:`InputError` naming the
file when something is missing, so every statistic downstream can be a pure function of
plain DataFrames. Stages are trusted only when the run manifest says ``complete``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..rundir import RunDir
from ..trace.edges import EDGE_COLUMN

UNANNOTATED = "unannotated"

EDGE_COLUMNS = (
    "source_layer", "source_feature", "source_label", "target_layer", "target_feature",
    "target_label", "cohens_d", "consistency", "in_cap",
)
CATALOG_COLUMNS = ("feature", "label_id", "label_name", "top_genes")
ENRICHMENT_COLUMNS = ("feature", "library", "term_id", "term_name", "q_value")

_LAYER_FILE = re.compile(r"^layer(\d+)_(catalog|enrichment)\.parquet$")


def as_rundir(run: RunDir | str | Path) -> RunDir:
    """A :class:`RunDir` for a path (which must already hold a manifest) or the RunDir itself."""
    return run if isinstance(run, RunDir) else RunDir(run, create=False)


def read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a parquet table and check that it has ``columns`` (one-line error otherwise)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing and len(df) == 0:  # an empty table written without a schema
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    return df


def normalize_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Edge table with the types the analyses expect.

    Adds ``source_label_id`` / ``target_label_id`` (the label name where the id is absent) and
    ``source_annotated`` / ``target_annotated``; layers and features become int64, ``in_cap`` and
    ``edge`` (:data:`~sccircuits.trace.edges.EDGE_COLUMN`; True where absent) bool.
    """
    e = edges.copy()
    for c in ("source_layer", "source_feature", "target_layer", "target_feature"):
        e[c] = e[c].astype(np.int64)
    e["cohens_d"] = e["cohens_d"].astype(np.float64)
    e["in_cap"] = e["in_cap"].fillna(False).astype(bool) if "in_cap" in e else True
    # tables written before the edge column existed hold only edges
    e[EDGE_COLUMN] = e[EDGE_COLUMN].fillna(False).astype(bool) if EDGE_COLUMN in e else True
    for side in ("source", "target"):
        name = e[f"{side}_label"].fillna(UNANNOTATED).astype(str)
        e[f"{side}_label"] = name
        idc = f"{side}_label_id"
        if idc in e:
            ids = e[idc].astype(object).where(e[idc].notna() & (e[idc].astype(str) != ""), None)
            e[idc] = [n if i is None else str(i) for i, n in zip(ids, name)]
        else:
            e[idc] = name
        e[f"{side}_annotated"] = name != UNANNOTATED
    if "model" not in e:
        e["model"] = "unknown"
    return e.reset_index(drop=True)


def load_edges(run: RunDir | str | Path) -> pd.DataFrame:
    """``RUN/trace/edges.parquet`` (the trace stage must be complete), normalised."""
    run = as_rundir(run)
    run.require("trace")
    return normalize_edges(read_table(run / "trace/edges.parquet", EDGE_COLUMNS))


def _layer_files(folder: Path, kind: str) -> dict[int, Path]:
    out = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _LAYER_FILE.match(p.name)
            if m and m.group(2) == kind:
                out[int(m.group(1))] = p
    return out


def load_annotation_tables(run: RunDir | str | Path) -> tuple[dict[int, pd.DataFrame], dict[int, pd.DataFrame]]:
    """(catalogs, enrichment) per layer from ``RUN/annotation/`` (annotate must be complete)."""
    run = as_rundir(run)
    run.require("annotate")
    folder = run / "annotation"
    catalogs = {l: read_table(p, CATALOG_COLUMNS) for l, p in _layer_files(folder, "catalog").items()}
    enrichment = {l: read_table(p, ENRICHMENT_COLUMNS) for l, p in _layer_files(folder, "enrichment").items()}
    if not catalogs:
        raise InputError(folder, "no layerNN_catalog.parquet files")
    return catalogs, enrichment


def has_annotation(run: RunDir) -> bool:
    """Whether the annotate stage of this run completed."""
    return run.is_complete("annotate")


def infer_n_layers(run: RunDir, edges: pd.DataFrame, catalogs: dict[int, pd.DataFrame] | None) -> int:
    """Number of model layers: the largest layer index seen in SAEs, catalogs or edges, plus one.

    An SAE per layer is the usual case; where SAEs exist only at some layers this is a lower
    bound, so pass ``n_layers`` explicitly in the config for relative depth.
    """
    layers = [int(edges["target_layer"].max()) if len(edges) else 0]
    if catalogs:
        layers.append(max(catalogs))
    sae_dir = run / "saes"
    if sae_dir.is_dir():
        for p in sae_dir.iterdir():
            m = re.match(r"^layer(\d+)", p.name)
            if m:
                layers.append(int(m.group(1)))
    return max(layers) + 1
