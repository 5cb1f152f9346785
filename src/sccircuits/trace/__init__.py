"""Causal circuit tracing: ablate SAE features and measure every downstream SAE feature.

* :func:`trace` / :func:`merge` (``sccircuits trace`` / ``sccircuits merge``): the stage
  (``stage.py``): inputs, cells, features, checkpointed blocks, shards, outputs.
* :class:`TraceConfig` (``config.py``): every option.
* :class:`AblationEngine` (``engine.py``): the exact batched ablations.
* :class:`Accumulators` (``accumulators.py``): mergeable statistics (.npz).
* :func:`build_tables` (``edges.py``): edges, per-feature summaries, noise floor.
* :func:`run_trace` (``stage.py``): what ``sccircuits trace`` runs: a local trace, a Ray trace
  (``ray_executor.py``) or only the plan (``plan.py``: forward passes, time and memory
  estimates, the dtype agreement check). Every executor shares :func:`prepare_trace` (inputs,
  cells, features, fingerprint) and :func:`open_trace` (stage, metadata, resume).
"""

from __future__ import annotations

from .accumulators import Accumulators, PairStats
from ..config import parse_feature_spec
from .config import TraceConfig
from .edges import EDGE_COLUMNS, Thresholds, build_tables
from .engine import AblationEngine, TracePlan
from .stage import (TraceInputs, TraceResult, TraceSetup, feature_frequencies, load_trace, merge, open_trace,
                    prepare_trace, run_trace, trace)

__all__ = ["trace", "merge", "load_trace", "TraceConfig", "TraceResult", "AblationEngine", "TracePlan",
           "Accumulators", "PairStats", "Thresholds", "build_tables", "EDGE_COLUMNS", "parse_feature_spec",
           "feature_frequencies", "prepare_trace", "TraceSetup", "TraceInputs", "open_trace", "run_trace"]
