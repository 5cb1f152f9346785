"""Plan a trace before running it: forward passes, time per device, memory, batch size.

``sccircuits trace --plan`` / :func:`plan_trace` answers, before anything long starts:

* how many clean and ablated forward passes the tracer will run, per source layer. With
  ``firing=True`` (default) this comes from the actual firing of the selected source features
  on the selected cells (one clean pass over the cells, batched exactly like the tracer, so the
  counts equal the ``clean_forward_passes`` / ``ablation_forward_passes`` / ``ablations`` the
  tracer writes to its manifest). With ``firing=False`` it is an upper bound (every traced
  feature fires in every cell) and nothing but tokenization (and the selection pass below) runs.
  The total also counts the clean passes that find the frequencies the ``feature`` null draws
  are matched to, when the trace runs them (explicit ``--features`` without an annotation:
  ``null_match_cells`` cells), and those that find the frequencies the source features are
  selected by (``--selection frequency``, or ``richness`` without an annotation: all traced
  cells), both run by :func:`prepare_trace` before any plan or trace.
* the time per device, from a short calibration run of the real engine on a few cells (time
  per clean token and per ablated token, scaled by the tokens the plan will process). This
  is a linear-in-tokens model: attention is quadratic in length, so long-tailed length
  distributions make it optimistic for the longest cells.
* the peak memory (model, SAEs, accumulators, clean activations of a batch, one ablation pass,
  SAE encode chunk), an *estimate* from shapes, not a measurement.

:func:`suggest_batch_size` turns the memory estimate into the largest batch that fits in a
budget (``torch.cuda.mem_get_info`` on CUDA, available RAM on CPU).

:func:`prepare_trace` resolves a trace's inputs exactly as ``sccircuits trace`` does (same
cells, same features, same block fingerprint); the Ray executor (``trace/ray_executor.py``) uses it too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .accumulators import Accumulators
from .config import TraceConfig
from .stage import TraceSetup, prepare_trace  # noqa: F401  (re-exported: plan users build on it)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------------------- pass counts
def engine_batches(lengths: np.ndarray, idx, batch_size: int) -> list[list[int]]:
    """The batches the engine forms from cells ``idx`` (``AblationEngine.run_cells``): sorted by
    decreasing length (stable), then cut into ``batch_size`` cells."""
    idx = np.asarray(idx, dtype=np.int64)
    order = idx[np.argsort(-np.asarray(lengths)[idx], kind="stable")]
    return [[int(i) for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


@dataclass
class PassCounts:
    """Forward passes of a trace (the tracer's manifest counters), per source layer."""

    clean_forward_passes: int = 0
    clean_tokens: int = 0
    """Sum over clean passes of batch rows x padded length."""
    ablations: dict[int, int] = field(default_factory=dict)
    """Source layer -> (cell, feature) pairs ablated (real ablations; nulls are as many)."""
    ablation_forward_passes: dict[int, int] = field(default_factory=dict)
    ablated_sequences: dict[int, int] = field(default_factory=dict)
    ablated_tokens: dict[int, int] = field(default_factory=dict)
    """Source layer -> sum over ablation passes of rows x padded length."""
    exact: bool = True
    """False when computed from the upper bound (every feature fires in every cell)."""
    null_match_forward_passes: int = 0
    """Clean passes that find the firing frequencies the ``feature`` null draws are matched to
    (``null_match_cells`` cells; only when neither the annotation nor the feature selection had
    frequencies, e.g. explicit ``--features`` without an annotation)."""
    selection_forward_passes: int = 0
    """Clean passes over all traced cells that find the firing frequencies the source features
    are selected by (``--selection frequency``, or ``richness`` without an annotation)."""

    def totals(self) -> dict[str, int]:
        """The manifest's counters: ``forward_passes`` = clean + ablated + null-matching +
        selection passes."""
        ablation = sum(self.ablation_forward_passes.values())
        return {"clean_forward_passes": self.clean_forward_passes,
                "ablation_forward_passes": ablation,
                "null_match_forward_passes": self.null_match_forward_passes,
                "selection_forward_passes": self.selection_forward_passes,
                "forward_passes": (self.clean_forward_passes + ablation + self.null_match_forward_passes
                                   + self.selection_forward_passes),
                "ablations": sum(self.ablations.values()),
                "ablated_sequences": sum(self.ablated_sequences.values())}


def count_passes(lengths: np.ndarray, active: dict[int, np.ndarray], n_cells: int, block_size: int,
                 batch_size: int, null_active: dict[int, np.ndarray] | None = None,
                 clean_batch_size: int | None = None) -> PassCounts:
    """Simulate the engine's batching (pure function).

    ``lengths``: tokens per cell (n_cells,); ``active[s]``: number of traced features of source
    layer ``s`` that fire in each cell (n_cells,); ``null_active[s]``: number of null draws of
    ``s`` whose template fires in each cell (None: no null). Blocks of ``block_size``
    consecutive cells; inside a block cells are batched as :func:`engine_batches`
    (``clean_batch_size`` cells per clean pass, default ``batch_size``); per batch and source
    layer the real jobs (row, feature) in row order, then the null jobs, are cut into
    ``batch_size`` rows, each chunk padded to its longest row (as
    ``AblationEngine._ablate_layer`` does).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out = PassCounts(ablations={s: 0 for s in active}, ablation_forward_passes={s: 0 for s in active},
                     ablated_sequences={s: 0 for s in active}, ablated_tokens={s: 0 for s in active})
    for start in range(0, n_cells, block_size):
        for batch in engine_batches(lengths, range(start, min(start + block_size, n_cells)), clean_batch_size or batch_size):
            out.clean_forward_passes += 1
            out.clean_tokens += len(batch) * int(lengths[batch].max())
            for s, counts in active.items():
                row_len = np.repeat(lengths[batch], np.asarray(counts)[batch])  # one entry per job
                out.ablations[s] += len(row_len)
                null_len = (np.repeat(lengths[batch], np.asarray(null_active[s])[batch]) if null_active
                            else np.zeros(0, np.int64))
                jobs = np.concatenate([row_len, null_len])
                for c in range(0, len(jobs), batch_size):
                    chunk = jobs[c:c + batch_size]
                    out.ablation_forward_passes[s] += 1
                    out.ablated_sequences[s] += len(chunk)
                    out.ablated_tokens[s] += len(chunk) * int(chunk.max())
    return out


def firing_counts(setup: TraceSetup, progress: bool = True) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict]:
    """Per source layer, how many traced features fire in each cell (at its gene positions),
    and how many null draws (their template fires), from clean passes batched exactly like
    the tracer (so the same numbers decide firing).

    Also returns timing of those clean passes: ``{"seconds": s, "tokens": padded tokens}``.
    """
    import torch
    from tqdm.auto import tqdm

    cfg, cells, adapter = setup.cfg, setup.cells, setup.adapter
    dev = torch.device(adapter.device)
    sources = sorted(setup.features)
    out = {s: np.zeros(len(cells), np.int64) for s in sources}
    null_out = {s: np.zeros(len(cells), np.int64) for s in sources}
    saes = {s: setup.saes[s].to(device=dev, dtype=torch.float32).eval() for s in sources}
    nulls = setup.plan().null_features if cfg.null_ablation else {s: np.zeros(0, np.int64) for s in sources}
    n_feat = {s: len(setup.features[s]) for s in sources}
    cols = {s: torch.as_tensor(np.concatenate([setup.features[s], nulls[s]]), dtype=torch.long, device=dev)
            for s in sources}
    lengths = cells.lengths()
    batches = [b for blk in range(setup.n_blocks)
               for b in engine_batches(lengths, setup.block_cells(blk), cfg.cells_per_clean_pass)]
    seconds, tokens = 0.0, 0
    with torch.inference_mode():
        for idx in tqdm(batches, desc="plan: firing of traced features", unit="batch", disable=not progress):
            t0 = time.perf_counter()
            batch = adapter.batch(cells, idx).to(dev)
            hs = adapter.hidden_states(batch, sources)
            gm = batch.gene_mask.to(dev)
            for s in sources:
                x = hs[s][gm].to(torch.float32)
                z = torch.cat([saes[s].encode(x[i:i + cfg.encode_chunk])[:, cols[s]]
                               for i in range(0, len(x), cfg.encode_chunk)]) if len(x) else x.new_zeros((0, len(cols[s])))
                zz = torch.zeros(gm.shape + (len(cols[s]),), dtype=torch.float32, device=dev)
                zz[gm] = z
                fired = (zz > 0).any(1)
                out[s][idx] = fired[:, :n_feat[s]].sum(1).cpu().numpy()
                null_out[s][idx] = fired[:, n_feat[s]:].sum(1).cpu().numpy()
            seconds += time.perf_counter() - t0
            tokens += len(idx) * int(lengths[idx].max())
    return out, null_out, {"seconds": seconds, "tokens": tokens}


# ----------------------------------------------------------------------------- calibration
def calibrate(setup: TraceSetup, n_cells: int = 4, progress: bool = False) -> dict:
    """Time the real engine on ``n_cells`` cells spread over the length distribution.

    Returns seconds per clean token and per ablated token (padded rows x length), measured
    after one warm-up batch. The clean rate comes from timing the clean passes alone; the
    ablated rate from the engine's total time minus the clean part.
    """
    import torch

    from .engine import AblationEngine

    cfg, cells = setup.cfg, setup.cells
    lengths = cells.lengths()
    order = np.argsort(-lengths, kind="stable")
    pick = sorted({int(order[int(round(q * (len(order) - 1)))]) for q in np.linspace(0, 1, max(1, min(n_cells, len(cells))))})
    engine = AblationEngine(setup.adapter, setup.saes, setup.plan())
    engine.run_cells(cells, pick[:1])  # warm-up (allocations, kernels)

    sub = _SubsetSetup(setup, pick)
    firing_counts(sub, progress=False)  # warm-up of the clean passes alone (their first call pays one-time costs)
    active, null_active, clean_timing = firing_counts(sub, progress=progress)
    counts = count_passes(lengths[pick], active, len(pick), len(pick), cfg.batch_size,
                          null_active if cfg.null_ablation else None, cfg.cells_per_clean_pass)
    t0 = time.perf_counter()
    with torch.inference_mode():
        engine.run_cells(cells, pick)
    total = time.perf_counter() - t0
    clean_rate = clean_timing["seconds"] / max(clean_timing["tokens"], 1)
    abl_tokens = sum(counts.ablated_tokens.values())
    abl_seconds = max(total - clean_rate * counts.clean_tokens, 0.0)
    return {"cells": len(pick), "seconds": total, "clean_s_per_token": clean_rate,
            "ablated_s_per_token": abl_seconds / abl_tokens if abl_tokens else None,
            "clean_tokens": counts.clean_tokens, "ablated_tokens": abl_tokens, "device": str(setup.adapter.device),
            "dtype": cfg.dtype}


class _SubsetSetup:
    """A view of a setup restricted to some cells (one block), for calibration."""

    def __init__(self, setup: TraceSetup, idx: list[int]):
        from ..models.base import TokenizedCells

        c = setup.cells
        self.cells = TokenizedCells([c.input_ids[i] for i in idx], None if c.values is None else [c.values[i] for i in idx],
                                    [c.gene_mask[i] for i in idx], np.asarray(c.cell_index)[idx])
        self.cfg, self.adapter, self.saes, self.features = setup.cfg, setup.adapter, setup.saes, setup.features
        self.plan = setup.plan
        self.n_blocks = 1

    def block_cells(self, b: int) -> list[int]:
        return list(range(len(self.cells)))


# ----------------------------------------------------------------------------- memory
def _n_params(adapter) -> int:
    model = getattr(adapter, "model", None)
    return int(sum(p.numel() for p in model.parameters())) if model is not None else 0


MEMORY_FORMULA = (
    "peak bytes <= model + saes + accumulators + clean_batch + ablation_pass + encode + job_sums + null, with "
    "B = batch_size (ablated rows per forward), C = clean_batch_size (cells per clean pass), L = longest cell, "
    "d = d_model, d_ff = FFN width, b = bytes per model value, D = largest d_sae, F = most traced features of a "
    "source layer, T = most target layers of a source layer, K = kinds (1, or 2 with the null), S = source layers, "
    "P = encode_chunk, Q = max(1, P // 16): "
    "model = params*b; saes = sum over layers used (2*d*D + D + 3*d)*4; accumulators = sum over (source, target) "
    "K*F*D*36; clean_batch = C*L*d*b*layers_kept + C*L*(5*d + d_ff)*b; ablation_pass = B*L*d*(b + 8) + "
    "B*L*(5*d + d_ff)*b; encode = P*D*8; job_sums = C*F*D*8*(3*K*T + 4); null (K = 2 only) = S*d*D*4 + Q*D*48 + B*D*8; "
    "frozen LayerNorms (N = ln_blocks, the blocks up to the deepest layer) add C*L*(d*b + 8*N) to clean_batch and "
    "B*L*8*N to ablation_pass, and with b < 4 (their float32 arithmetic) C*L*d*8 and B*L*d*8 more")
"""The formula of :func:`memory_estimate` in one line (the trace manifest records it)."""


def memory_estimate(*, n_params: int, d_model: int, d_ff: int, dtype: str, batch_size: int,
                    max_length: int, n_layers_kept: int, n_targets_max: int, sae_sizes: dict[int, int],
                    n_features: dict[int, int], targets: dict[int, list[int]], n_kinds: int,
                    encode_chunk: int, clean_batch_size: int | None = None, ln_blocks: int = 0) -> dict[str, int]:
    """Peak memory of a trace in bytes, by component (pure function of shapes; the sum is the
    bound, :data:`MEMORY_FORMULA`). With ``B`` = ``batch_size`` (ablated rows per forward),
    ``C`` = ``clean_batch_size`` (cells per clean pass, default B), ``L`` = longest cell, ``d`` =
    d_model, ``b`` = bytes per model value, ``D`` = largest d_sae, ``F`` = most traced features
    of a source layer, ``T`` = most target layers of a source layer, ``K`` = kinds (1, or 2 with
    the null):

    * ``model``: parameters x b;
    * ``saes``: float32 encoder + decoder (2 d D) + biases + mean, per layer used;
    * ``accumulators``: per (kind, source, target) F x D x (3 float64 + 3 int32) (a null has at
      most F draws);
    * ``clean_batch``: the kept clean states ``C L d b x layers`` plus one block's working set
      ``C L (5 d + d_ff) b`` (input, q, k, v, attention output, FFN intermediate);
    * ``ablation_pass``: ``B L d (b + 8)`` (a float32 copy of the rows, the float32 perturbation,
      then the state in the model dtype) plus one block's working set ``B L (5 d + d_ff) b``;
      attention is a fused kernel (no L x L scores; measured on CPU for torch's SDPA with a
      padding mask);
    * ``encode``: ``encode_chunk x D`` float32 pre-activations, twice (top-k scratch); the codes
      themselves are kept sparse (k per position);
    * ``job_sums``: per job of one clean batch (at most ``K C F``) and target, the float64 clean
      sums, observations and clean means (``3 K T``), plus the folding's copies of one
      (kind, target) (``4``): ``C F D 8 (3 K T + 4)``;
    * ``null`` (with the null only): the unit decoder rows of each source layer (``d D`` float32),
      the null-direction choice over ``encode_chunk // 16`` positions at a time (dense code,
      float64 ranking and its temporaries, <= 48 bytes per entry of ``D``) and one random
      ranking per null row of a forward (``B D`` float64);
    * frozen LayerNorms (``ln_blocks`` > 0: the blocks run by the clean pass): the recorded
      denominators (two float32 per position and block) in the clean batch and, sliced, in each
      ablation pass, plus one ``C L d b`` scratch of the recording LayerNorm; with ``b`` < 4
      the LayerNorms compute in float32 (a float32 copy of their input and its square or
      output): ``C L d 8`` and ``B L d 8`` more.

    Peak <= the sum of the components (the clean states stay alive while the ablation passes run).
    """
    from .engine import null_choice_chunk

    b = DTYPE_BYTES[dtype]
    C = clean_batch_size or batch_size
    L = max_length
    D = max(sae_sizes.values(), default=0)
    F = max(n_features.values(), default=0)
    working = lambda rows: rows * L * (5 * d_model + d_ff) * b  # noqa: E731

    def ln_extra(rows: int, scratch: int) -> int:
        """Frozen LayerNorms: denominators (8 N) and scratch per position (b < 4: float32 copies)."""
        if not ln_blocks:
            return 0
        return rows * L * (8 * ln_blocks + scratch + (8 * d_model if b < 4 else 0))

    sae_bytes = sum((2 * d_model * m + m + 3 * d_model) * 4 for m in sae_sizes.values())
    acc = sum(n_kinds * n_features[s] * sae_sizes[t] * (3 * 8 + 3 * 4) for s, ts in targets.items() for t in ts)
    null = (len(n_features) * d_model * D * 4 + null_choice_chunk(encode_chunk) * D * 48 + batch_size * D * 8
            if n_kinds > 1 else 0)
    return {
        "model": n_params * b,
        "saes": sae_bytes,
        "accumulators": acc,
        "clean_batch": C * L * d_model * n_layers_kept * b + working(C) + ln_extra(C, d_model * b),
        "ablation_pass": batch_size * L * d_model * (b + 8) + working(batch_size) + ln_extra(batch_size, 0),
        "encode": encode_chunk * D * 4 * 2,
        "job_sums": C * F * D * 8 * (3 * n_kinds * n_targets_max + 4),
        "null": null,
    }


def memory_shape(setup: TraceSetup, batch_size: int | None = None) -> dict[str, int]:
    """The symbols of :data:`MEMORY_FORMULA` for a prepared trace (recorded beside the estimate)."""
    a, cfg = setup.adapter, setup.cfg
    desc = a.describe() if hasattr(a, "describe") else {}
    layers = sorted(set(setup.features) | {t for ts in setup.targets.values() for t in ts})
    B = batch_size or cfg.batch_size
    return {"params": _n_params(a), "B": B, "C": cfg.clean_batch_size or B,
            "L": int(setup.cells.lengths().max()), "d": int(a.d_model), "d_ff": int(desc.get("d_ff", 4 * a.d_model)),
            "b": DTYPE_BYTES[cfg.dtype], "D": max(int(setup.saes[l].d_sae) for l in layers),
            "F": max(len(f) for f in setup.features.values()),
            "T": max(len(t) for t in setup.targets.values()), "K": len(setup.kinds()), "S": len(setup.features),
            "layers_kept": len(layers), "P": int(cfg.encode_chunk), "ln_blocks": _ln_blocks(cfg, layers)}


def _ln_blocks(cfg, layers: list[int]) -> int:
    """Blocks whose LayerNorm denominators a frozen-LayerNorm trace records: every block up to
    the deepest layer it keeps (0 when live)."""
    return max(layers) + 1 if cfg.layernorm == "frozen" else 0


def setup_memory(setup: TraceSetup, batch_size: int | None = None) -> dict[str, int]:
    """:func:`memory_estimate` for a prepared trace (longest cell, all layers it keeps)."""
    a, cfg = setup.adapter, setup.cfg
    desc = a.describe() if hasattr(a, "describe") else {}
    layers = sorted(set(setup.features) | {t for ts in setup.targets.values() for t in ts})
    return memory_estimate(
        n_params=_n_params(a), d_model=int(a.d_model),
        d_ff=int(desc.get("d_ff", 4 * a.d_model)), dtype=cfg.dtype, batch_size=batch_size or cfg.batch_size,
        max_length=int(setup.cells.lengths().max()), n_layers_kept=len(layers),
        n_targets_max=max(len(t) for t in setup.targets.values()),
        sae_sizes={l: int(setup.saes[l].d_sae) for l in layers},
        n_features={s: len(f) for s, f in setup.features.items()}, targets=setup.targets,
        n_kinds=len(setup.kinds()), encode_chunk=cfg.encode_chunk,
        clean_batch_size=cfg.clean_batch_size or batch_size or cfg.batch_size, ln_blocks=_ln_blocks(cfg, layers))


def available_memory(device: str) -> int:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, available RAM otherwise."""
    import torch

    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def suggest_batch_size(estimate, budget_bytes: int, fraction: float = 0.8, max_batch: int = 1024) -> int:
    """Largest batch size ``B <= max_batch`` with ``sum(estimate(B).values()) <= fraction *
    budget_bytes`` (``estimate``: batch size -> component bytes, e.g. ``lambda B:
    setup_memory(setup, B)``); 1 if even B = 1 does not fit (the trace may still run slower
    with less memory: this is an estimate)."""
    limit = fraction * budget_bytes
    fits = lambda B: sum(estimate(B).values()) <= limit  # noqa: E731
    if not fits(1):
        return 1
    lo, hi = 1, max_batch
    while lo < hi:  # memory grows with B: binary search for the last B that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


