"""Which features the null ablation draws (docs/planted-circuits.md, "The null ablation").

Two designs (``TraceConfig.null_directions``):

* ``feature`` (default): each null draw is an **untraced feature ablated exactly like a real
  source** (its own positions, its own activation, its own decoder row), chosen so that its
  firing frequency matches the frequency of one traced *template* feature. The null is then a
  sample of what ablating *some other feature of the same layer, as often active* does to each
  target: its spread between draws includes the direction- and position-specific side effects
  (LayerNorm rescaling, shared downstream units) that differ from feature to feature, exactly
  like the spread between traced features that have no edge.
* ``mixed`` (the first design, kept for comparison): a draw runs at a traced template's
  positions with the template's norm, along a *different* active untraced decoder direction at
  every position (:func:`sccircuits.trace.engine.null_templates`). Averaging over many
  directions makes its draws nearly identical to each other, so its spread underestimates the
  spread between real no-edge sources (measured on the planted benchmark: the estimated FDR was
  3-28% where the actual was 93%).

Everything here depends only on (features, frequencies, seed, layer): the draws are fixed before
any cell is traced, so batching, blocks, shards and Ray tasks give the same null.
"""

from __future__ import annotations

import numpy as np

from .engine import null_templates


def matched_null_features(features: dict[int, np.ndarray], freq: dict[int, np.ndarray], draws: int, budget: float,
                          seed: int) -> dict[int, np.ndarray]:
    """Per source layer, the untraced features the null draws ablate (``feature`` design).

    Templates are :func:`null_templates` (``min(draws, floor(budget * F))`` distinct traced
    features, seeded by (seed, layer)); for each template in turn, the untraced feature with
    firing frequency ``freq[s]`` nearest to the template's (on a log scale; ties broken by a
    random order seeded by (seed, layer)) that no earlier template took. Features that never
    fire are never drawn; a layer with fewer candidates than templates gets fewer draws.
    The expected cost of the null stays about ``K / F`` of the real ablations because each
    draw fires about as often as its template."""
    templates = null_templates(features, draws, budget, seed)
    out = {}
    for s, feats in sorted(features.items()):
        f = np.asarray(freq[s], np.float64)
        pool = np.setdiff1d(np.flatnonzero(f > 0), np.asarray(feats, np.int64))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(s), 3]))
        tie = rng.random(len(pool))
        logf = np.log(f[pool]) if len(pool) else np.zeros(0)
        free = np.ones(len(pool), bool)
        chosen = []
        for t in templates[s]:
            if not free.any():
                break
            ft = np.log(max(f[int(t)], 1.0 / 1e9))
            order = np.lexsort((tie, np.abs(logf - ft)))
            pick = order[free[order]][0]
            free[pick] = False
            chosen.append(int(pool[pick]))
        out[s] = np.asarray(chosen, np.int64)
    return out
