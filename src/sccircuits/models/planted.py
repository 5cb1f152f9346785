"""Models with planted circuits: SAE feature edges whose existence, strength and sign are known.

Used by ``benchmarks/planted_circuits.py`` and the tests to measure what an edge criterion gets
right (docs/planted-circuits.md). Both architectures are built the same way from a random tiny
model (:func:`~sccircuits.models.testing.make_tiny_geneformer` / ``make_tiny_scgpt``), so the
layers up to the source layer ``s`` give varied, gene-dependent residuals:

* directions: an orthonormal set of mean-zero unit vectors (LayerNorm's centring leaves them
  alone): ``n_source_dict`` source directions and ``n_targets`` target directions;
* SAE at layer ``s``: one feature per source direction (encoder = decoder = the direction,
  centred on the clean residuals, encoder bias so that each feature fires at its top
  ``fire_fraction`` of positions, no TopK competition); the first ``n_traced`` are traced,
  the first ``n_planted`` of those are planted sources, the rest have no path to any target. Untraced features are the
  background the null draws its directions from;
* block ``s + 1``: attention output zeroed (the stream passes through), LayerNorms plain
  (weight 1, bias 0), and the FFN holds one ReLU unit per planted edge ``f -> g``: it reads the
  source direction and writes ``sign * strength`` times the target direction. Ablating ``f``
  silences the unit, so target ``g`` moves by about ``-sign * strength * z_f``;
* blocks after ``s + 1``: identities (attention and FFN zeroed, plain LayerNorms);
* SAE at layer ``t`` (the last block): one feature per target direction with a positive
  encoder bias (targets are usually active), k = all features (no TopK competition, which
  would couple targets outside the planted paths).

Nothing else connects sources to targets except *generic* effects that every perturbation has:
the post-LayerNorms rescale the whole stream when a component is removed, so every active
target shifts a little, consistently, under any ablation (the confound the published |d| rule
cannot tell from an edge).

*Generic units* (``generic_units`` > 0, default 0: none) add a generic channel that does not go
through LayerNorm (so it survives a tracer that freezes LayerNorm denominators). Block ``s + 1``'s
FFN gets, after the planted units, ``generic_units`` ReLU units drawn from their own generator
(``default_rng([seed, GENERIC_STREAM])``; the planted parts' draws are unchanged). Unit ``j``
reads a random dense mean-zero unit direction ``r_j`` (not a source or target direction, so every
source direction overlaps every ``r_j`` a little, about 1/sqrt(d_model): the *shared direction*
confound), with its ReLU knee at a random quantile in ``GENERIC_KNEE`` of its clean
pre-activations (active at part of the positions: its response to a perturbation mixes a linear
part, signed by the overlap, and a convex part that grows with the perturbation's size whatever
its direction). It writes ``sum_g w_jg * target direction g`` with ``w_jg = generic_gain *
N(0, 1) * sensitivity_g / sqrt(generic_units)``, ``sensitivity_g`` log-normal (log-sd
``GENERIC_SENSITIVITY_SIGMA``): some targets far more sensitive than others (the *popularity*
confound). The units' mean clean output is removed by the FFN output bias, as for the planted
units, so the stream entering block ``s + 1``'s output LayerNorm is unchanged on average. What it
models: dense, weak, nonlinear cross-talk between features through shared MLP neurons; every
traced source (and every untraced background feature the null ablates) has it, and none of it is
an edge: the truth holds the planted edges only. What it does not model: attention paths, or
structure in which sources share units (the overlaps are random).

Ground truth: :attr:`PlantedCircuit.truth`, one row per planted
edge with ``expected_sign`` = the sign of Cohen's d (ablating the source lowers the target,
d < 0, when the unit writes positively).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


UNIT_MARGIN = 0.5
"""Distance of a planted FFN unit's smallest clean pre-activation from zero."""

