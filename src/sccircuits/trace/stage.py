"""The trace stage: inputs, cells, features, blocks (checkpoints), shards, merge and outputs.

Work is split into *blocks* of ``checkpoint_every`` consecutive traced cells. Each block's
statistics are computed from scratch (:meth:`AblationEngine.run_cells`) and written atomically
to ``OUT/trace/blocks/block_NNNNN.npz``; the final statistics are the blocks folded in block
order. Hence:

* resume: blocks already on disk (same fingerprint) are skipped, and a run killed at any moment
  resumes to exactly the same result;
* ``shard i/n``: a shard computes a contiguous range of blocks and stops; ``merge`` folds the
  blocks of all shards in block order, which is bit-for-bit what a single run does.

Outputs in ``OUT/trace/``: ``edges.parquet`` (column ``edge``: the configured criterion's
edges, read by every later stage), ``features.parquet``, ``null.parquet`` (real vs null passes
per layer pair), ``d_distribution.parquet`` (|d| histograms, real and null),
``accumulators.npz`` (the merged statistics), and the manifest stage ``trace`` (forward passes
with and without the null, estimated FDR of both criteria).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import artifacts
from ..config import from_dict, parse_feature_spec, to_dict
from ..errors import ConfigError, InputError
from ..rundir import RunDir, content_fingerprint
from .accumulators import Accumulators
from .config import TraceConfig
from .edges import EDGE_COLUMN, Thresholds, build_tables, d_distribution, estimated_fdr

STAGE = artifacts.TRACE


@dataclass
class TraceResult:
    """What :func:`trace` / :func:`merge` produced (tables are None for an unfinished shard)."""

    out: Path
    edges: pd.DataFrame | None
    features: pd.DataFrame | None
    null: pd.DataFrame | None
    metrics: dict


# ----------------------------------------------------------------------------- inputs
TOKENIZE_OPTIONS = (("gene_column", "gene_column"), ("counts_layer", "layer"), ("max_length", "max_length"))
"""(TraceConfig / ExtractConfig option, tokenizer keyword) pairs passed to ``adapter.tokenize``."""


@dataclass
class TraceInputs:
    """Where a trace reads from and writes to (resolved from ``--run`` and/or the flags)."""

    model: Path
    data: Path
    saes: Path
    annotation: Path | None
    """Run directory whose annotation gives labels and the richness selection (None: none)."""
    out: Path
    """Run directory receiving ``trace/``."""
    tokenize: dict = field(default_factory=dict)
    """Tokenizer keywords (gene_column, layer, max_length): the run's extract options, then
    the trace's own."""
    fingerprints: dict = field(default_factory=dict)
    """Content fingerprints of model, data and the SAEs used (:func:`input_fingerprints`)."""

    @classmethod
    def resolve(cls, run, model, data, saes, annotation, out, cfg: TraceConfig) -> "TraceInputs":
        """From a run dir (its extract stage, SAEs and annotation) and/or explicit paths."""
        tokenize = {}
        if run is not None:
            rd = RunDir(run, create=False)
            ext = rd.stage("extract")
            if ext:
                model = model or rd.recorded_path("extract", "model_path")
                data = data or rd.recorded_path("extract", "data_path")
                c = ext.get("config", {})
                tokenize = {opt: c[key] for key, opt in TOKENIZE_OPTIONS if c.get(key) is not None}
            saes = rd.path if saes is None else saes
            if annotation is None and rd.is_complete("annotate"):
                annotation = rd.path
            out = out or rd.path
        missing = [k for k, v in (("model", model), ("data", data), ("saes", saes)) if v is None]
        if missing:
            raise ConfigError(f"trace needs --run RUN or all of --model, --data, --saes (missing: {', '.join(missing)})")
        if out is None:
            raise ConfigError("trace needs --out DIR (a run directory) when no --run is given")
        tokenize.update({opt: getattr(cfg, key) for key, opt in TOKENIZE_OPTIONS if getattr(cfg, key) is not None})
        return cls(Path(model), Path(data), Path(saes), None if annotation is None else Path(annotation),
                   Path(out), tokenize)


