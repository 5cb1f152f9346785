"""The files of a run directory: one reader and one writer per stage output.

Every stage, the report and the analyses read and write run files through this module, so a
file's location, its column contract and the rules for finding it are written once::

    RUN/annotation/layerNN_catalog.parquet      annotate  (CATALOG_COLUMNS)
    RUN/annotation/layerNN_enrichment.parquet   annotate  (ENRICHMENT_COLUMNS)
    RUN/trace/edges.parquet                     trace     (EDGE_COLUMNS)
    RUN/trace/features.parquet, null.parquet,
              d_distribution.parquet            trace
    RUN/trace/trace_meta.json                   trace     (inputs, features, annotation run)
    RUN/analysis/*.parquet, summary.json        analyze
    RUN/validation/*.parquet, summary.json      validate
    RUN/celltypes/{activity,kruskal}.parquet    celltypes (CELLTYPE_TABLES)
    CMP/compare.json, CMP/*.parquet             compare   (a comparison directory)

A stage's files are trusted only when the manifest says the stage is complete
(:meth:`~sccircuits.rundir.RunDir.require`).

**The annotation pointer rule.** The catalogs and labels of a run's features come from the run
itself when its ``annotate`` stage is complete, otherwise from the annotation run the tracer
used (``annotation`` in ``trace/trace_meta.json``: SAEs annotated in another run, e.g.
``sccircuits trace --saes OTHER/saes --annotation OTHER``). Every consumer (analyze, predict,
validate, the report) follows :func:`annotation_run`, so they see the same labels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .rundir import RunDir, atomic_write_json, atomic_write_parquet, read_json

if TYPE_CHECKING:  # pandas is imported by the readers that need it (cheap CLI start-up)
    import pandas as pd

# -- stage names (the manifest keys and the commands that write them) -----------------------------
EXTRACT = "extract"
TRAIN_SAE = "train-sae"
ANNOTATE = "annotate"
TRACE = "trace"
ANALYZE = "analyze"
VALIDATE = "validate"
CELLTYPES = "celltypes"

ANNOTATION_DIR, TRACE_DIR, ANALYSIS_DIR, VALIDATION_DIR = "annotation", "trace", "analysis", "validation"
CELLTYPES_DIR = "celltypes"

UNANNOTATED = "unannotated"
"""Label of a feature without a significant GO BP term (the one spelling everywhere)."""

# -- column contracts --------------------------------------------------------------------------
EDGE_COLUMNS = ("source_layer", "source_feature", "target_layer", "target_feature", "cohens_d", "in_cap")
"""Columns every consumer of ``trace/edges.parquet`` may rely on."""
EDGE_COLUMN = "edge"
"""The column of ``trace/edges.parquet`` that marks the edges every downstream stage uses
(analyze, compare, predict, report): the configured criterion's edges (``TraceConfig.criterion``).
Re-exported as :data:`sccircuits.trace.edges.EDGE_COLUMN`."""
EDGE_SETS = ("edges", "capped", "uncapped")
"""Row sets of an edge table (:func:`select_edges`): ``edges`` (column :data:`EDGE_COLUMN`),
``capped`` (``in_cap``, the published top-N set), ``uncapped`` (``passes_published``: the
published rule without its cap)."""
EDGE_SET_COLUMNS = {"edges": EDGE_COLUMN, "capped": "in_cap", "uncapped": "passes_published"}
EDGE_LABEL_COLUMNS = ("source_label", "source_label_id", "target_label", "target_label_id")
CATALOG_COLUMNS = ("feature", "label_id", "label_name", "top_genes")
ENRICHMENT_COLUMNS = ("feature", "library", "term_id", "term_name", "q_value")
TRACE_TABLES = ("edges", "features", "null", "d_distribution")

_LAYER_FILE = re.compile(r"^layer(\d+)_(catalog|enrichment)\.parquet$")


def as_rundir(run: RunDir | str | os.PathLike) -> RunDir:
    """A :class:`RunDir` for an existing run directory (or the RunDir itself)."""
    return run if isinstance(run, RunDir) else RunDir(run, create=False)


def read_table(path: str | os.PathLike, columns: tuple[str, ...] = (), only: list[str] | None = None) -> pd.DataFrame:
    """A parquet table with ``columns`` present (one-line error naming the file otherwise).
    ``only``: read just these columns. An empty table written without a schema gets the
    contract columns."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        names = set(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        if pq.ParquetFile(path).metadata.num_rows == 0:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in (only or columns)})
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    if only is not None:
        absent = [c for c in only if c not in names]
        if absent:
            raise InputError(path, f"missing column(s) {', '.join(absent)}")
    try:
        return pd.read_parquet(path, columns=only)
    except Exception as e:
        raise InputError(path, f"not a readable parquet file ({type(e).__name__}: {e})") from None