GENERIC_STREAM = 0x6E6E
"""Second seed word of the generic units' generator (``default_rng([seed, GENERIC_STREAM])``)."""
GENERIC_KNEE = (0.3, 0.7)
"""Range of the clean-position quantile at which a generic unit's ReLU knee sits (uniform)."""
GENERIC_GAIN = 1.0
"""Default scale of the generic units' writes (``make_planted(generic_gain=...)``)."""
GENERIC_SENSITIVITY_SIGMA = 1.0
"""Log-sd of the per-target sensitivity of the generic units' writes."""


@dataclass
class PlantedCircuit:
    """A planted model directory, its SAEs and data, and the true edges."""

    model: Path
    saes: Path
    data: Path
    source_layer: int
    target_layer: int
    traced: list[int]
    """Source features to trace (planted sources first)."""
    truth: pd.DataFrame
    """source_feature, target_feature, strength, expected_sign (of Cohen's d)."""
    gene_column: str | None
    """Tokenizer gene column for this architecture (scGPT reads symbols)."""
    generic: GenericUnits | None = None
    """The generic units of block ``source_layer + 1`` (None with ``generic_units=0``)."""

    def features_spec(self) -> str:
        """The ``--features`` string of the traced source features."""
        return f"{self.source_layer}:" + ",".join(str(f) for f in self.traced)