# ----------------------------------------------------------------------------- plan
@dataclass
class TracePlanReport:
    """What :func:`plan_trace` found (``str()`` gives the printed summary)."""

    n_cells: int
    n_blocks: int
    features: dict[int, int]
    """Source layer -> number of traced features."""
    passes: PassCounts
    memory: dict[str, int]
    calibration: dict | None
    estimated_seconds: float | None
    """On the calibrated device, one worker."""
    num_workers: int = 1
    suggested_batch_size: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passes"]["totals"] = self.passes.totals()
        d["memory_total"] = sum(self.memory.values())
        return d

    def __str__(self) -> str:
        p = self.passes
        how = "from the firing of the selected features on the selected cells" if p.exact else \
            "UPPER BOUND (every feature assumed to fire in every cell)"
        lines = [f"trace plan: {self.n_cells} cells in {self.n_blocks} blocks; source features "
                 + ", ".join(f"layer {s}: {n}" for s, n in sorted(self.features.items())),
                 f"forward passes ({how}):",
                 f"  clean: {p.clean_forward_passes}"]
        for s in sorted(p.ablations):
            lines.append(f"  source layer {s}: {p.ablations[s]} ablations, {p.ablation_forward_passes[s]} ablated "
                         f"forward passes ({p.ablated_sequences[s]} sequences)")
        t = p.totals()
        if p.null_match_forward_passes:
            lines.append(f"  null matching (firing frequencies of untraced features): {p.null_match_forward_passes} "
                         "clean forward passes")
        if p.selection_forward_passes:
            lines.append(f"  feature selection (firing frequencies on the traced cells): {p.selection_forward_passes} "
                         "clean forward passes")
        lines.append(f"  total: {t['forward_passes']} forward passes")
        mem = self.memory
        lines.append(f"peak memory (estimate): {_gib(sum(mem.values()))} = "
                     + ", ".join(f"{k} {_gib(v)}" for k, v in mem.items()))
        if self.suggested_batch_size is not None:
            lines.append(f"largest batch size fitting 80% of free memory (estimate): {self.suggested_batch_size}")
        if self.estimated_seconds is not None:
            c = self.calibration
            lines.append(f"estimated time on {c['device']} ({c['dtype']}): {_hms(self.estimated_seconds)} on one worker"
                         + (f", ~{_hms(self.estimated_seconds / self.num_workers)} on {self.num_workers} workers (ideal)"
                            if self.num_workers > 1 else "")
                         + f" (calibrated on {c['cells']} cells in {c['seconds']:.1f} s; linear in tokens)")
        return "\n".join(lines)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def plan_setup(setup: TraceSetup, *, firing: bool = True, calibrate_cells: int = 4, num_workers: int = 1,
               progress: bool = True) -> TracePlanReport:
    """:func:`plan_trace` for an already prepared trace."""
    cfg, cells = setup.cfg, setup.cells
    lengths = cells.lengths()
    if firing:
        active, null_active, _ = firing_counts(setup, progress)
    else:
        active = {s: np.full(len(cells), len(f), np.int64) for s, f in setup.features.items()}
        null_active = {s: np.full(len(cells), len(f), np.int64) for s, f in setup.plan().null_features.items()}
    passes = count_passes(lengths, active, len(cells), cfg.checkpoint_every, cfg.batch_size,
                          null_active if cfg.null_ablation else None, cfg.cells_per_clean_pass)
    passes.exact = firing
    passes.null_match_forward_passes = setup.null_match_passes  # prepare_trace ran them (feature null, no frequencies)
    passes.selection_forward_passes = setup.selection_passes  # and these (frequency selection, no annotation)
    calib, seconds = None, None
    if calibrate_cells > 0:
        calib = calibrate(setup, calibrate_cells)
        if calib["ablated_s_per_token"] is not None:
            seconds = (calib["clean_s_per_token"] * passes.clean_tokens
                       + calib["ablated_s_per_token"] * sum(passes.ablated_tokens.values()))
    suggested = None
    try:
        budget = available_memory(cfg.device)
        suggested = suggest_batch_size(lambda B: setup_memory(setup, B), budget)
    except Exception:  # noqa: BLE001 - memory query is best effort
        pass
    return TracePlanReport(len(cells), setup.n_blocks, {s: len(f) for s, f in setup.features.items()}, passes,
                           setup_memory(setup), calib, seconds, num_workers, suggested)