def read_optional_table(path: str | os.PathLike) -> pd.DataFrame | None:
    """A parquet table, or None when the file does not exist."""
    return read_table(path) if Path(path).is_file() else None


def read_optional_json(path: str | os.PathLike):
    """A JSON file, or None when it does not exist."""
    return read_json(path) if Path(path).is_file() else None


def write_table(run: RunDir, rel: str, df: pd.DataFrame) -> str:
    """Write ``df`` atomically at ``RUN/rel``; returns ``rel`` (for the stage's output list)."""
    atomic_write_parquet(run.path / rel, df)
    return rel


def write_json(run: RunDir, rel: str, obj) -> str:
    """Write ``obj`` atomically as JSON at ``RUN/rel``; returns ``rel``."""
    atomic_write_json(run.path / rel, obj)
    return rel


# -- annotation ------------------------------------------------------------------------------------
def annotation_file(layer: int, kind: str) -> str:
    """``annotation/layerNN_{catalog|enrichment}.parquet`` (relative to the run)."""
    return f"{ANNOTATION_DIR}/layer{int(layer):02d}_{kind}.parquet"


def annotation_run(run: RunDir | str | os.PathLike) -> RunDir:
    """The run holding the catalogs of ``run``'s features (the pointer rule, module docstring)."""
    rd = as_rundir(run)
    if rd.is_complete(ANNOTATE):
        return rd
    meta = read_trace_meta(rd)
    other = meta.get("annotation") if meta else None
    if other:
        ann = RunDir(other, create=False)
        ann.require(ANNOTATE)
        return ann
    rd.require(ANNOTATE)  # the usual "run `sccircuits annotate` first" error
    return rd


def has_annotation(run: RunDir | str | os.PathLike) -> bool:
    """Whether ``run``'s features have catalogs (its own or the tracer's annotation run)."""
    try:
        annotation_run(run)
    except InputError:
        return False
    return True


def annotation_layers(run: RunDir) -> dict[int, dict[str, Path]]:
    """{layer: {"catalog": path, "enrichment": path}} of an annotated run (files present)."""
    out: dict[int, dict[str, Path]] = {}
    folder = run.path / ANNOTATION_DIR
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _LAYER_FILE.match(p.name)
            if m:
                out.setdefault(int(m.group(1)), {})[m.group(2)] = p
    return out


def read_annotation(run: RunDir | str | os.PathLike, follow: bool = True,
                    catalog_columns: tuple[str, ...] = CATALOG_COLUMNS,
                    enrichment_columns: tuple[str, ...] = ENRICHMENT_COLUMNS
                    ) -> tuple[dict[int, pd.DataFrame], dict[int, pd.DataFrame]]:
    """(catalogs, enrichment) per layer, checked for the given columns (default: the contract
    the analyses and the report rely on). ``follow``: through the pointer rule (else the run's
    own annotate stage must be complete)."""
    rd = annotation_run(run) if follow else as_rundir(run)
    rd.require(ANNOTATE)
    files = annotation_layers(rd)
    catalogs = {l: read_table(f["catalog"], catalog_columns) for l, f in files.items() if "catalog" in f}
    enrichment = {l: read_table(f["enrichment"], enrichment_columns) for l, f in files.items() if "enrichment" in f}
    if not catalogs:
        raise InputError(rd.path / ANNOTATION_DIR, "no layerNN_catalog.parquet files")
    return catalogs, enrichment


def read_catalog_columns(run: RunDir | str | os.PathLike, layer: int, columns: list[str]) -> pd.DataFrame:
    """Some columns of one layer's catalog (through the pointer rule)."""
    rd = annotation_run(run)
    path = rd.path / annotation_file(layer, "catalog")
    if not path.is_file():
        raise InputError(path, "feature catalog not found (needed for the edges of this layer)")
    return read_table(path, only=columns)