def _directions(d_model: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orthonormal unit vectors orthogonal to the all-ones vector, (n, d_model) float64."""
    if n > d_model - 1:
        raise ValueError(f"need d_model > {n} for {n} orthogonal mean-zero directions")
    a = rng.standard_normal((d_model, n))
    a -= a.mean(0, keepdims=True)
    q, _ = np.linalg.qr(a)
    q -= q.mean(0, keepdims=True)  # exact centring after QR round-off
    return (q / np.linalg.norm(q, axis=0, keepdims=True)).T


def _layer_names(kind: str, layer: int) -> dict[str, str]:
    """State-dict names of one block's parts (attention output, LayerNorms, FFN in/out)."""
    if kind == "geneformer":
        p = f"bert.encoder.layer.{layer}."
        return {"attn_w": p + "attention.output.dense.weight", "attn_b": p + "attention.output.dense.bias",
                "ln1_w": p + "attention.output.LayerNorm.weight", "ln1_b": p + "attention.output.LayerNorm.bias",
                "ff1_w": p + "intermediate.dense.weight", "ff1_b": p + "intermediate.dense.bias",
                "ff2_w": p + "output.dense.weight", "ff2_b": p + "output.dense.bias",
                "ln2_w": p + "output.LayerNorm.weight", "ln2_b": p + "output.LayerNorm.bias"}
    p = f"transformer_encoder.layers.{layer}."
    return {"attn_w": p + "self_attn.out_proj.weight", "attn_b": p + "self_attn.out_proj.bias",
            "ln1_w": p + "norm1.weight", "ln1_b": p + "norm1.bias", "ff1_w": p + "linear1.weight",
            "ff1_b": p + "linear1.bias", "ff2_w": p + "linear2.weight", "ff2_b": p + "linear2.bias",
            "ln2_w": p + "norm2.weight", "ln2_b": p + "norm2.bias"}


@dataclass
class GenericUnits:
    """The generic FFN units of block ``s + 1`` (module doc): unit ``j`` computes
    ``relu(x . read[j] + bias[j])`` of the LayerNorm'd stream ``x`` and writes ``write[j]``."""

    read: np.ndarray
    """(J, d_model) random dense mean-zero unit directions."""
    bias: np.ndarray
    """(J,) minus the ``knee[j]`` quantile of ``x . read[j]`` over the clean positions."""
    write: np.ndarray
    """(J, d_model) ``sum_g weights[j, g] * target direction g``."""
    weights: np.ndarray
    """(J, n_targets) per-unit, per-target write weights: ``generic_gain * N(0, 1) *
    sensitivity[g] / sqrt(J)``."""
    sensitivity: np.ndarray
    """(n_targets,) per-target scale of the weights, log-normal (some targets far more
    sensitive than others)."""
    mean_output: np.ndarray
    """(J,) each unit's mean clean activation (removed by the FFN output bias)."""


def _generic_units(n_units: int, gain: float, tgt_dirs: np.ndarray, x: np.ndarray, seed: int) -> GenericUnits:
    """Draw ``n_units`` generic units (module doc) for the LayerNorm'd clean stream ``x``
    (positions x d_model), from their own generator (the planted parts' draws are unchanged)."""
    rng = np.random.default_rng([seed, GENERIC_STREAM])
    d_model, n_targets = x.shape[1], len(tgt_dirs)
    read = rng.standard_normal((n_units, d_model))
    read -= read.mean(1, keepdims=True)
    read /= np.linalg.norm(read, axis=1, keepdims=True)
    knee = rng.uniform(*GENERIC_KNEE, n_units)
    sensitivity = np.exp(rng.normal(0.0, GENERIC_SENSITIVITY_SIGMA, n_targets))
    weights = gain * rng.standard_normal((n_units, n_targets)) * sensitivity / np.sqrt(n_units)
    proj = x @ read.T
    bias = -np.array([np.quantile(proj[:, j], knee[j]) for j in range(n_units)])
    mean_output = np.maximum(proj + bias, 0.0).mean(0)
    return GenericUnits(read, bias, weights @ tgt_dirs, weights, sensitivity, mean_output)


def _plant(state: dict, kind: str, n_layers: int, s: int, src_dirs: np.ndarray, tgt_dirs: np.ndarray,
           truth: pd.DataFrame, x_proj: np.ndarray, gain: float, generic: GenericUnits | None = None) -> None:
    """Rewrite the blocks after ``s`` in ``state`` (torch tensors, in place): see the module doc.

    ``x_proj``: projections of the LayerNorm'd clean residuals of layer ``s`` on the source
    directions (positions x n_source_dict): they set each unit's bias so that it never leaves its
    linear range, and the FFN output bias so that the units' mean output is removed (a unit
    changes the stream only by what an ablation takes away). ``generic``: units placed after the
    planted ones (their mean output removed the same way)."""
    import torch

    for layer in range(s + 1, n_layers):
        names = _layer_names(kind, layer)
        for key in ("attn_w", "attn_b", "ff1_w", "ff1_b", "ff2_w", "ff2_b", "ln1_b", "ln2_b"):
            state[names[key]] = torch.zeros_like(state[names[key]])
        for key in ("ln1_w", "ln2_w"):
            state[names[key]] = torch.ones_like(state[names[key]])
    names = _layer_names(kind, s + 1)
    w1, w2 = state[names["ff1_w"]].clone(), state[names["ff2_w"]].clone()
    n_generic = 0 if generic is None else len(generic.read)
    if len(truth) + n_generic > w1.shape[0]:
        raise ValueError(f"{len(truth)} planted edges and {n_generic} generic units need an FFN with as many "
                         f"units (has {w1.shape[0]})")
    b1 = state[names["ff1_b"]].clone()
    b2 = torch.zeros_like(state[names["ff2_b"]])
    for u, row in enumerate(truth.itertuples()):
        f = row.source_feature
        w1[u] = torch.as_tensor(gain * src_dirs[f], dtype=w1.dtype)
        b1[u] = float(-gain * x_proj[:, f].min() + UNIT_MARGIN)  # always in the linear range
        # ablating the source lowers the unit by gain * z_f: the target moves by -(writing sign) * strength * ...
        w2[:, u] = torch.as_tensor(-row.expected_sign * row.strength * tgt_dirs[row.target_feature], dtype=w2.dtype)
        b2 -= w2[:, u] * float(b1[u] + gain * x_proj[:, f].mean())  # remove the unit's mean output
    for j in range(n_generic):
        u = len(truth) + j
        w1[u] = torch.as_tensor(generic.read[j], dtype=w1.dtype)
        b1[u] = float(generic.bias[j])
        w2[:, u] = torch.as_tensor(generic.write[j], dtype=w2.dtype)
        b2 -= w2[:, u] * float(generic.mean_output[j])
    state[names["ff1_w"]], state[names["ff1_b"]], state[names["ff2_w"]], state[names["ff2_b"]] = w1, b1, w2, b2


def _clean_residuals(model_dir: Path, data: Path, layer: int, gene_column: str | None) -> np.ndarray:
    """Clean residuals of ``layer`` at every gene position of the cells in ``data`` (float64)."""
    import torch

    from ..data import read_cells
    from . import load_model

    adapter = load_model(model_dir)
    cells = adapter.tokenize(read_cells(data), **({"gene_column": gene_column} if gene_column else {}))
    out = []
    with torch.inference_mode():
        for i in range(0, len(cells), 16):
            batch = adapter.batch(cells, list(range(i, min(i + 16, len(cells)))))
            out.append(adapter.hidden_states(batch, [layer])[layer][batch.gene_mask].double().numpy())
    return np.concatenate(out)


def _sae(directions: np.ndarray, k: int, bias: np.ndarray | None = None, mean: np.ndarray | None = None):
    import torch

    from ..sae import TopKSAE

    d_sae, d_in = directions.shape
    sae = TopKSAE(d_in, d_sae, k, activation_mean=None if mean is None else torch.as_tensor(mean, dtype=torch.float32))
    with torch.no_grad():
        w = torch.as_tensor(directions, dtype=torch.float32)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        if bias is not None:
            sae.b_enc.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return sae.eval()


def make_planted(path, kind: str = "geneformer", *, n_cells: int = 80, n_genes: int = 80, d_model: int = 96,
                 n_layers: int = 4, source_layer: int = 1, n_source_dict: int = 48, n_traced: int = 24,
                 n_planted: int = 12, n_targets: int = 24, edges_per_source: int = 2, fire_fraction: float = 0.3,
                 gain: float = 4.0,
                 strengths: tuple[float, float] = (0.03, 1.0), generic_units: int = 0,
                 generic_gain: float = GENERIC_GAIN, seed: int = 0) -> PlantedCircuit:
    """Write a planted model (``kind``: geneformer or scgpt), its two SAEs (layers
    ``source_layer`` and ``n_layers - 1``) and ``n_cells`` synthetic cells under ``path``.

    ``n_planted`` traced source features get ``edges_per_source`` distinct targets each, with
    strengths log-uniform in ``strengths`` and signs balanced 50/50 (alternating over the
    strength order, so weak and strong edges have both signs). Deterministic for a seed.
    """
    import torch

    from ..sae import save_sae
    from . import testing

    if kind not in ("geneformer", "scgpt"):
        raise ValueError(f"kind must be geneformer or scgpt, got {kind!r}")
    if not 0 <= source_layer < n_layers - 1:
        raise ValueError("need a source layer with at least one block after it")
    if not n_planted <= n_traced <= n_source_dict or edges_per_source > n_targets:
        raise ValueError("need n_planted <= n_traced <= n_source_dict and edges_per_source <= n_targets")
    if generic_units < 0:
        raise ValueError(f"generic_units must be >= 0, got {generic_units}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dirs = _directions(d_model, n_source_dict + n_targets, rng)
    src_dirs, tgt_dirs = dirs[:n_source_dict], dirs[n_source_dict:]

    # truth: planted sources x distinct targets, strengths log-uniform, signs balanced
    rows = []
    for f in range(n_planted):
        for g in rng.choice(n_targets, size=edges_per_source, replace=False):
            rows.append({"source_feature": f, "target_feature": int(g)})
    truth = pd.DataFrame(rows)
    lo, hi = np.log(strengths[0]), np.log(strengths[1])
    truth["strength"] = np.round(np.exp(rng.uniform(lo, hi, len(truth))), 4)
    sign = np.empty(len(truth), np.int64)
    sign[np.argsort(truth["strength"].to_numpy(), kind="stable")] = np.resize([-1, 1], len(truth))
    truth["expected_sign"] = sign

    data = path / "cells.h5ad"
    if not data.is_file():
        testing.make_synthetic_adata(n_cells=n_cells, n_genes=n_genes, seed=seed).write_h5ad(data)
    model_dir = path / f"{kind}_model"
    gene_column = None if kind == "geneformer" else "gene_symbols"
    make = testing.make_tiny_geneformer if kind == "geneformer" else testing.make_tiny_scgpt
    make(model_dir, n_genes=n_genes, n_layers=n_layers, d_model=d_model, seed=seed)
    # clean residuals of the source layer (blocks <= s are not changed by planting)
    h = _clean_residuals(model_dir, data, source_layer, gene_column)
    x = (h - h.mean(1, keepdims=True)) / h.std(1, keepdims=True)  # what block s + 1's plain LayerNorm sees
    x_proj = x @ src_dirs.T
    generic = _generic_units(generic_units, generic_gain, tgt_dirs, x, seed) if generic_units else None
    if kind == "geneformer":
        from transformers import BertForMaskedLM

        model = BertForMaskedLM.from_pretrained(model_dir)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        _plant(state, kind, n_layers, source_layer, src_dirs, tgt_dirs, truth, x_proj, gain, generic)
        model.load_state_dict(state)
        model.save_pretrained(model_dir, safe_serialization=True)
    else:
        state = torch.load(model_dir / "best_model.pt", map_location="cpu", weights_only=True)
        _plant(state, kind, n_layers, source_layer, src_dirs, tgt_dirs, truth, x_proj, gain, generic)
        torch.save({k: v.contiguous() for k, v in state.items()}, model_dir / "best_model.pt")

    # source SAE: centred on the clean residuals, each feature firing at its top `fire_fraction` of positions
    mean = h.mean(0)
    proj = (h - mean) @ src_dirs.T
    bias = -np.quantile(proj, 1.0 - fire_fraction, axis=0)
    saes_dir = path / f"{kind}_saes"
    target_layer = n_layers - 1
    save_sae(_sae(src_dirs, n_source_dict, bias=bias, mean=mean), saes_dir / f"layer{source_layer:02d}")
    save_sae(_sae(tgt_dirs, n_targets, bias=rng.uniform(0.5, 1.5, n_targets)), saes_dir / f"layer{target_layer:02d}")
    truth.to_csv(path / f"{kind}_truth.csv", index=False)
    return PlantedCircuit(model_dir, saes_dir, data, source_layer, target_layer, list(range(n_traced)), truth,
                          gene_column, generic)


def score_edges(edges: pd.DataFrame, truth: pd.DataFrame, n_traced: int, n_targets: int,
                column: str, min_strength: float = 0.0) -> dict:
    """Precision, recall, actual FDR and sign accuracy of the edges marked by ``column``.

    ``edges``: an edge table (source_feature, target_feature, cohens_d, ``column``); ``truth``:
    :attr:`PlantedCircuit.truth`. Recall counts planted edges with strength >= ``min_strength``;
    sign accuracy is over true positives (sign of d == expected sign); the sign balance is the
    share of kept edges with d < 0.
    """
    kept = edges[edges[column].astype(bool)]
    key = lambda df: set(zip(df["source_feature"].astype(int), df["target_feature"].astype(int)))  # noqa: E731
    true_all = key(truth)
    strong = key(truth[truth["strength"] >= min_strength])
    found = key(kept)
    tp = found & true_all
    sign_of = dict(zip(zip(truth["source_feature"], truth["target_feature"]), truth["expected_sign"]))
    kd = kept.set_index(["source_feature", "target_feature"])["cohens_d"]
    right = sum(int(np.sign(kd.loc[k]) == sign_of[k]) for k in tp)
    n = len(found)
    return {"kept": n, "true_positives": len(tp), "false_positives": n - len(tp),
            "precision": len(tp) / n if n else np.nan, "actual_fdr": (n - len(tp)) / n if n else 0.0,
            "recall": len(tp & strong) / len(strong) if strong else np.nan,
            "recall_all": len(tp) / len(true_all) if true_all else np.nan,
            "sign_accuracy": right / len(tp) if tp else np.nan,
            "share_d_negative": float((kept["cohens_d"] < 0).mean()) if n else np.nan,
            "n_tests": n_traced * n_targets}


CALIBRATION_SETTINGS = tuple((fdr, floor) for floor in (0.05, 0.02, 0.01, 0.0) for fdr in (0.05, 0.1, 0.2, 0.5))
"""(BH level, magnitude floor) pairs of the calibration sweep: the default (0.05, 0.05) and
looser settings where false edges do pass, so estimated and actual FDR can be compared above 0."""


def calibration(acc, truth: pd.DataFrame, base, settings=CALIBRATION_SETTINGS, min_strength: float = 0.1,
                model: str = "planted") -> pd.DataFrame:
    """Estimated vs actual FDR of the null criterion at each (``fdr``, ``min_rel_change``) of
    ``settings`` (other thresholds from ``base``, a :class:`~sccircuits.trace.Thresholds`), from
    a finished trace's statistics ``acc`` (no forward pass).

    Per setting: :func:`score_edges` of the kept edges, the estimated FDR
    (:func:`~sccircuits.trace.edges.estimated_fdr`: the larger of its empirical and model parts,
    both also given), the expected number of false passes the empirical part implies
    (``expected_false``), and where the actual false edges come from: ``fp_no_path`` (sources with no planted
    edge, i.e. exactly what the null draws imitate) and ``fp_off_target`` (a planted source and
    a target it has no planted edge to: effects the source has only because its planted units
    change the stream, e.g. through LayerNorm), and ``expected_false_no_path``, the estimate's
    share for the no-path sources' tests (expected false passes x their share of the tests), to
    compare with ``fp_no_path``."""
    from dataclasses import replace

    from ..trace.edges import build_tables, estimated_fdr

    planted = set(truth["source_feature"].astype(int))
    s = min(acc.features)
    n_traced, n_targets = len(acc.features[s]), next(iter(acc.target_sizes.values()))
    true = set(zip(truth["source_feature"].astype(int), truth["target_feature"].astype(int)))
    rows = []
    for fdr, floor in settings:
        th = replace(base, fdr=fdr, min_rel_change=floor)
        e, _, null = build_tables(acc, th, model)
        sc = score_edges(e, truth, n_traced, n_targets, "passes_null", min_strength)
        kept = e[e["passes_null"]]
        false = [(f, g) for f, g in zip(kept["source_feature"].astype(int), kept["target_feature"].astype(int))
                 if (f, g) not in true]
        fdrs = estimated_fdr(null)
        est = fdrs["null"]
        expected = float(null["expected_false_null"].sum())
        rows.append({"fdr": fdr, "min_rel_change": floor, **sc, "estimated_fdr": est, "estimated_fdr_empirical": fdrs["null_empirical"],
                     "estimated_fdr_model": fdrs["null_model"], "expected_false": expected,
                     "expected_false_no_path": expected * (n_traced - len(planted)) / n_traced,
                     "fp_no_path": sum(f not in planted for f, _ in false),
                     "fp_off_target": sum(f in planted for f, _ in false),
                     "ratio": (est / sc["actual_fdr"]) if est is not None and sc["actual_fdr"] > 0 else np.nan})
    return pd.DataFrame(rows)