def plan_trace(run=None, *, model=None, data=None, saes=None, annotation=None, out=None,
               config: TraceConfig | None = None, firing: bool = True, calibrate_cells: int = 4,
               num_workers: int = 1, progress: bool = True, **options) -> TracePlanReport:
    """Plan a trace (same arguments as :func:`sccircuits.trace.trace`) without running it.

    ``firing``: count passes from the real firing of the selected features (one clean pass over
    the cells) instead of an upper bound. ``calibrate_cells``: cells timed with the real engine
    (0 = no time estimate). ``num_workers``: also show the ideal time on that many workers.
    Nothing is written to the run directory.
    """
    if run is None and out is None:
        out = "."  # the planner writes nothing; the tracer's input resolution wants an output dir
    setup = prepare_trace(run, model=model, data=data, saes=saes, annotation=annotation, out=out,
                          config=config, progress=progress, **options)
    return plan_setup(setup, firing=firing, calibrate_cells=calibrate_cells, num_workers=num_workers,
                      progress=progress)


# ----------------------------------------------------------------------------- dtype check
@dataclass
class DtypeAgreement:
    """How far a trace moves in ``dtype`` against float32 on the same cells and features."""

    dtype: str
    n_cells: int
    n_tests: int
    """Tests valid (n >= min_cells, finite d) in both runs."""
    max_abs_delta_d: float
    mean_abs_delta_d: float
    q99_abs_delta_d: float
    edges_fp32: int
    edges_dtype: int
    edges_flipped: int
    """Edges in one run only, or in both with opposite signs of d."""
    frac_edges_flipped: float
    """edges_flipped / edges in either run."""
    firing_changed: int
    """(source feature) cell counts that differ (feature fires in other cells in ``dtype``)."""
    null_abs_d_q95: float | None
    """95th percentile of |d| of the float32 null ablations (the noise floor), for scale."""
    seconds: dict[str, float]
    """Engine time per dtype (same work)."""

    def __str__(self) -> str:
        floor = "" if self.null_abs_d_q95 is None else f"; null-ablation |d| q95 (noise floor) {self.null_abs_d_q95:.3f}"
        return (f"{self.dtype} vs float32 on {self.n_cells} cells, {self.n_tests} tests: |delta d| max "
                f"{self.max_abs_delta_d:.4f}, mean {self.mean_abs_delta_d:.5f}, q99 {self.q99_abs_delta_d:.4f}{floor}\n"
                f"edges: {self.edges_fp32} (float32) vs {self.edges_dtype} ({self.dtype}), {self.edges_flipped} flipped "
                f"({100 * self.frac_edges_flipped:.2f}%); source firing changed in {self.firing_changed} feature(s); "
                f"time float32 {self.seconds['float32']:.2f} s, {self.dtype} {self.seconds[self.dtype]:.2f} s")


