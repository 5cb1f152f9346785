"""The exact, batched ablation engine.

What it computes is the published per-cell observation (docs/method.md §5): for source layer
``s`` and source feature ``f`` of a cell, ``delta = -z_f * W_dec[f]`` is added to the clean
residual of layer ``s`` at the gene positions where ``f`` fires, the model continues, and for
each downstream layer ``t`` the observation is the mean over those positions of
``SAE_t.encode(ablated) - SAE_t.encode(clean)`` (a vector over all features of ``t``).

How it computes it, without changing the result:

* one clean pass per batch of cells gives the hidden states of every needed layer;
* each source layer continues from its own cached state (``adapter.run_from``), so layers
  ``<= s`` are never recomputed;
* every (cell, active feature) pair of a batch becomes one row of a batched forward: the
  cell's row is replicated per feature, ``batch_size`` rows per forward (bounded memory);
  cells in a batch have similar length (sorted by length inside a block);
* clean downstream states are encoded once per cell, only at positions where some traced
  feature fires, and kept sparse (the k nonzeros of a TopK code);
* ablated states are encoded only at the positions that are averaged; per-row means are
  scatter-adds (no Python loop over positions).

"Fires" means z > 0 by default. With ``support_active`` (``--compat reference``) it means "in
the SAE's top-k support", as in the published tracer, even where the ReLU'd value is 0: such a
position adds nothing to the ablation but counts as active (the cell is observed, the position
enters the mean), and a cell whose only active positions have z = 0 gets an exact zero
observation (the published ablated pass equals its clean pass there).

Optionally each ablation has a *null* twin: the same per-position norm in a random direction
(fixed per source feature, seeded), whose statistics give the noise floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import TokenBatch, TokenizedCells
from .accumulators import Accumulators, PairStats


@dataclass
class TracePlan:
    """What to trace: source features per source layer and the downstream layers of each."""

    features: dict[int, np.ndarray]
    targets: dict[int, list[int]]
    null: bool = True
    null_seed: int = 0
    batch_size: int = 16
    encode_chunk: int = 8192
    support_active: bool = False

    def layers_needed(self) -> list[int]:
        return sorted(set(self.features) | {t for ts in self.targets.values() for t in ts})

    def kinds(self) -> tuple[str, ...]:
        return ("real", "null") if self.null else ("real",)


def null_direction(seed: int, layer: int, feature: int, d: int) -> np.ndarray:
    """Unit random direction (float64, (d,)) for the null ablation of one source feature;
    depends only on (seed, layer, feature), so any batching or sharding gives the same one."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(layer), int(feature)]))
    u = rng.standard_normal(d)
    return u / np.linalg.norm(u)


def _sub_batch(batch: TokenBatch, rows: torch.Tensor, length: int) -> TokenBatch:
    """Rows ``rows`` of a padded batch, truncated to ``length`` positions (right padding)."""
    cut = lambda x: None if x is None else x[rows, :length]  # noqa: E731
    return TokenBatch(cut(batch.input_ids), cut(batch.attention_mask), cut(batch.gene_mask),
                      batch.cell_index[rows], cut(batch.values))


class _SparseCodes:
    """Clean SAE codes of one layer at selected positions, stored as the nonzeros per row."""

    def __init__(self, z: torch.Tensor):
        width = int((z != 0).sum(1).max().item()) if z.numel() else 0
        width = max(width, 1)
        self.values, self.index = torch.topk(z.abs(), width, dim=1)
        self.values = torch.gather(z, 1, self.index)
        self.d = z.shape[1]

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(rows), self.d, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_(1, self.index[rows], self.values[rows])


