"""The analysis stage's view of a run: the tracer's edge table, normalised.

Files are read through :mod:`sccircuits.artifacts` (contract columns checked, one-line
:class:`InputError` naming the file), so every statistic downstream can be a pure function of
plain DataFrames.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import EDGE_COLUMN, UNANNOTATED, read_edges
from ..rundir import RunDir

ANALYSIS_EDGE_COLUMNS = ("source_label", "target_label", "consistency")
"""Edge columns the analyses need beyond the edge table's contract (artifacts.EDGE_COLUMNS)."""


def normalize_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Edge table with the types the analyses expect.

    Adds ``source_label_id`` / ``target_label_id`` (the label name where the id is absent) and
    ``source_annotated`` / ``target_annotated``; layers and features become int64, ``in_cap`` and
    ``edge`` (:data:`~sccircuits.artifacts.EDGE_COLUMN`; True where absent) bool.
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
    return normalize_edges(read_edges(run, require=ANALYSIS_EDGE_COLUMNS))


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