def compare_accumulators(a32: Accumulators, alo: Accumulators, th) -> dict:
    """|delta d| over tests valid in both, and edges that flip (pure function of two traces of
    the same features and cells under thresholds ``th``)."""
    from .edges import build_tables, pair_statistics

    deltas = []
    for key in sorted(k for k in a32.pairs if k[0] == "real"):
        s32, slo = pair_statistics(a32.pairs[key], th.min_cells), pair_statistics(alo.pairs[key], th.min_cells)
        both = s32["valid"] & slo["valid"]
        deltas.append(np.abs(s32["d"][both] - slo["d"][both]))
    dd = np.concatenate(deltas) if deltas else np.zeros(0)
    cols = ["source_layer", "source_feature", "target_layer", "target_feature"]
    e32, _, null32 = build_tables(a32, th, "fp32")
    elo, _, _ = build_tables(alo, th, "low")
    sign32 = dict(zip(map(tuple, e32[cols].to_numpy().tolist()), np.sign(e32["cohens_d"].to_numpy())))
    signlo = dict(zip(map(tuple, elo[cols].to_numpy().tolist()), np.sign(elo["cohens_d"].to_numpy())))
    k32, klo = set(sign32), set(signlo)
    union = len(k32 | klo)
    flipped = len(k32 ^ klo) + sum(sign32[k] != signlo[k] for k in k32 & klo)  # lost, gained or sign changed
    floor = None
    if len(null32) and "abs_d_q95" in null32:
        vals = null32["abs_d_q95"].to_numpy(dtype=np.float64)
        floor = float(np.nanmax(vals)) if np.isfinite(vals).any() else None
    return {"n_tests": int(dd.size), "max_abs_delta_d": float(dd.max()) if dd.size else 0.0,
            "mean_abs_delta_d": float(dd.mean()) if dd.size else 0.0,
            "q99_abs_delta_d": float(np.quantile(dd, 0.99)) if dd.size else 0.0,
            "edges_fp32": len(k32), "edges_dtype": len(klo), "edges_flipped": int(flipped),
            "frac_edges_flipped": flipped / union if union else 0.0,
            "firing_changed": int(sum((a32.active[s] != alo.active[s]).sum() for s in a32.active)),
            "null_abs_d_q95": floor}