# -- trace -----------------------------------------------------------------------------------------
TRACE_META = f"{TRACE_DIR}/trace_meta.json"


def trace_meta_file(shard: int = 0, n_shards: int = 1) -> str:
    """``trace/trace_meta.json``, or ``trace/trace_meta_shard{i}of{n}.json`` for a shard."""
    return TRACE_META if n_shards == 1 else f"{TRACE_DIR}/trace_meta_shard{shard}of{n_shards}.json"


def read_trace_metas(trace_dir: str | os.PathLike) -> list[dict]:
    """Every trace metadata file (single run and shards) of a ``trace/`` folder."""
    return [read_json(f) for f in sorted(Path(trace_dir).glob("trace_meta*.json"))]


def trace_file(name: str) -> str:
    """``trace/{edges|features|null}.parquet`` (relative to the run)."""
    return f"{TRACE_DIR}/{name}.parquet"


def read_trace_meta(run: RunDir | str | os.PathLike) -> dict | None:
    """``trace/trace_meta.json`` (inputs, features, annotation run), or None."""
    return read_optional_json(as_rundir(run).path / TRACE_META)


def write_trace_tables(run: RunDir, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Write edges / features / null tables; returns their paths relative to the run."""
    return [write_table(run, trace_file(name), tables[name]) for name in TRACE_TABLES]


def select_edges(edges: pd.DataFrame, which: str) -> pd.DataFrame:
    """The rows of edge set ``which`` (:data:`EDGE_SETS`). Tables written before a set's column
    existed hold only published-rule rows, all of them edges: every row is kept."""
    if which not in EDGE_SET_COLUMNS:
        raise ValueError(f"edge set must be one of {', '.join(EDGE_SETS)}, got {which!r}")
    col = EDGE_SET_COLUMNS[which]
    if col not in edges:
        return edges
    return edges[edges[col].fillna(False).astype(bool)].reset_index(drop=True)


def read_edges(run: RunDir | str | os.PathLike, columns: list[str] | None = None, which: str | None = None,
               require: tuple[str, ...] = ()) -> pd.DataFrame:
    """``trace/edges.parquet`` of a run whose trace completed, checked for :data:`EDGE_COLUMNS`
    (and ``require``). ``columns``: read only these (see :func:`edge_columns`). ``which``: only
    the rows of that edge set (:func:`select_edges`); None: every row."""
    rd = as_rundir(run)
    rd.require(TRACE)
    path = rd.path / trace_file("edges")
    edges = read_table(path, EDGE_COLUMNS + tuple(c for c in require if c not in EDGE_COLUMNS), only=columns)
    return edges if which is None else select_edges(edges, which)


def edge_columns(run: RunDir | str | os.PathLike, wanted: list[str]) -> list[str]:
    """The contract columns plus those of ``wanted`` that the run's edge table has."""
    import pyarrow.parquet as pq

    path = as_rundir(run).path / trace_file("edges")
    names = set(pq.read_schema(path).names) if path.is_file() else set()
    return list(EDGE_COLUMNS) + [c for c in wanted if c in names and c not in EDGE_COLUMNS]


def read_trace_tables(run: RunDir | str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(edges, features, null) of a run whose trace stage completed."""
    rd = as_rundir(run)
    rd.require(TRACE)
    return read_edges(rd), read_table(rd.path / trace_file("features")), read_table(rd.path / trace_file("null"))


def read_trace_table(run: RunDir | str | os.PathLike, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    """``trace/NAME.parquet`` (``columns``: only these) of a run whose trace stage completed; None
    when the trace is not complete or (a table newer than the run's trace, e.g.
    ``d_distribution``) absent."""
    rd = as_rundir(run)
    path = rd.path / trace_file(name)
    return read_table(path, only=columns) if rd.is_complete(TRACE) and path.is_file() else None


# -- analysis and validation -----------------------------------------------------------------------
def analysis_file(name: str) -> str:
    """``analysis/NAME`` (relative to the run)."""
    return f"{ANALYSIS_DIR}/{name}"


def analysis_table_path(run: RunDir | str | os.PathLike, name: str) -> Path | None:
    """Path of ``analysis/NAME.parquet`` when the run's analyze stage completed and wrote it."""
    rd = as_rundir(run)
    path = rd.path / analysis_file(f"{name}.parquet")
    return path if rd.is_complete(ANALYZE) and path.is_file() else None


def read_analysis(run: RunDir | str | os.PathLike, name: str) -> pd.DataFrame | None:
    """``analysis/NAME.parquet`` of a run whose analyze stage completed, else None."""
    rd = as_rundir(run)
    return read_optional_table(rd.path / analysis_file(f"{name}.parquet")) if rd.is_complete(ANALYZE) else None


ANALYSIS_SUMMARY = f"{ANALYSIS_DIR}/summary.json"


def read_analysis_summary(run: RunDir | str | os.PathLike) -> dict | None:
    """``analysis/summary.json`` of a run whose analyze stage completed, else None."""
    rd = as_rundir(run)
    return read_optional_json(rd.path / ANALYSIS_SUMMARY) if rd.is_complete(ANALYZE) else None


def validation_file(name: str) -> str:
    """``validation/NAME`` (relative to the run)."""
    return f"{VALIDATION_DIR}/{name}"


def write_validation(out_dir: str | os.PathLike, tables: dict[str, pd.DataFrame], summary: list[dict]) -> list[str]:
    """Write the validation tables (``NAME.parquet``) and ``summary.json`` into ``out_dir`` (the
    run's ``validation/`` or another folder); returns paths as ``validation/...``."""
    out_dir = Path(out_dir)
    for name, df in tables.items():
        atomic_write_parquet(out_dir / f"{name}.parquet", df)
    atomic_write_json(out_dir / "summary.json", summary)
    return [validation_file(f"{name}.parquet") for name in tables] + [validation_file("summary.json")]


def read_validation_summary(run: RunDir | str | os.PathLike) -> list | dict | None:
    """``validation/summary.json`` of a run whose validate stage completed, else None."""
    rd = as_rundir(run)
    return read_optional_json(rd.path / validation_file("summary.json")) if rd.is_complete(VALIDATE) else None


# -- cell types (``sccircuits celltypes``) ----------------------------------------------------------
CELLTYPE_TABLES = ("activity", "kruskal")


def celltypes_file(name: str) -> str:
    """``celltypes/NAME.parquet`` (relative to the run)."""
    return f"{CELLTYPES_DIR}/{name}.parquet"


def write_celltypes(run: RunDir, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Write the celltypes tables (:data:`CELLTYPE_TABLES`); returns their paths relative to the run."""
    return [write_table(run, celltypes_file(name), tables[name]) for name in CELLTYPE_TABLES]


def read_celltypes(run: RunDir | str | os.PathLike, name: str) -> pd.DataFrame | None:
    """``celltypes/NAME.parquet`` of a run whose celltypes stage completed, else None."""
    rd = as_rundir(run)
    return read_optional_table(rd.path / celltypes_file(name)) if rd.is_complete(CELLTYPES) else None


# -- a comparison directory (``sccircuits compare --out CMP``) -------------------------------------
COMPARE_JSON = "compare.json"


def read_compare(cdir: str | os.PathLike, name: str):
    """``CMP/compare.json`` (name "compare") or ``CMP/NAME.parquet``; None when absent."""
    cdir = Path(cdir)
    if name == "compare":
        return read_optional_json(cdir / COMPARE_JSON)
    return read_optional_table(cdir / f"{name}.parquet")


def write_compare(cdir: str | os.PathLike, name: str, obj) -> str:
    """Write ``CMP/compare.json`` or ``CMP/NAME.parquet`` atomically; returns the file name."""
    cdir = Path(cdir)
    if name == "compare":
        atomic_write_json(cdir / COMPARE_JSON, obj)
        return COMPARE_JSON
    atomic_write_parquet(cdir / f"{name}.parquet", obj)
    return f"{name}.parquet"


DEMO_TIMINGS = "demo_timings.json"


def write_demo_timings(out_dir: str | os.PathLike, timings: dict) -> str:
    """``OUT/demo_timings.json``: wall and CPU seconds of each demo step (atomic)."""
    atomic_write_json(Path(out_dir) / DEMO_TIMINGS, timings)
    return DEMO_TIMINGS


def read_demo_timings(out_dir: str | os.PathLike) -> dict | None:
    """``OUT/demo_timings.json``, or None when absent."""
    return read_optional_json(Path(out_dir) / DEMO_TIMINGS)