def _check_saes(saes: dict, adapter, saes_path) -> None:
    for layer, sae in saes.items():
        if int(sae.d_in) != int(adapter.d_model):
            raise InputError(saes_path, f"SAE of layer {layer} has d_in {sae.d_in} but the model has d_model "
                                        f"{adapter.d_model} (SAE trained on another model?)")
        if not 0 <= layer < adapter.n_layers:
            raise InputError(saes_path, f"SAE for layer {layer} but the model has layers 0..{adapter.n_layers - 1}")


def _source_layers(cfg: TraceConfig, saes: dict, spec: dict | None, saes_path) -> dict[int, list[int]]:
    """Source layer -> downstream layers (later layers with an SAE), with clear errors."""
    have = sorted(saes)
    if cfg.source_layers is not None:
        sources = list(cfg.source_layers)
        if spec:
            extra = sorted(set(spec) - set(sources))
            if extra:
                raise ConfigError(f"features name layer(s) {extra} that are not in --source-layers {sources}")
    elif spec:
        sources = sorted(spec)
    else:
        sources = have[:-1]
    no_sae = [s for s in sources if s not in saes]
    if no_sae:
        raise InputError(saes_path, f"no SAE for source layer(s) {no_sae} (SAEs exist for layers {have})")
    targets = {s: [t for t in have if t > s] for s in sources}
    last = [s for s, ts in targets.items() if not ts]
    if last:
        raise InputError(saes_path, f"source layer(s) {last} have no later layer with an SAE to measure "
                                    f"(SAEs exist for layers {have})")
    if not targets:
        raise ConfigError("no source layer to trace (need SAEs at two layers or more)")
    return targets


def _select_cells(adapter, data_path, cfg: TraceConfig, tokenize_opts: dict):
    from ..activations import select_cells
    from ..data import read_cells

    adata = read_cells(data_path)
    rows = select_cells(adata.n_obs, cfg.n_cells, cfg.sample_seed)
    sub = adata[rows].copy() if len(rows) < adata.n_obs else adata
    cells = adapter.tokenize(sub, mode=cfg.tokenization, source=str(data_path), **tokenize_opts)
    if len(cells) == 0:
        raise InputError(data_path, "no cell could be tokenized (no gene matched the model's vocabulary)")
    cells.cell_index = rows[np.asarray(cells.cell_index, dtype=np.int64)]
    return cells


def frequency_passes(n_cells: int, batch_size: int, limit: int | None = None) -> int:
    """Clean forward passes :func:`feature_frequencies` runs: batches of ``batch_size`` over the
    cells (the first ``limit`` with ``limit``)."""
    n = n_cells if limit is None else min(limit, n_cells)
    return -(-n // batch_size)


def feature_frequencies(adapter, saes: dict, cells, layers: list[int], batch_size: int, progress: bool = True,
                        limit: int | None = None) -> dict[int, np.ndarray]:
    """Fraction of gene positions of ``cells`` (only the first ``limit`` with ``limit``) where
    each SAE feature fires, per layer (one clean pass)."""
    import torch
    from tqdm.auto import tqdm

    from ..models.base import length_batches

    counts = {l: torch.zeros(saes[l].d_sae, dtype=torch.float64) for l in layers}
    total = 0
    with torch.inference_mode():
        batches = ([list(range(i, min(i + batch_size, limit, len(cells)))) for i in range(0, min(limit, len(cells)), batch_size)]
                   if limit is not None else list(length_batches(cells, batch_size)))
        for idx in tqdm(batches, desc="feature frequencies", disable=not progress):
            batch = adapter.batch(cells, idx)
            hs = adapter.hidden_states(batch, layers)
            gm = batch.gene_mask.to(adapter.device)
            total += int(gm.sum())
            for l in layers:
                sae = saes[l].to(adapter.device)
                counts[l] += (sae.encode(hs[l][gm].float()) > 0).sum(0).double().cpu()
    return {l: (c / max(total, 1)).numpy() for l, c in counts.items()}


def _choose_features(cfg: TraceConfig, saes: dict, sources: list[int], spec: dict | None, annotation,
                     adapter, cells, progress: bool) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray] | None, int]:
    """Source features per layer, the firing frequencies of every feature of those layers
    when the selection had them (annotation catalog or a clean pass; else None), and the clean
    forward passes the selection ran (a frequency pass over all traced cells, when no annotation
    is read: ``--selection frequency`` or ``richness``; else 0)."""
    from ..annotate.labels import select_from_catalog

    if spec:
        out = {}
        for s in sources:
            ids = spec.get(s, [])
            bad = [f for f in ids if f >= saes[s].d_sae]
            if bad:
                raise ConfigError(f"unknown feature id(s) {bad} for layer {s}: its SAE has features 0..{saes[s].d_sae - 1}")
            if not ids:
                raise ConfigError(f"--features lists no feature for source layer {s}")
            out[s] = np.asarray(ids, np.int64)
        return out, None, 0
    if cfg.all_active:
        return {s: np.arange(saes[s].d_sae, dtype=np.int64) for s in sources}, None, 0
    if annotation is not None:
        from ..annotate import load_annotation

        catalogs, _ = load_annotation(annotation)
        missing = [s for s in sources if s not in catalogs]
        if missing:
            raise InputError(annotation, f"layer(s) {missing} were not annotated; cannot select features there")
        freq = {}
        for s in sources:
            freq[s] = np.zeros(saes[s].d_sae)
            if "activation_freq" in catalogs[s]:
                freq[s][catalogs[s]["feature"].to_numpy(np.int64)] = catalogs[s]["activation_freq"].to_numpy(np.float64)
        return ({s: np.asarray(sorted(select_from_catalog(catalogs[s], cfg.selection, cfg.n_features, cfg.selection_seed,
                                                          min_freq=cfg.min_frequency)), np.int64) for s in sources},
                freq if all(freq[s].any() for s in sources) else None, 0)
    if cfg.selection == "richness":
        warnings.warn("no annotation available: selecting source features by activation frequency on the traced "
                      "cells instead of annotation richness", stacklevel=3)
    freq = feature_frequencies(adapter, saes, cells, sources, cfg.batch_size, progress)
    passes = frequency_passes(len(cells), cfg.batch_size)
    out = {}
    for s in sources:
        cat = pd.DataFrame({"feature": np.arange(len(freq[s])), "fire_count": (freq[s] > 0).astype(int),
                            "activation_freq": freq[s]})
        method = "frequency" if cfg.selection == "richness" else cfg.selection
        out[s] = np.asarray(sorted(select_from_catalog(cat, method, cfg.n_features, cfg.selection_seed,
                                                       min_freq=cfg.min_frequency)), np.int64)
    return out, freq, passes


