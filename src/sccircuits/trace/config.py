"""Options of the trace stage (one dataclass, saved in the run manifest)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import apply_compat, check, compat_option, option, parse_feature_spec, parse_layers
from ..errors import ConfigError

SELECTIONS = ("richness", "frequency", "random")
CRITERIA = ("null", "published")
NULL_DIRECTIONS = ("feature", "mixed")
"""How a null draw is built (:mod:`sccircuits.trace.null_draws`)."""
SOURCE_NORMS = ("none", "median_mad")
THRESHOLDS = ("bh", "decoy", "decoy_plus")
DECOY_SCORES = ("null_z", "d")
NULL_LOCATIONS = ("draws", "pooled")
LAYERNORMS = ("live", "frozen")


@dataclass
class TraceConfig:
    """Options of ``sccircuits trace``. ``compat="reference"`` reproduces the published
    algorithm: reference tokenization, fp32, the published thresholds, cap and consistency
    definition, no q filter, a minimum of 2 cells per test and the published edge set
    (``criterion="published"``: the capped ``in_cap`` edges). Compat supplies these as
    defaults; an explicit value that contradicts it is an error (:func:`~sccircuits.config.apply_compat`).

    Two edge criteria are always computed (columns of edges.parquet); ``criterion`` picks the
    one downstream stages read (column ``edge``):

    * ``null`` (default): p against a null ablation (untraced features of matched firing
      frequency ablated like real sources, ``null_directions``) with a per-target null, BH
      across the run (``fdr``), a magnitude floor relative to the target's clean activation
      (``min_rel_change``), the sign-symmetric (nonzero) consistency, at least ``min_cells``
      informative cells, no cap (docs/planted-circuits.md);
    * ``published``: |d| > ``d_threshold``, consistency (``consistency_kind``) >
      ``consistency_threshold``, then the top ``top_per_layer`` per (source feature, target layer).
    """

    source_layers: list[int] | None = option(None, "source layers to ablate, e.g. 0,5,11 (default: every SAE layer with a later SAE)")
    n_features: int = option(30, "source features per layer chosen by --selection")
    features: str | None = option(None, "explicit source features, e.g. '0:309,460;5:12,80' (overrides --n-features)")
    all_active: bool = option(False, "trace every feature of each source layer (memory grows with d_sae^2)")
    selection: str = option("richness", "how to pick --n-features: richness (annotation), frequency or random")
    min_frequency: float = option(0.01, "minimum activation frequency of a selected feature")
    selection_seed: int = option(0, "seed of random selection")
    n_cells: int = option(200, "cells traced (the first N, or a random N with --sample-seed)")
    sample_seed: int | None = option(None, "sample the cells at random with this seed instead of taking the first N")
    tokenization: str | None = compat_option("official", "reference", "official or reference (published) tokenization")
    gene_column: str | None = option(None, "var column with gene ids/symbols for the tokenizer (default: the run's extract option, else var_names)")
    counts_layer: str | None = option(None, "AnnData layer holding raw counts (default: the run's extract option, else X)")
    max_length: int | None = option(None, "tokens per cell (default: the run's extract option, else the model's limit)")
    device: str = option("cpu", "torch device")
    dtype: str | None = compat_option("float32", "float32", "model dtype (float32, bfloat16, float16); SAEs always encode in float32")
    batch_size: int = option(16, "ablated sequences (rows) per forward pass (bounds memory)")
    clean_batch_size: int | None = option(None, "cells per clean forward pass (default: batch_size); the ablated rows of "
                                                "these cells (cells sorted by length) are cut into forwards of batch_size rows")
    threads: int | None = option(None, "torch CPU threads for the trace (default: torch's own, one per physical core)")
    encode_chunk: int = option(8192, "positions per SAE encode call (bounds memory)")
    checkpoint_every: int = option(50, "cells per block: statistics are checkpointed after each block")
    shard: str = option("0/1", "i/n: trace only the i-th of n contiguous parts of the cells (merge later)")
    compat: str = option("none", "none, or 'reference' to reproduce the published algorithm exactly")
    d_threshold: float | None = compat_option(0.5, 0.5, "edge if |cohen's d| > this")
    consistency_threshold: float | None = compat_option(0.7, 0.7, "edge if consistency > this")
    consistency_kind: str | None = compat_option("reference", "reference", "which consistency the threshold uses: reference (zeros count as non-positive) or nonzero")
    min_cells: int | None = compat_option(3, 2, "minimum cells where the source fires for a test")
    max_q: float | None = option(None, "also require BH q <= this (default: no q filter; none with --compat reference)")
    top_per_layer: int | None = compat_option(50, 50, "published cap: top N edges by |d| per (source feature, target layer); 0 = uncapped")
    criterion: str | None = compat_option("null", "published", "edge set downstream stages use (column 'edge'): null (null p-value + BH, magnitude floor, nonzero consistency, no cap) or published (|d|, consistency, cap)")
    fdr: float = option(0.05, "criterion null: BH level of the null p-values over every test of the run")
    min_rel_change: float = option(0.05, "criterion null: |mean change beyond the null| / the target's clean activation must be >= this")
    source_norm: str = option("none", "criterion null: none, or median_mad: each source's null z over the targets of a layer pair (and each null draw's, alike) is centred on its median and divided by its spread (1.4826 x MAD, at least 1), and the magnitude floor applies to the change beyond that median, so a source that shifts every target (its own downstream writes change the stream's norm; LayerNorm rescales all targets) keeps only targets that stand out from its others")
    threshold: str = option("bh", "criterion null: how the cut is chosen: bh (Benjamini-Hochberg at --fdr over the null p-values of every test) or decoy (target-decoy: the loosest cut at which the null draws' tests passing it, scaled to the number of real tests, are <= --fdr x the real tests passing it; decoy_plus adds one null pass to that count, as knockoff+)")
    decoy_score: str = option("null_z", "criterion null, threshold decoy: the score real and null-draw tests are ranked by: null_z (|z| against the target's null draws) or d (|cohen's d|)")
    layernorm: str | None = compat_option("frozen", "live", "LayerNorms in the ablated passes: live (each recomputes its own scale, so an ablation also rescales the whole stream and shifts every target a little) or frozen (each divides by its clean-pass denominator at that position: an observation is what attention and MLPs carry, the whole-stream rescaling left out; real and null ablations alike)")
    null_location: str = option("draws", "criterion null: each target's null location and spread: draws (mean and shrunk variance of the null draws' changes) or pooled (median and MAD of the real sources' and null draws' changes together: an empirical null; a target's specific edges are a few of its tests)")
    null_ablation: bool = option(True, "also run the null ablations (data-matched directions, norm-matched per position); needed by criterion null")
    null_draws: int = option(16, "null pseudo-sources per source layer (at most --null-budget x the traced features of the layer)")
    null_budget: float = option(0.5, "null ablations at most this fraction of the real ones (expected): the trace costs <= 1 + this in forward passes")
    null_seed: int = option(0, "seed of the null templates and directions")
    null_directions: str = option("feature", "what a null draw ablates: feature (an untraced feature of the template's firing frequency, ablated like a real source) or mixed (the template's positions, a different active untraced direction at each position)")
    null_match_cells: int = option(16, "null_directions feature: cells (the first traced) whose clean pass gives the firing frequencies to match, when neither the annotation nor the feature selection has them; counted in forward_passes")
    model_name: str | None = option(None, "value of the 'model' column (default: the model kind)")

    def __post_init__(self) -> None:
        apply_compat(self)
        check(self.compat == "none" or self.max_q is None,
              f"--max-q {self.max_q!r} contradicts --compat reference, which uses no q filter "
              "(drop --max-q or --compat reference)")
        check(self.selection in SELECTIONS, f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        check(self.tokenization in ("official", "reference"), f"tokenization must be official or reference, got {self.tokenization!r}")
        check(self.dtype in ("float32", "bfloat16", "float16"), f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        check(self.consistency_kind in ("reference", "nonzero"), "consistency_kind must be reference or nonzero")
        check(self.n_features >= 1, "n_features must be >= 1")
        check(self.n_cells >= 1, "n_cells must be >= 1")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.clean_batch_size is None or self.clean_batch_size >= 1, "clean_batch_size must be >= 1")
        check(self.threads is None or self.threads >= 1, "threads must be >= 1")
        check(self.encode_chunk >= 1, "encode_chunk must be >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        check(self.min_cells >= 2, "min_cells must be >= 2 (a standard deviation needs two cells)")
        check(self.top_per_layer >= 0, "top_per_layer must be >= 0 (0 = uncapped)")
        check(0.0 <= self.consistency_threshold <= 1.0, "consistency_threshold must be in [0, 1]")
        check(self.d_threshold >= 0, "d_threshold must be >= 0")
        check(self.max_q is None or 0 < self.max_q <= 1, "max_q must be in (0, 1]")
        check(not (self.features and self.all_active), "give either features or all_active, not both")
        check(self.criterion in CRITERIA, f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        check(0 < self.fdr < 1, "fdr must be in (0, 1)")
        check(self.min_rel_change >= 0, "min_rel_change must be >= 0")
        check(self.source_norm in SOURCE_NORMS,
              f"source_norm must be one of {', '.join(SOURCE_NORMS)}, got {self.source_norm!r}")
        check(self.threshold in THRESHOLDS,
              f"threshold must be one of {', '.join(THRESHOLDS)}, got {self.threshold!r}")
        check(self.decoy_score in DECOY_SCORES,
              f"decoy_score must be one of {', '.join(DECOY_SCORES)}, got {self.decoy_score!r}")
        check(self.null_location in NULL_LOCATIONS,
              f"null_location must be one of {', '.join(NULL_LOCATIONS)}, got {self.null_location!r}")
        check(self.layernorm in LAYERNORMS, f"layernorm must be one of {', '.join(LAYERNORMS)}, got {self.layernorm!r}")
        check(self.null_draws >= 3, "null_draws must be >= 3 (the per-target null needs a spread)")
        check(0 < self.null_budget <= 1, "null_budget must be in (0, 1]")
        check(self.null_directions in NULL_DIRECTIONS,
              f"null_directions must be one of {', '.join(NULL_DIRECTIONS)}, got {self.null_directions!r}")
        check(self.null_match_cells >= 1, "null_match_cells must be >= 1")
        check(self.null_ablation or self.criterion != "null",
              "criterion 'null' needs the null ablations: drop --no-null-ablation or use --criterion published")
        self.source_layers = parse_layers(self.source_layers, "source_layers")
        if self.features:
            parse_feature_spec(self.features)  # syntax check: a bad spec fails before any work
        _parse_shard(self.shard)  # validates the shard string

    @property
    def cells_per_clean_pass(self) -> int:
        return self.clean_batch_size or self.batch_size

    @property
    def shard_index(self) -> int:
        return _parse_shard(self.shard)[0]

    @property
    def n_shards(self) -> int:
        return _parse_shard(self.shard)[1]


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {text!r}: need 0 <= i < n")
    return i, n
