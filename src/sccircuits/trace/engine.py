"""The exact, batched ablation engine.

What it computes is the published per-cell observation (docs/method.md §5): for source layer
``s`` and source feature ``f`` of a cell, ``delta = -z_f * W_dec[f]`` is added to the clean
residual of layer ``s`` at the gene positions where ``f`` fires, the model continues, and for
each downstream layer ``t`` the observation is the mean over those positions of
``SAE_t.encode(ablated) - SAE_t.encode(clean)`` (a vector over all features of ``t``).

How it computes it, without changing the result:

* one clean pass per batch of ``clean_batch_size`` cells gives the hidden states of every
  needed layer;
* each source layer continues from its own cached state (``adapter.run_from``), so layers
  ``<= s`` are never recomputed;
* every (cell, active feature) pair of a batch becomes one row of a batched forward: the
  cell's row is replicated per feature, ``batch_size`` rows per forward (bounded memory);
  cells in a batch have similar length (sorted by length inside a block);
* each target layer is encoded as soon as its block has run, only at the averaged positions,
  and the last block a source needs computes its queries, attention output and MLP only there
  (keys and values at every position: :func:`~sccircuits.models.base.run_post_ln_block`);
* codes stay sparse (the k kept latents per position): a row's observation is the float64
  segment sum (``index_add_``) of its ablated codes minus the segment sum of the clean codes,
  computed once per (cell, feature or null draw); no dense (positions x d_sae) code is built;
* null rows take exactly this path too; only their perturbation differs (:meth:`_null_deltas`).

"Fires" means z > 0 by default. With ``support_active`` (``--compat reference``) it means "in
the SAE's top-k support", as in the published tracer, even where the ReLU'd value is 0: such a
position adds nothing to the ablation but counts as active (the cell is observed, the position
enters the mean), and a cell whose only active positions have z = 0 gets an exact zero
observation (the published ablated pass equals its clean pass there).

Optionally a *null* runs beside the real ablations: per source layer, ``K`` null
pseudo-sources (``K <= null_budget * F``), whose statistics give every target its own null
(docs/planted-circuits.md). Null ``k`` runs where its *template* feature fires, with the
template's per-position norm ``z * ||W_dec[template]||`` (:meth:`AblationEngine._null_deltas`):

* ``null_directions="feature"`` (default): the templates are untraced features of matched firing
  frequency (:func:`sccircuits.trace.null_draws.matched_null_features`, passed in as
  ``null_features``), each ablated along its own decoder row, exactly like a real source;
* ``"mixed"``: the templates are traced features (:func:`null_templates`) and each position
  removes the decoder direction of another feature active there (traced features avoided),
  chosen by a per-(seed, layer, draw, cell) random ranking.

Either way the draws depend only on the seed and the features, never on batching or sharding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import TokenBatch, TokenizedCells
from .accumulators import Accumulators, PairStats
from .config import NULL_DIRECTIONS


@dataclass
class TracePlan:
    """What to trace: source features per source layer and the downstream layers of each."""

    features: dict[int, np.ndarray]
    targets: dict[int, list[int]]
    null: bool = True
    null_seed: int = 0
    batch_size: int = 16
    """Ablated rows per forward pass."""
    encode_chunk: int = 8192
    clean_batch_size: int | None = None
    """Cells per clean forward pass (default: ``batch_size``)."""
    support_active: bool = False
    null_draws: int = 16
    null_budget: float = 0.5
    null_features: dict[int, np.ndarray] | None = None
    """Source layer -> template feature id of each null draw (default: :func:`null_templates`
    of ``features``); a layer may have none (e.g. a Ray task holding other features' nulls)."""
    traced: dict[int, np.ndarray] | None = None
    """Source layer -> features a null direction avoids (default: ``features``)."""
    freeze_layernorm: bool = False
    """Ablated passes divide by the clean pass's LayerNorm denominators (per block, per
    position) instead of their own: the observation is then the change carried by attention and
    MLPs, without the whole-stream rescaling every LayerNorm adds (docs/method.md §5)."""
    null_directions: str = "mixed"
    """``mixed``: a draw runs at its template's positions along another active, untraced
    feature's direction chosen per position; ``feature``: a draw ablates its template exactly as
    a real source (own positions, own decoder row), the templates being untraced features."""

    def __post_init__(self) -> None:
        if self.null_directions not in NULL_DIRECTIONS:
            raise ValueError(f"null_directions must be one of {', '.join(NULL_DIRECTIONS)}, got {self.null_directions!r}")
        if self.null and self.null_directions == "feature" and self.null_features is None:
            raise ValueError("null_directions 'feature' needs null_features (untraced features to ablate: "
                             "sccircuits.trace.null_draws.matched_null_features)")
        if self.null_features is None:
            self.null_features = (null_templates(self.features, self.null_draws, self.null_budget, self.null_seed)
                                  if self.null else {s: np.zeros(0, np.int64) for s in self.features})
        if self.traced is None:
            self.traced = dict(self.features)

    def layers_needed(self) -> list[int]:
        return sorted(set(self.features) | {t for ts in self.targets.values() for t in ts})

    def kinds(self) -> tuple[str, ...]:
        return ("real", "null") if self.null else ("real",)


def null_templates(features: dict[int, np.ndarray], draws: int, budget: float, seed: int) -> dict[int, np.ndarray]:
    """Template feature of each null draw per source layer: ``min(draws, floor(budget * F))``
    distinct traced features (at least one), drawn with a generator seeded by (seed, layer).

    A null draw ablates wherever its template fires, so the null adds about ``K / F`` of the
    real ablations: the budget bounds the expected cost (docs/planted-circuits.md)."""
    out = {}
    for s, feats in sorted(features.items()):
        feats = np.asarray(feats, np.int64)
        k = min(int(draws), max(1, int(np.floor(budget * len(feats))))) if len(feats) else 0
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(s), 1]))
        out[s] = np.sort(rng.choice(feats, size=k, replace=False)) if k else np.zeros(0, np.int64)
    return out