class AblationEngine:
    """Runs the ablations of a plan on batches of cells; see the module docstring."""

    def __init__(self, adapter, saes: dict, plan: TracePlan):
        self.adapter = adapter
        self.plan = plan
        self.device = torch.device(adapter.device)
        self.saes = {l: saes[l].to(device=self.device, dtype=torch.float32).eval() for l in plan.layers_needed()}
        self.target_sizes = {t: int(self.saes[t].d_sae) for ts in plan.targets.values() for t in ts}
        self.dirs: dict[int, torch.Tensor] = {}
        self.null_dirs: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for s, feats in plan.features.items():
                w_dec = self.saes[s].W_dec.detach().to(torch.float32)
                w = w_dec[torch.as_tensor(feats, dtype=torch.long, device=w_dec.device)]
                self.dirs[s] = w
                if plan.null:
                    d = w.shape[1]
                    u = np.stack([null_direction(plan.null_seed, s, f, d) for f in feats]) if len(feats) else np.zeros((0, d))
                    norms = torch.linalg.vector_norm(w.double(), dim=1, keepdim=True)
                    self.null_dirs[s] = (torch.from_numpy(u).to(w.device) * norms).to(torch.float32)

    def empty(self) -> Accumulators:
        return Accumulators.empty(self.plan.features, self.plan.targets, self.target_sizes, self.plan.kinds())

    # -- encoding helpers -----------------------------------------------------------------
    def _encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        sae, chunk = self.saes[layer], self.plan.encode_chunk
        x = x.to(torch.float32)
        if len(x) <= chunk:
            return sae.encode(x)
        return torch.cat([sae.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)])

    def _encode_columns(self, layer: int, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        chunk = self.plan.encode_chunk
        parts = [self._encode(layer, x[i:i + chunk])[:, cols] for i in range(0, len(x), chunk)]
        return torch.cat(parts) if parts else x.new_zeros((0, len(cols)), dtype=torch.float32)

    def _support_columns(self, layer: int, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(n, len(cols)) bool: is each column in the top-k support of the SAE code of x."""
        sae, chunk = self.saes[layer], self.plan.encode_chunk
        parts = []
        for i in range(0, len(x), chunk):
            _, idx = sae.encode_topk(x[i:i + chunk].to(torch.float32))
            support = torch.zeros(len(idx), int(sae.d_sae), dtype=torch.bool, device=idx.device)
            parts.append(support.scatter_(1, idx, True)[:, cols])
        return torch.cat(parts) if parts else torch.zeros(0, len(cols), dtype=torch.bool, device=x.device)

    # -- one block of cells ---------------------------------------------------------------
    @torch.inference_mode()
    def run_cells(self, cells: TokenizedCells, idx: list[int], progress=None) -> Accumulators:
        """Statistics of the cells ``idx`` (positions in ``cells``), folded batch by batch in a
        fixed order (cells sorted by length, then by position), independent of anything else."""
        acc = self.empty()
        idx = np.asarray(idx, dtype=np.int64)
        lengths = cells.lengths()[idx]
        order = idx[np.argsort(-lengths, kind="stable")]
        bs = self.plan.batch_size
        for start in range(0, len(order), bs):
            batch_idx = [int(i) for i in order[start:start + bs]]
            self._run_batch(cells, batch_idx, acc)
            if progress is not None:
                progress.update(len(batch_idx))
        return acc

    def _run_batch(self, cells: TokenizedCells, batch_idx: list[int], acc: Accumulators) -> None:
        plan, dev = self.plan, self.device
        batch = self.adapter.batch(cells, batch_idx).to(dev)
        clean = self.adapter.hidden_states(batch, plan.layers_needed())
        acc.counters["cells"] = acc.counters.get("cells", 0) + len(batch_idx)
        acc.counters["clean_forward_passes"] = acc.counters.get("clean_forward_passes", 0) + 1
        gm = batch.gene_mask.to(dev)
        B, L = gm.shape

        # source codes of the traced features at gene positions: (B, L, F_s), and where they fire
        zsel, fires = {}, {}
        for s, feats in plan.features.items():
            cols = torch.as_tensor(feats, dtype=torch.long, device=dev)
            z = torch.zeros(B, L, len(feats), dtype=torch.float32, device=dev)
            z[gm] = self._encode_columns(s, clean[s][gm], cols)
            zsel[s] = z
            if plan.support_active:
                fires[s] = torch.zeros(B, L, len(feats), dtype=torch.bool, device=dev)
                fires[s][gm] = self._support_columns(s, clean[s][gm], cols)
            else:
                fires[s] = z > 0
            acc.active[s] += fires[s].any(1).sum(0).cpu().numpy().astype(np.int64)

        # clean downstream codes, once per cell, only where some traced source feature fires
        codes, pos_index = {}, {}
        for t in sorted(self.target_sizes):
            need = torch.zeros(B, L, dtype=torch.bool, device=dev)
            for s, ts in plan.targets.items():
                if t in ts:
                    need |= fires[s].any(-1)
            index = torch.full((B, L), -1, dtype=torch.long, device=dev)
            index[need] = torch.arange(int(need.sum()), device=dev)
            codes[t] = _SparseCodes(self._encode(t, clean[t][need]))
            pos_index[t] = index

        for s in sorted(plan.features):
            self._ablate_layer(s, batch, clean[s], zsel[s], fires[s], codes, pos_index, acc)

    def _ablate_layer(self, s: int, batch: TokenBatch, h_s: torch.Tensor, zs: torch.Tensor, fs: torch.Tensor,
                      codes: dict, pos_index: dict, acc: Accumulators) -> None:
        plan = self.plan
        rows, slots = torch.nonzero(fs.any(1), as_tuple=True)  # jobs in (row, slot) order
        kinds = plan.kinds()
        jobs = [(kind, rows, slots) for kind in kinds]
        n_jobs = len(rows)
        acc.counters["ablations"] = acc.counters.get("ablations", 0) + n_jobs
        if plan.null:
            acc.counters["null_ablations"] = acc.counters.get("null_ablations", 0) + n_jobs
        if n_jobs == 0:
            return
        # one flat job list: real jobs then null jobs, in chunks of batch_size rows
        kind_of = torch.cat([torch.full((n_jobs,), i, dtype=torch.long) for i in range(len(kinds))])
        all_rows = torch.cat([r for _, r, _ in jobs])
        all_slots = torch.cat([sl for _, _, sl in jobs])
        obs: dict[tuple[str, int], list] = {(k, t): [] for k in kinds for t in plan.targets[s]}
        lengths = batch.attention_mask.sum(1)
        for c in range(0, len(all_rows), plan.batch_size):
            r = all_rows[c:c + plan.batch_size].to(h_s.device)
            sl = all_slots[c:c + plan.batch_size].to(h_s.device)
            kd = kind_of[c:c + plan.batch_size]
            Lc = int(lengths[r].max())
            zf = zs[r, :Lc, sl]  # (J, Lc) activation of each job's feature at each position
            direction = self.dirs[s][sl]
            if plan.null:
                is_null = (kd == 1).to(h_s.device)[:, None]
                direction = torch.where(is_null, self.null_dirs[s][sl], direction)
            hidden = (h_s[r, :Lc].to(torch.float32) - zf[..., None] * direction[:, None, :]).to(h_s.dtype)
            out = self.adapter.run_from(s, hidden, _sub_batch(batch, r, Lc), until=max(plan.targets[s]),
                                       layers=plan.targets[s])
            acc.counters["ablation_forward_passes"] = acc.counters.get("ablation_forward_passes", 0) + 1
            acc.counters["ablated_sequences"] = acc.counters.get("ablated_sequences", 0) + len(r)
            fired = fs[r, :Lc, sl]
            job_of, pos = torch.nonzero(fired, as_tuple=True)
            counts = fired.sum(1).to(torch.float64)
            unchanged = ~(zf != 0).any(1)  # support-only jobs: nothing ablated, exact zero observation
            for t in plan.targets[s]:
                sums = self._mean_diff_sums(t, out[t][job_of, pos], pos_index[t][r[job_of], pos], job_of,
                                            codes[t], len(r))
                mean = sums / counts[:, None]
                mean[unchanged.to(mean.device)] = 0.0
                for ki, kind in enumerate(kinds):
                    m = (kd == ki).to(mean.device)
                    if bool(m.any()):
                        obs[(kind, t)].append((sl[m].cpu().numpy(), mean[m].cpu().numpy()))
        F = len(plan.features[s])
        for (kind, t), parts in obs.items():
            if not parts:
                continue
            stats = PairStats.from_observations(np.concatenate([p[0] for p in parts]),
                                                np.concatenate([p[1] for p in parts]), F)
            acc.pairs[(kind, s, t)] = acc.pairs[(kind, s, t)].merge(stats)

    def _mean_diff_sums(self, t: int, h_abl: torch.Tensor, clean_rows: torch.Tensor, job_of: torch.Tensor,
                        codes: _SparseCodes, n_rows: int) -> torch.Tensor:
        """Per job, the sum over its fired positions of encode(ablated) - encode(clean), float64."""
        sums = torch.zeros(n_rows, codes.d, dtype=torch.float64, device=h_abl.device)
        chunk = self.plan.encode_chunk
        rows = torch.arange(n_rows, device=h_abl.device)
        for i in range(0, len(h_abl), chunk):
            za = self._encode(t, h_abl[i:i + chunk])
            diff = (za - codes.dense(clean_rows[i:i + chunk])).to(torch.float64)
            # segment sums as a (jobs x positions) one-hot product: much faster than index_add_
            onehot = (job_of[i:i + chunk][None, :] == rows[:, None]).to(torch.float64)
            sums += onehot @ diff
        return sums