def dtype_agreement(run=None, *, model=None, data=None, saes=None, annotation=None,
                    config: TraceConfig | None = None, dtype: str = "bfloat16", n_cells: int = 32,
                    progress: bool = True, **options) -> DtypeAgreement:
    """Trace the first ``n_cells`` of the trace's cells in float32 and in ``dtype`` (same
    features, device, batching) and report how far Cohen's d moves and how many edges flip.

    Run this before a long bf16/fp16 trace: if |delta d| is small against the null-ablation
    noise floor and few edges flip, the low precision is safe for that model and data.
    Nothing is written.
    """
    from dataclasses import replace

    from ..models import load_model
    from .edges import Thresholds
    from .engine import AblationEngine

    cfg = config if config is not None else TraceConfig(**options)
    if dtype not in DTYPE_BYTES or dtype == "float32":
        raise ConfigError(f"dtype must be bfloat16 or float16 (compared against float32), got {dtype!r}")
    cfg32 = replace(cfg, dtype="float32", n_cells=min(n_cells, cfg.n_cells), shard="0/1")
    setup = prepare_trace(run, model=model, data=data, saes=saes, annotation=annotation,
                          out=None if run is not None else ".", config=cfg32, progress=progress)
    plan = setup.plan()
    idx = list(range(len(setup.cells)))
    accs, seconds = {}, {}
    for name in ("float32", dtype):
        adapter = setup.adapter if name == "float32" else load_model(setup.inputs.model, device=cfg.device, dtype=name)
        engine = AblationEngine(adapter, setup.saes, plan)
        t0 = time.perf_counter()
        accs[name] = engine.run_cells(setup.cells, idx)
        seconds[name] = time.perf_counter() - t0
    cmp = compare_accumulators(accs["float32"], accs[dtype], Thresholds.from_config(cfg32))
    return DtypeAgreement(dtype, len(idx), **cmp, seconds=seconds)