def _null_features(cfg: TraceConfig, saes: dict, features: dict, freq: dict | None, adapter, cells,
                   progress: bool) -> tuple[dict[int, np.ndarray] | None, int]:
    """(null draws per source layer, clean forward passes spent finding them) of the
    ``feature`` null design (:func:`~sccircuits.trace.null_draws.matched_null_features`); None
    for the ``mixed`` design or without the null (the engine's default templates). The
    frequencies are the selection's when it had them, else those of the first
    ``null_match_cells`` traced cells (a clean pass, counted in the manifest's forward passes)."""
    from .null_draws import matched_null_features

    if not cfg.null_ablation or cfg.null_directions != "feature":
        return None, 0
    passes = 0
    if freq is None:
        freq = feature_frequencies(adapter, saes, cells, sorted(features), cfg.batch_size, progress,
                                   limit=cfg.null_match_cells)
        passes = frequency_passes(len(cells), cfg.batch_size, limit=cfg.null_match_cells)
    out = matched_null_features(features, freq, cfg.null_draws, cfg.null_budget, cfg.null_seed)
    short = {s: len(out[s]) for s in out if len(out[s]) < min(3, len(features[s]) // 2)}
    if short:
        warnings.warn(f"too few untraced features that fire to draw the null from, per source layer: {short} "
                      "(--all-active or nearly every feature traced); use --null-directions mixed", stacklevel=3)
    return out, passes


def input_fingerprints(ins: TraceInputs, layers: list[int]) -> dict:
    """Content fingerprints (not paths) of the model, the cells file and the SAEs of ``layers``:
    a file overwritten in place changes them, a moved or copied one does not."""
    from ..sae.io import sae_fingerprints

    return {"model": content_fingerprint(ins.model), "data": content_fingerprint(ins.data),
            "saes": sae_fingerprints(ins.saes, layers)}


def _fingerprint(cfg: TraceConfig, features, targets, cells, inputs: dict, null_features: dict | None = None) -> str:
    """Everything a block's numbers depend on; blocks of different fingerprints never mix."""
    key = {"features": {str(s): f.tolist() for s, f in features.items()}, "targets": {str(s): t for s, t in targets.items()},
           "cells": np.asarray(cells.cell_index).tolist(), "lengths": cells.lengths().tolist(), "inputs": inputs,
           **{k: getattr(cfg, k) for k in ("tokenization", "dtype", "device", "batch_size", "cells_per_clean_pass",
                                            "encode_chunk", "checkpoint_every", "null_ablation", "null_seed",
                                            "null_draws", "null_budget")}}
    if cfg.null_ablation and cfg.null_directions != "mixed":  # (mixed: the fingerprint of earlier traces)
        key["null_directions"] = cfg.null_directions
        key["null_features"] = {str(s): np.asarray(f).tolist() for s, f in (null_features or {}).items()}
    if cfg.layernorm != "live":  # (live: the fingerprint of earlier traces)
        key["layernorm"] = cfg.layernorm
    if cfg.compat == "reference":  # "active" = in the top-k support (published), not z > 0
        key["active"] = "topk_support"
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def block_path(trace_dir: Path, b: int) -> Path:
    return trace_dir / "blocks" / f"block_{b:05d}.npz"


def load_block(path: Path, fingerprint: str) -> Accumulators | None:
    acc, extra = Accumulators.load(path)
    if str(extra.get("fingerprint")) != fingerprint:
        raise InputError(path, "checkpoint of a different trace (other cells, features or options); "
                               "use another --out or delete the trace/blocks folder")
    return acc


# ----------------------------------------------------------------------------- trace
# ----------------------------------------------------------------------------- setup
@dataclass
class TraceSetup:
    """Everything a trace needs before its blocks run (what ``trace()`` resolves first)."""

    cfg: TraceConfig
    inputs: TraceInputs
    adapter: object
    saes: dict
    targets: dict[int, list[int]]
    cells: object
    """:class:`~sccircuits.models.base.TokenizedCells` of the traced cells."""
    features: dict[int, np.ndarray]
    fingerprint: str
    null_features: dict[int, np.ndarray] | None = None
    """Null draws per source layer (None: the engine's default for the configuration)."""
    null_match_passes: int = 0
    """Clean forward passes spent choosing the null draws (frequencies to match)."""
    selection_passes: int = 0
    """Clean forward passes spent choosing the source features (their firing frequencies on the
    traced cells: ``--selection frequency``/``richness`` without an annotation)."""

    @property
    def n_blocks(self) -> int:
        return -(-len(self.cells) // self.cfg.checkpoint_every)

    def block_cells(self, b: int) -> list[int]:
        """Positions (in ``cells``) of the cells of block ``b`` (as the tracer splits them)."""
        step = self.cfg.checkpoint_every
        return list(range(b * step, min((b + 1) * step, len(self.cells))))

    def kinds(self) -> tuple[str, ...]:
        return ("real", "null") if self.cfg.null_ablation else ("real",)

    def meta(self, fingerprint: str | None = None, executor: dict | None = None) -> dict:
        """What ``trace_meta.json`` records (read back by :func:`merge` and :func:`finish_trace`)."""
        ins = self.inputs
        meta = {"fingerprint": fingerprint or self.fingerprint, "n_blocks": self.n_blocks,
                "config": to_dict(self.cfg), "model_kind": self.adapter.kind,
                "model_name": self.cfg.model_name or self.adapter.kind,
                "annotation": None if ins.annotation is None else str(ins.annotation),
                "inputs": {"model": str(ins.model), "data": str(ins.data), "saes": str(ins.saes)},
                "n_cells": len(self.cells), "features": {str(s): f.tolist() for s, f in self.features.items()},
                "memory_estimate_bytes": _memory_estimate(self), "memory_estimate_shape": _memory_shape(self),
                "null_match_forward_passes": self.null_match_passes,
                "selection_forward_passes": self.selection_passes}
        if executor is not None:
            meta["executor"] = executor
        return meta

    def plan(self):
        """The engine's :class:`~sccircuits.trace.engine.TracePlan` of this trace."""
        return trace_plan(self.cfg, self.features, self.targets, null_features=self.null_features)


def plan_options(cfg: TraceConfig) -> dict:
    """The :class:`~sccircuits.trace.engine.TracePlan` options a configuration sets (everything
    but the features, targets and null draws), for :func:`trace_plan` and the Ray workers."""
    return dict(null=cfg.null_ablation, null_seed=cfg.null_seed, batch_size=cfg.batch_size,
                encode_chunk=cfg.encode_chunk, clean_batch_size=cfg.cells_per_clean_pass, null_draws=cfg.null_draws,
                null_budget=cfg.null_budget, support_active=cfg.compat == "reference",
                null_directions=cfg.null_directions, freeze_layernorm=cfg.layernorm == "frozen")


def trace_plan(cfg: TraceConfig, features: dict, targets: dict, null_features: dict | None = None, **overrides):
    """The :class:`~sccircuits.trace.engine.TracePlan` of a configuration (one place for every
    caller: the stage, the planner, the Ray executor)."""
    from .engine import TracePlan

    opts = plan_options(cfg)
    if null_features is not None:
        opts["null_features"] = null_features
    return TracePlan(features, targets, **{**opts, **overrides})


def prepare_trace(run=None, *, model=None, data=None, saes=None, annotation=None, out=None,
                  config: TraceConfig | None = None, progress: bool = True, **options) -> TraceSetup:
    """Resolve inputs, load the model and SAEs, tokenize the cells and choose the features,
    exactly as :func:`sccircuits.trace.trace` does (same arguments), without tracing.

    :func:`trace` itself starts with this, so the planner and the Ray executor see the very
    cells, features and block fingerprint a local ``sccircuits trace`` run uses.
    """
    from ..models import load_model
    from ..sae import load_saes

    cfg = config if config is not None else TraceConfig(**options)
    ins = TraceInputs.resolve(run, model, data, saes, annotation, out, cfg)
    spec = parse_feature_spec(cfg.features) if cfg.features else None
    adapter = load_model(ins.model, device=cfg.device, dtype=cfg.dtype)
    all_saes = load_saes(ins.saes, device=cfg.device)
    _check_saes(all_saes, adapter, ins.saes)
    targets = _source_layers(cfg, all_saes, spec, ins.saes)
    cells = _select_cells(adapter, ins.data, cfg, ins.tokenize)
    features, freq, selection_passes = _choose_features(cfg, all_saes, sorted(targets), spec, ins.annotation, adapter,
                                                        cells, progress)
    null_features, null_passes = _null_features(cfg, all_saes, features, freq, adapter, cells, progress)
    ins.fingerprints = input_fingerprints(ins, sorted(set(targets) | {t for ts in targets.values() for t in ts}))
    fp = _fingerprint(cfg, features, targets, cells, ins.fingerprints, null_features)
    return TraceSetup(cfg, ins, adapter, all_saes, targets, cells, features, fp, null_features, null_passes,
                      selection_passes)


def lock_trace(setup: TraceSetup):
    """Hold the output run directory for this trace (:meth:`RunDir.hold`); the shards of one
    trace share it, each holding its own shard lock."""
    i, n = setup.cfg.shard_index, setup.cfg.n_shards
    return RunDir(setup.inputs.out).hold(STAGE, shard=None if n == 1 else f"{STAGE}-shard-{i}of{n}")


@dataclass
class OpenTrace:
    """A trace stage begun in its run directory (:func:`open_trace`): where blocks go, which
    blocks this run computes and which of them are still missing."""

    rd: RunDir
    trace_dir: Path
    stage: str
    meta: dict
    blocks: list[int]
    """Blocks of this run (all, or this shard's range)."""
    todo: list[int]
    """Blocks of ``blocks`` not yet on disk (the others were checked against the fingerprint)."""
    finished: Accumulators | None
    """Statistics of the same trace already finished (only the thresholds may differ)."""


def open_trace(setup: TraceSetup, fingerprint: str | None = None, executor: dict | None = None) -> OpenTrace:
    """The one setup and resume path of every executor: begin the manifest stage (this shard's
    when ``--shard i/n``), write the trace metadata, verify the blocks already on disk (a block
    of another trace is a clear error) and list those still to compute. ``fingerprint``
    overrides the setup's (executors whose numbers differ in rounding keep their own blocks)."""
    cfg = setup.cfg
    fp = fingerprint or setup.fingerprint
    meta = setup.meta(fp, executor)
    rd = RunDir(setup.inputs.out)
    trace_dir = rd.path / STAGE
    i, n = cfg.shard_index, cfg.n_shards
    blocks = list(range(i * setup.n_blocks // n, (i + 1) * setup.n_blocks // n))
    stage = STAGE if n == 1 else f"{STAGE}-shard-{i}of{n}"
    rd.begin_stage(stage, cfg, inputs=meta["inputs"], fingerprint=fp, input_fingerprints=setup.inputs.fingerprints,
                   upstream=rd.stamps("train-sae", "annotate"))
    artifacts.write_json(rd, artifacts.trace_meta_file(i, n), meta)
    finished = _finished_statistics(trace_dir, fp) if n == 1 else None
    todo = []
    for b in blocks:
        if block_path(trace_dir, b).is_file():
            load_block(block_path(trace_dir, b), fp)  # fingerprint check
        else:
            todo.append(b)
    return OpenTrace(rd, trace_dir, stage, meta, blocks, todo, finished)


def trace(run=None, *, model=None, data=None, saes=None, annotation=None, out=None,
          config: TraceConfig | None = None, progress: bool = True, **options) -> TraceResult:
    """Trace causal edges between SAE features (docs/method.md §5).

    ``run``: a run directory (model, data and SAEs are taken from its extract / SAE stages,
    feature labels and selection from its annotation). Or explicit ``model`` (checkpoint dir),
    ``data`` (.h5ad), ``saes`` (our layout or bio-sae) and ``out`` (the run dir receiving
    ``trace/``). ``config`` or keyword ``options`` set :class:`TraceConfig`.
    """
    cfg = config if config is not None else TraceConfig(**options)
    t_start = time.time()
    setup = prepare_trace(run, model=model, data=data, saes=saes, annotation=annotation, out=out,
                          config=cfg, progress=progress)
    with lock_trace(setup):
        return _trace_blocks(setup, t_start, progress)


def _trace_blocks(setup: TraceSetup, t_start: float, progress: bool) -> TraceResult:
    """Compute this shard's missing blocks (all blocks without --shard), then the tables."""
    import torch
    from tqdm.auto import tqdm

    from .engine import AblationEngine

    cfg = setup.cfg
    job = open_trace(setup)
    if job.finished is not None:  # same trace already computed: only the thresholds may differ
        return finish_trace(job.rd, [job.trace_dir], job.meta, cfg, t_start, cleanup=True, total=job.finished)

    cells, fp = setup.cells, setup.fingerprint
    engine = AblationEngine(setup.adapter, setup.saes, setup.plan())
    few = {s: engine.n_null(s) for s in setup.features if cfg.null_ablation and engine.n_null(s) < 3}
    if few:
        warnings.warn(f"null draws per source layer {few} (< 3): the null criterion cannot test these layers' "
                      "edges; trace more features (--n-features) or raise --null-budget", stacklevel=2)
    i, n = cfg.shard_index, cfg.n_shards
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with tqdm(total=sum(len(setup.block_cells(b)) for b in job.blocks),
                  initial=sum(len(setup.block_cells(b)) for b in job.blocks if b not in job.todo),
                  desc=f"trace cells (shard {i}/{n})" if n > 1 else "trace cells", unit="cell", disable=not progress) as bar:
            for b in job.todo:
                t0 = time.time()
                acc = engine.run_cells(cells, setup.block_cells(b), progress=bar)
                acc.counters["compute_ms"] = int(round((time.time() - t0) * 1000))
                acc.save(block_path(job.trace_dir, b), fingerprint=np.asarray(fp), block=np.asarray(b))
    finally:
        torch.set_num_threads(threads)
    if n > 1:
        metrics = {"blocks": job.blocks, "n_blocks": setup.n_blocks, "wall_s": round(time.time() - t_start, 3)}
        job.rd.complete_stage(job.stage, [str(block_path(job.trace_dir, b).relative_to(job.rd.path))
                                          for b in job.blocks], metrics)
        return TraceResult(job.rd.path, None, None, None, metrics)
    return finish_trace(job.rd, [job.trace_dir], job.meta, cfg, t_start, cleanup=True)


def run_trace(run=None, *, executor: str = "local", plan: bool = False, address: str | None = None,
              num_workers: int = 2, **kwargs):
    """What ``sccircuits trace`` runs: the plan only (``plan=True``, returns a
    :class:`~sccircuits.trace.plan.TracePlanReport`; print it), a local trace (``executor="local"``)
    or a Ray trace (``executor="ray"``). ``kwargs`` are :func:`sccircuits.trace.trace`'s."""
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if plan:
        from .plan import plan_trace

        return plan_trace(run, num_workers=num_workers if executor == "ray" else 1, **kwargs)
    if executor == "ray":
        from .ray_executor import trace_with_ray

        return trace_with_ray(run, address=address, num_workers=num_workers, **kwargs)
    return trace(run, **kwargs)


# ----------------------------------------------------------------------------- merge
def merge(shard_dirs, out=None, progress: bool = True) -> TraceResult:
    """Merge the blocks of shard runs (``--shard i/n``) into the final trace tables.

    ``shard_dirs``: run directories (or their ``trace/`` folders) that hold shards of one trace
    (same cells, features and options); ``out``: run directory for the result (default: the
    first one). Every block must be present exactly as a single run would have computed it.
    """
    t_start = time.time()
    dirs = [Path(d) for d in ([shard_dirs] if isinstance(shard_dirs, (str, os.PathLike)) else shard_dirs)]
    trace_dirs = [d if d.name == STAGE and not (d / STAGE).is_dir() else d / STAGE for d in dirs]
    metas = []
    for td in trace_dirs:
        found = artifacts.read_trace_metas(td)
        if not found:
            raise InputError(td, "no trace metadata (trace_meta*.json): not a trace shard directory")
        metas += found
    fps = {m["fingerprint"] for m in metas}
    if len(fps) != 1:
        raise InputError(trace_dirs[0], f"shards come from different traces (fingerprints {sorted(fps)}); "
                                        "they must use the same cells, features and options")
    meta = metas[0]
    # shards written before the layernorm option existed were traced with live LayerNorms
    cfg = from_dict(TraceConfig, {"layernorm": "live", **meta["config"], "shard": "0/1"})
    rd = RunDir(out if out is not None else trace_dirs[0].parent)
    with rd.hold("merge"):
        rd.begin_stage(STAGE, cfg, merged_from=[str(d) for d in trace_dirs], fingerprint=meta["fingerprint"])
        return finish_trace(rd, trace_dirs, meta, cfg, t_start, cleanup=False)


def _fold_blocks(trace_dirs: list[Path], meta: dict, progress: bool = True) -> Accumulators:
    total = None
    for b in range(meta["n_blocks"]):
        path = next((p for p in (block_path(td, b) for td in trace_dirs) if p.is_file()), None)
        if path is None:
            raise InputError(trace_dirs[0], f"block {b} of {meta['n_blocks']} is missing: a shard has not "
                                            "finished (run it, then merge again)")
        acc = load_block(path, meta["fingerprint"])
        total = acc if total is None else total.merge(acc)
    return total


def _finished_statistics(trace_dir: Path, fingerprint: str) -> Accumulators | None:
    """The merged statistics of a finished trace with this fingerprint, if any (re-running a
    finished trace with other thresholds rebuilds the tables without new forward passes)."""
    path = trace_dir / "accumulators.npz"
    if not path.is_file():
        return None
    acc, extra = Accumulators.load(path)
    return acc if str(extra.get("fingerprint")) == fingerprint else None


def finish_trace(rd: RunDir, trace_dirs: list[Path], meta: dict, cfg: TraceConfig, t_start: float, cleanup: bool,
            total: Accumulators | None = None) -> TraceResult:
    """Fold all blocks (unless ``total`` is given), write the tables and complete the stage."""
    total = _fold_blocks(trace_dirs, meta) if total is None else total
    never = {s: total.features[s][total.active[s] == 0].tolist() for s in total.features}
    never = {s: f for s, f in never.items() if f}
    n_feat = sum(len(f) for f in total.features.values())
    if sum(len(f) for f in never.values()) == n_feat:
        raise InputError(meta["inputs"]["data"], f"none of the {n_feat} source features fires in any of the "
                                                 f"{meta['n_cells']} traced cells; nothing to trace")
    if never:
        shown = "; ".join(f"layer {s}: {f[:20]}" + (f" and {len(f) - 20} more" if len(f) > 20 else "")
                          for s, f in never.items())
        warnings.warn(f"source features that fire in no traced cell (no edges possible): {shown}", stacklevel=2)
    catalogs = None
    if meta.get("annotation"):
        from ..annotate import load_annotation

        catalogs, _ = load_annotation(meta["annotation"])
    th = Thresholds.from_config(cfg)
    edges, features, null = build_tables(total, th, meta["model_name"], catalogs)
    td = rd.path / STAGE
    total.save(td / "accumulators.npz", fingerprint=np.asarray(meta["fingerprint"]))
    outputs = artifacts.write_trace_tables(rd, {"edges": edges, "features": features, "null": null,
                                                "d_distribution": d_distribution(total, th)})
    fdr = estimated_fdr(null)
    c = total.counters
    selection = meta.get("selection_forward_passes", 0)  # clean passes that chose the source features
    compute_s = c.get("compute_ms", 0) / 1000
    metrics = {
        "n_cells": meta["n_cells"], "n_source_features": n_feat,
        "source_features": meta["features"], "features_never_fired": {str(s): f for s, f in never.items()},
        "clean_forward_passes": c.get("clean_forward_passes", 0),
        "ablation_forward_passes": c.get("ablation_forward_passes", 0),
        "null_match_forward_passes": meta.get("null_match_forward_passes", 0),
        "selection_forward_passes": selection,
        "forward_passes": (c.get("clean_forward_passes", 0) + c.get("ablation_forward_passes", 0)
                           + meta.get("null_match_forward_passes", 0) + selection),
        # the selection pass is paid with or without the null: in both, so forward_pass_ratio stays the null's cost
        "forward_passes_null_free": (c.get("clean_forward_passes", 0) + c.get("null_free_ablation_forward_passes", 0)
                                     + selection),
        "null_draws": {str(s): f.tolist() for s, f in total.null_features.items()},
        "null_directions": cfg.null_directions if cfg.null_ablation else None,
        "ablations": c.get("ablations", 0), "null_ablations": c.get("null_ablations", 0),
        "ablated_sequences": c.get("ablated_sequences", 0),
        "memory_estimate_mib": _mib(meta.get("memory_estimate_bytes")),
        "memory_estimate_shape": meta.get("memory_estimate_shape"), "memory_estimate_formula": _memory_formula(),
        "compute_s": round(compute_s, 3), "wall_s": round(time.time() - t_start, 3),
        "ablations_per_s": round(c.get("ablations", 0) / compute_s, 3) if compute_s > 0 else None,
        "n_tests": int(sum(features["n_tests"])) if len(features) else 0,
        "criterion": cfg.criterion, "n_edges": int(edges[EDGE_COLUMN].sum()),
        "n_edges_published": int(edges["passes_published"].sum()), "n_edges_in_cap": int(edges["in_cap"].sum()),
        "n_edges_null_criterion": int(edges["passes_null"].sum()),
        "estimated_fdr": fdr["null" if cfg.criterion == "null" else "published"],
        "estimated_fdr_published": fdr["published"], "estimated_fdr_null": fdr["null"],
        "estimated_fdr_null_empirical": fdr["null_empirical"], "estimated_fdr_null_model": fdr["null_model"],
    }
    if metrics["forward_passes_null_free"]:
        metrics["forward_pass_ratio"] = round(metrics["forward_passes"] / metrics["forward_passes_null_free"], 4)
    outputs.append(f"{STAGE}/accumulators.npz")
    rd.complete_stage(STAGE, outputs, metrics)
    if cleanup:
        shutil.rmtree(td / "blocks", ignore_errors=True)
    return TraceResult(rd.path, edges, features, null, metrics)


def _memory_estimate(setup: TraceSetup) -> dict[str, int]:
    """Peak memory bound of the trace by component (``sccircuits.trace.plan.memory_estimate``)."""
    from .plan import setup_memory

    return {k: int(v) for k, v in setup_memory(setup).items()}


def _memory_shape(setup: TraceSetup) -> dict[str, int]:
    """The symbols of the memory formula for this trace (``sccircuits.trace.plan.memory_shape``)."""
    from .plan import memory_shape

    return memory_shape(setup)


def _memory_formula() -> str:
    from .plan import MEMORY_FORMULA

    return MEMORY_FORMULA


def _mib(parts: dict | None) -> dict | None:
    """{component: MiB, "total": MiB} of a byte breakdown (None stays None)."""
    if not parts:
        return None
    out = {k: round(v / 2 ** 20, 1) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / 2 ** 20, 1)
    return out


def load_trace(run) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(edges, features, null) tables of a run whose trace stage completed."""
    return artifacts.read_trace_tables(run)