def null_scores(seed: int, layer: int, draw: int, cell: int, d_sae: int) -> np.ndarray:
    """Random ranking (float64, (d_sae,)) of the SAE features for null draw ``draw`` in one
    cell; depends only on (seed, layer, draw, cell), so batching and sharding cannot change it."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(layer), int(draw), int(cell), 2])).random(d_sae)


def null_choice_chunk(encode_chunk: int) -> int:
    """Positions per step of the null-direction choice (its dense (positions, d_sae) float64
    ranking is the largest temporary of a null draw: 1/16 of an encode chunk keeps it below
    an encode's own pre-activations)."""
    return max(1, int(encode_chunk) // 16)


def _sub_batch(batch: TokenBatch, rows: torch.Tensor, length: int) -> TokenBatch:
    """Rows ``rows`` of a padded batch, truncated to ``length`` positions (right padding)."""
    cut = lambda x: None if x is None else x[rows, :length]  # noqa: E731
    return TokenBatch(cut(batch.input_ids), cut(batch.attention_mask), cut(batch.gene_mask),
                      batch.cell_index[rows], cut(batch.values))


class _SparseCodes:
    """Clean SAE codes of one layer at selected positions, kept sparse: per position the k
    kept latents (``index``, int64) and their ReLU'd values (``values``, float32), (P, k)."""

    def __init__(self, values: torch.Tensor, index: torch.Tensor, d: int):
        self.values, self.index, self.d = values, index, d

    def segment_sums(self, rows: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
        """(n_seg, d) float64: per segment, the sum of the codes of the positions ``rows``
        (indices into this code table) that belong to it (``seg``, sorted)."""
        out = torch.zeros(n_seg * self.d, dtype=torch.float64, device=self.values.device)
        _add_codes(out, self.values[rows], self.index[rows], seg, self.d)
        return out.view(n_seg, self.d)


def _add_codes(out: torch.Tensor, values: torch.Tensor, index: torch.Tensor, seg: torch.Tensor, d: int) -> None:
    """Segment sums of sparse codes into the flat float64 ``out`` (n_seg * d):
    ``out[seg[i] * d + index[i, j]] += values[i, j]``, added in the order of ``i`` (a serial,
    deterministic ``index_add_``), so equal inputs give bit-equal sums and a latent that is
    never kept sums to exactly 0. Costs O(P k), not O(P d_sae)."""
    out.index_add_(0, (seg[:, None] * d + index).reshape(-1), values.reshape(-1).to(torch.float64))


class AblationEngine:
    """Runs the ablations of a plan on batches of cells; see the module docstring."""

    def __init__(self, adapter, saes: dict, plan: TracePlan):
        self.adapter = adapter
        self.plan = plan
        self.device = torch.device(adapter.device)
        self.saes = {l: saes[l].to(device=self.device, dtype=torch.float32).eval() for l in plan.layers_needed()}
        self.target_sizes = {t: int(self.saes[t].d_sae) for ts in plan.targets.values() for t in ts}
        self.dirs: dict[int, torch.Tensor] = {}
        self.norms: dict[int, torch.Tensor] = {}
        self.nulls: dict[int, dict] = {}
        with torch.no_grad():
            for s, feats in plan.features.items():
                w_dec = self.saes[s].W_dec.detach().to(torch.float32)
                w = w_dec[torch.as_tensor(feats, dtype=torch.long, device=w_dec.device)]
                self.dirs[s] = w
                self.norms[s] = torch.linalg.vector_norm(w, dim=1)
                if plan.null and len(plan.null_features.get(s, ())):
                    self.nulls[s] = self._null_setup(s, w_dec)

    def _null_setup(self, s: int, w_dec: torch.Tensor) -> dict:
        """Unit decoder rows, traced-feature mask and template norms of layer ``s``'s null."""
        dev = w_dec.device
        templates = torch.as_tensor(self.plan.null_features[s], dtype=torch.long, device=dev)
        traced = torch.zeros(w_dec.shape[0], dtype=torch.bool, device=dev)
        traced[torch.as_tensor(self.plan.traced[s], dtype=torch.long, device=dev)] = True
        norms = torch.linalg.vector_norm(w_dec, dim=1)
        return {"templates": templates, "unit": w_dec / norms.clamp_min(1e-12)[:, None], "traced": traced,
                "norms": norms[templates]}

    def n_null(self, s: int) -> int:
        return len(self.nulls[s]["templates"]) if s in self.nulls else 0

    def empty(self) -> Accumulators:
        nulls = {s: np.asarray(self.plan.null_features.get(s, ()), np.int64) if s in self.nulls else np.zeros(0, np.int64)
                 for s in self.plan.features} if self.plan.null else None
        return Accumulators.empty(self.plan.features, self.plan.targets, self.target_sizes, self.plan.kinds(), nulls)

    # -- encoding helpers -----------------------------------------------------------------
    def _encode_topk(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse codes of ``x`` (P, d) at ``layer``: (values (P, k) float32 ReLU'd, index (P, k)),
        ``encode_chunk`` positions at a time (bounded memory; no dense (P, d_sae) code)."""
        sae, chunk = self.saes[layer], self.plan.encode_chunk
        parts = [sae.encode_topk(x[i:i + chunk].to(torch.float32)) for i in range(0, len(x), chunk)]
        if not parts:
            k = int(sae.k)
            return x.new_zeros((0, k), dtype=torch.float32), torch.zeros((0, k), dtype=torch.long, device=x.device)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _encode_columns(self, layer: int, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Activations (P, len(cols)) float32 of the latents ``cols`` at ``x`` (P, d)."""
        values, index = self._encode_topk(layer, x)
        return ((index[:, :, None] == cols[None, None, :]) * values[:, :, None]).sum(1)

    def _encode_sums(self, layer: int, x: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
        """(n_seg, d_sae) float64 segment sums of the codes of ``x`` (P, d) (segments ``seg``, sorted),
        encoded ``encode_chunk`` positions at a time and added in position order."""
        sae, chunk = self.saes[layer], self.plan.encode_chunk
        d = int(sae.d_sae)
        out = torch.zeros(n_seg * d, dtype=torch.float64, device=x.device)
        for i in range(0, len(x), chunk):
            values, index = sae.encode_topk(x[i:i + chunk].to(torch.float32))
            _add_codes(out, values, index, seg[i:i + chunk], d)
        return out.view(n_seg, d)

    def _support_columns(self, layer: int, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(n, len(cols)) bool: is each column in the top-k support of the SAE code of x."""
        _, index = self._encode_topk(layer, x)
        return (index[:, :, None] == cols[None, None, :]).any(1)

    # -- one block of cells ---------------------------------------------------------------
    @torch.inference_mode()
    def run_cells(self, cells: TokenizedCells, idx: list[int], progress=None) -> Accumulators:
        """Statistics of the cells ``idx`` (positions in ``cells``), folded batch by batch in a
        fixed order (cells sorted by length, then by position), independent of anything else."""
        acc = self.empty()
        idx = np.asarray(idx, dtype=np.int64)
        lengths = cells.lengths()[idx]
        order = idx[np.argsort(-lengths, kind="stable")]
        bs = self.plan.clean_batch_size or self.plan.batch_size
        for start in range(0, len(order), bs):
            batch_idx = [int(i) for i in order[start:start + bs]]
            self._run_batch(cells, batch_idx, acc)
            if progress is not None:
                progress.update(len(batch_idx))
        return acc

    def _run_batch(self, cells: TokenizedCells, batch_idx: list[int], acc: Accumulators) -> None:
        plan, dev = self.plan, self.device
        batch = self.adapter.batch(cells, batch_idx).to(dev)
        denoms = {} if plan.freeze_layernorm else None  # clean LayerNorm denominators, {block: (B, L, 2)}
        clean = self.adapter.hidden_states(batch, plan.layers_needed(), ln_record=denoms)
        acc.counters["cells"] = acc.counters.get("cells", 0) + len(batch_idx)
        acc.counters["clean_forward_passes"] = acc.counters.get("clean_forward_passes", 0) + 1
        gm = batch.gene_mask.to(dev)
        B, L = gm.shape

        # source codes of the traced features (then the null templates) at gene positions: (B, L, F_s + K_s),
        # and where they fire
        zsel, fires = {}, {}
        for s, feats in plan.features.items():
            cols = torch.as_tensor(feats, dtype=torch.long, device=dev)
            if s in self.nulls:
                cols = torch.cat([cols, self.nulls[s]["templates"]])
            z = torch.zeros(B, L, len(cols), dtype=torch.float32, device=dev)
            z[gm] = self._encode_columns(s, clean[s][gm], cols)
            zsel[s] = z
            if plan.support_active:
                fires[s] = torch.zeros(B, L, len(cols), dtype=torch.bool, device=dev)
                fires[s][gm] = self._support_columns(s, clean[s][gm], cols)
            else:
                fires[s] = z > 0
            acc.active[s] += fires[s][..., :len(feats)].any(1).sum(0).cpu().numpy().astype(np.int64)

        # clean downstream codes, once per cell, only where some traced source feature fires
        codes, pos_index = {}, {}
        for t in sorted(self.target_sizes):
            need = torch.zeros(B, L, dtype=torch.bool, device=dev)
            for s, ts in plan.targets.items():
                if t in ts:
                    need |= fires[s].any(-1)
            index = torch.full((B, L), -1, dtype=torch.long, device=dev)
            index[need] = torch.arange(int(need.sum()), device=dev)
            codes[t] = _SparseCodes(*self._encode_topk(t, clean[t][need]), self.target_sizes[t])
            pos_index[t] = index

        for s in sorted(plan.features):
            self._ablate_layer(s, batch, clean[s], zsel[s], fires[s], codes, pos_index, acc, denoms)

    def _null_deltas(self, s: int, batch: TokenBatch, h_s: torch.Tensor, rows: torch.Tensor, draws: torch.Tensor,
                     zf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Null perturbations of jobs (``rows``, ``draws``) at their template's positions.

        With ``null_directions="feature"`` the template's own decoder row (an untraced feature
        ablated like a real source). Otherwise (``mixed``), at each position where the template
        fires (activation ``zf``), the direction is the unit decoder row of the highest-ranked
        (:func:`null_scores`) feature that is active there and not traced (else active, else any
        feature), never the template itself, scaled to the template's ablation norm
        ``zf * ||W_dec[template]||``. Returns (job, position, delta).
        """
        null = self.nulls[s]
        job, pos = torch.nonzero(zf > 0, as_tuple=True)
        if self.plan.null_directions == "feature":  # the template's own decoder row, as a real ablation
            own = null["templates"][draws[job]]
            return job, pos, null["unit"][own] * (zf[job, pos] * null["norms"][draws[job]])[:, None]
        d_sae = int(self.saes[s].d_sae)
        cells = batch.cell_index[rows.cpu()].numpy()
        scores = torch.from_numpy(np.stack([null_scores(self.plan.null_seed, s, int(k), int(c), d_sae)
                                            for k, c in zip(draws.cpu().numpy(), cells)])).to(zf.device)
        pick = torch.empty(len(job), dtype=torch.long, device=zf.device)
        step = null_choice_chunk(self.plan.encode_chunk)  # positions at a time: bounded (positions x d_sae) temporaries
        for i in range(0, len(job), step):
            jb = job[i:i + step]
            z = self.saes[s].encode(h_s[rows[jb], pos[i:i + step]].to(torch.float32))  # full codes at those positions
            active = z > 0
            rank = scores[jb] + 2.0 * (active & ~null["traced"]) + 1.0 * active
            rank[torch.arange(len(jb), device=z.device), null["templates"][draws[jb]]] = -1.0
            pick[i:i + step] = rank.argmax(1)
        delta = null["unit"][pick] * (zf[job, pos] * null["norms"][draws[job]])[:, None]
        return job, pos, delta

    def _ablate_layer(self, s: int, batch: TokenBatch, h_s: torch.Tensor, zs: torch.Tensor, fs: torch.Tensor,
                      codes: dict, pos_index: dict, acc: Accumulators, denoms: dict | None = None) -> None:
        plan = self.plan
        F, K = len(plan.features[s]), self.n_null(s)
        fired = fs.any(1)  # (B, F + K)
        rows, slots = torch.nonzero(fired[:, :F], as_tuple=True)  # real jobs in (row, slot) order
        n_rows, draws = torch.nonzero(fired[:, F:], as_tuple=True)  # null jobs in (row, draw) order
        n_jobs, n_null = len(rows), len(n_rows)
        acc.counters["ablations"] = acc.counters.get("ablations", 0) + n_jobs
        if plan.null:
            acc.counters["null_ablations"] = acc.counters.get("null_ablations", 0) + n_null
        bs = plan.batch_size
        # what a null-free trace would run: the real jobs alone, in chunks of batch_size
        acc.counters["null_free_ablation_forward_passes"] = (acc.counters.get("null_free_ablation_forward_passes", 0)
                                                            + -(-n_jobs // bs))
        if n_jobs + n_null == 0:
            return
        # one flat job list: real jobs then null jobs (same fast path), in chunks of batch_size rows
        is_null = torch.cat([torch.zeros(n_jobs, dtype=torch.bool), torch.ones(n_null, dtype=torch.bool)])
        all_rows = torch.cat([rows, n_rows])
        all_cols = torch.cat([slots, F + draws])
        sizes_of = torch.cat([self.norms[s], self.nulls[s]["norms"]]) if K else self.norms[s]
        # per job, the sum of the clean codes over its averaged positions: once per (cell, feature or draw)
        job_of, pos = torch.nonzero(fs[all_rows, :, all_cols], as_tuple=True)
        clean_sums = {t: codes[t].segment_sums(pos_index[t][all_rows[job_of], pos], job_of, len(all_rows))
                      for t in plan.targets[s]}
        kinds = plan.kinds()
        obs: dict[tuple[str, int], list] = {(k, t): [] for k in kinds for t in plan.targets[s]}
        lengths = batch.attention_mask.sum(1)
        for c in range(0, len(all_rows), bs):
            j = torch.arange(c, min(c + bs, len(all_rows)), device=h_s.device)
            r = all_rows[c:c + bs].to(h_s.device)
            col = all_cols[c:c + bs].to(h_s.device)
            nl = is_null[c:c + bs].to(h_s.device)
            Lc = int(lengths[r].max())
            zf = zs[r, :Lc, col]  # (J, Lc) activation of each job's feature (or template) at each position
            direction = self.dirs[s][col.clamp(max=F - 1)] * (~nl)[:, None]
            delta = zf[..., None] * direction[:, None, :]
            if bool(nl.any()):
                jn, p, dn = self._null_deltas(s, batch, h_s, r[nl], col[nl] - F, zf[nl])
                delta[torch.nonzero(nl, as_tuple=True)[0][jn], p] = dn
            hidden = h_s[:, :Lc].index_select(0, r).to(torch.float32)  # a fresh (J, Lc, d) copy
            hidden = hidden.sub_(delta).to(h_s.dtype)
            del delta
            fired_pos = fs[r, :Lc, col]  # (J, Lc) the positions averaged for each job
            frozen = None if denoms is None else {l: denoms[l].index_select(0, r)[:, :Lc]
                                                  for l in range(s + 1, max(plan.targets[s]) + 1)}
            sums = self._ablated_sums(s, hidden, _sub_batch(batch, r, Lc), fired_pos, frozen)
            acc.counters["ablation_forward_passes"] = acc.counters.get("ablation_forward_passes", 0) + 1
            acc.counters["ablated_sequences"] = acc.counters.get("ablated_sequences", 0) + len(r)
            counts = fired_pos.sum(1).to(torch.float64)[:, None]
            unchanged = (~(zf != 0).any(1)).cpu().numpy()  # support-only jobs: nothing ablated, exact zero observation
            # perturbation size of each job: mean over its positions of the ablation norm
            size = (zf.sum(1).to(torch.float64) / counts[:, 0] * sizes_of[col].to(torch.float64)).cpu().numpy()
            nl_np, col_np = nl.cpu().numpy(), col.cpu().numpy()
            for t in plan.targets[s]:
                clean = clean_sums[t][j]
                mean = ((sums[t] - clean) / counts).cpu().numpy()
                clean = (clean / counts).cpu().numpy()
                mean[unchanged] = 0.0
                for kind, m in (("real", ~nl_np), ("null", nl_np)):
                    if kind in kinds and m.any():
                        slot = col_np[m] - (F if kind == "null" else 0)
                        obs[(kind, t)].append((slot, mean[m], clean[m], size[m]))
        for (kind, t), parts in obs.items():
            if not parts:
                continue
            slot, mean, clean, size = (np.concatenate([p[i] for p in parts]) for i in range(4))
            stats = PairStats.from_observations(slot, mean, F if kind == "real" else K, clean, size)
            acc.pairs[(kind, s, t)] = acc.pairs[(kind, s, t)].merge(stats)

    def _ablated_sums(self, s: int, hidden: torch.Tensor, batch: TokenBatch, fired: torch.Tensor,
                      ln_denoms: dict | None = None) -> dict[int, torch.Tensor]:
        """The hot loop. ``hidden`` (J, Lc, d): perturbed output of layer ``s`` for J rows;
        ``fired`` (J, Lc) bool: the positions averaged for each row. Returns, per target layer
        ``t``, the (J, d_sae) float64 sums over each row's fired positions of the SAE codes of
        the continued forward pass. Each block runs once from ``s``; every target layer is encoded
        as soon as it is computed (only at fired positions), and the last target block computes
        its queries, attention output and MLP only at the fired positions. ``ln_denoms``
        ({block: (J, Lc, 2)}): frozen LayerNorm denominators (:attr:`TracePlan.freeze_layernorm`)."""
        J = fired.shape[0]
        job_of, pos = torch.nonzero(fired, as_tuple=True)
        n_fired = fired.sum(1)
        width = int(n_fired.max())
        valid = torch.arange(width, device=fired.device)[None, :] < n_fired[:, None]  # (J, width)
        queries = torch.zeros(J, width, dtype=torch.long, device=fired.device)
        queries[valid] = pos
        # rows of the flattened (J * Lc, d) states, and of the (J * width, d) last-block output
        at_full = job_of * fired.shape[1] + pos
        at_last = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
        targets = sorted(self.plan.targets[s])
        out, x, prev = {}, hidden, s
        for t in targets:
            last = t == targets[-1]
            h = self.adapter.run_from(prev, x, batch, until=t, layers=[t], queries=queries if last else None,
                                      ln_denoms=ln_denoms)[t]
            at = h.reshape(-1, h.shape[-1]).index_select(0, at_last if last else at_full)
            out[t] = self._encode_sums(t, at, job_of, J)
            x, prev = h, t
        return out
