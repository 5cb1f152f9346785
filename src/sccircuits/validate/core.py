"""Validation of gene-level predictions against a CRISPRi Perturb-seq screen (docs/method.md §7).

Steps (:func:`validate`):

1. Predictions: :func:`~sccircuits.validate.predictions.predict_genes` over the runs (or a
   prediction table given directly).
2. Screen: per (cell line, knockdown) mean CP10k expression (:mod:`.perturb`, row chunks).
3. Per cell line: log2 fold change of every knockdown mean vs the control mean,
   ``log2((mean_kd + pc) / (mean_ctrl + pc))`` with pseudocount ``pc`` (default 0.1 in CP10k
   units, i.e. about one count in 100,000 per cell on average), for knockdowns with at least
   ``min_cells`` cells (and a control group with at least ``min_cells``); optional efficacy
   filter: the knocked-down gene's own mean must drop by ``min_knockdown`` (LFC <=
   log2(1 - min_knockdown)); knockdowns whose own gene is not measured then fail the filter.
4. Metrics per cell line (and pooled over lines when there are several), for all pairs and
   for the consensus / novel subsets when the predictions carry those flags:
   directional accuracy (sign(mean d) == sign(LFC), pairs with |LFC| >= ``min_abs_lfc``; see
   :mod:`.metrics` for why the predicted sign of LFC is sign(d)), sign-bias baseline, excess,
   the within-knockdown and within-target permutation baselines (what target identity adds
   beyond each knockdown's overall direction, and beyond each target's usual direction) with
   permutation p, two-way (knockdown x target) bootstrap CIs, Spearman(|mean d|, |LFC|), and
   per knocked-down gene a one-sided Fisher test of responsive genes (|LFC| >
   ``responsive_lfc``) among its predicted targets against the background, stratified by the
   genes' control expression (``expression_bins`` quantile bins), with BH over genes.
   ``naive_binomial_p_vs_half`` and ``naive_spearman_p`` treat every pair as independent (they
   are not: pairs share knockdowns and targets) and are kept only for comparison with the paper.

``compat="reference"`` follows the published script (bio-sae-circuits
``src/15_phase6_predictions_and_validation.py``): no per-cell normalisation and LFC =
log2(mean_kd + 1) - log2(mean_ctrl + 1) (L362-397), knockdowns with >= 5 cells (L386), the
published prediction rules (:mod:`.predictions`), and the per-knockdown Fisher test counted
the published way: only knockdowns with >= 3 predicted targets are tested (L513) and one is
enriched at uncorrected p < 0.05 (L546); the median odds ratio is over finite sample odds
ratios (L547-548). Those counts go in ``n_knockdowns_tested`` / ``n_knockdowns_enriched``.

Outputs in ``OUT/validation/`` (``OUT`` = the run, or ``out``): predictions.parquet,
knockdowns.parquet, pairs.parquet, enrichment.parquet, summary.parquet, summary.json; manifest
stage ``validate``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..errors import InputError
from ..rundir import RunDir
from . import metrics
from .perturb import Screen, open_screen, pseudobulk
from .config import PredictConfig, ValidateConfig  # noqa: F401  (re-exported)
from .predictions import predict_genes

POOLED = "(pooled)"


@dataclasses.dataclass
class ValidationResult:
    """Tables of one validation (also written to ``out_dir``)."""

    summary: pd.DataFrame
    pairs: pd.DataFrame
    knockdowns: pd.DataFrame
    enrichment: pd.DataFrame
    predictions: pd.DataFrame
    out_dir: Path | None = None


# ---------------------------------------------------------------------------------------------
# fold changes


def fold_changes(screen: Screen, pred: pd.DataFrame, cfg: ValidateConfig, progress: bool = True):
    """Pseudo-bulk the screen -> (lfc per line, knockdowns table, genes, background, n empty cells,
    control means per line).

    ``lfc`` maps cell line -> (knockdown symbols, LFC matrix knockdowns x genes) for the
    knockdowns that pass min_cells (and the efficacy filter when on); ``control`` maps the same
    lines to the control cells' mean normalised expression of every gene.
    """
    symbols = screen.symbols
    first = ~pd.Index(symbols).duplicated(keep="first")  # duplicated symbols: first column wins
    sym_index = pd.Index(symbols[first])
    sources = pd.Index(pd.unique(pred["source"].astype(str)))
    kd = sources[sources.isin(screen.targets) & (sources != cfg.control_label)]
    if kd.empty:
        raise InputError(screen.path, f"no overlap between predicted genes and the screen: none of the "
                                      f"{len(sources)} predicted source genes is a knockdown in "
                                      f"obs['{cfg.target_column}'] (e.g. predicted: {_few(sources)}; "
                                      f"screen: {_few(screen.targets)})")
    tgt_measured = pd.Index(pd.unique(pred["target"].astype(str))).intersection(sym_index)
    if tgt_measured.empty:
        raise InputError(screen.path, "no overlap between predicted genes and the screen: no predicted "
                                      f"target gene is measured in var (e.g. predicted: "
                                      f"{_few(pd.unique(pred['target']))}; var: {_few(symbols[:20])})")
    cols_all = np.flatnonzero(first)
    if cfg.background == "screen":
        cols = cols_all
    else:
        keep = sym_index.isin(tgt_measured) | sym_index.isin(kd)
        cols = cols_all[keep]
    pb = pseudobulk(screen, kd, cols, chunk_size=cfg.chunk_size, scale=cfg.scale,
                    normalize=cfg.normalize, progress=progress)
    genes = pd.Index(pb.genes)
    background = genes.isin(tgt_measured) if cfg.background == "predicted" else np.ones(len(genes), bool)
    rows, lfc, control = [], {}, {}
    max_self = np.log2(1.0 - cfg.min_knockdown)
    for line in screen.lines:
        g = pb.groups[pb.groups["cell_line"] == line]
        ctrl = g[g["target"] == cfg.control_label]
        n_ctrl = int(ctrl["n_cells"].iloc[0]) if len(ctrl) else 0
        kds = g[g["target"] != cfg.control_label]
        if kds.empty:
            continue
        ok_ctrl = n_ctrl >= cfg.min_cells
        mat = (metrics.log2_fold_change(pb.means[kds.index], pb.means[ctrl.index[0]][None, :], cfg.pseudocount)
               if n_ctrl else np.full((len(kds), len(genes)), np.nan))
        own = genes.get_indexer(kds["target"])
        self_lfc = np.where(own >= 0, mat[np.arange(len(kds)), np.maximum(own, 0)], np.nan)
        enough = (kds["n_cells"].to_numpy() >= cfg.min_cells) & ok_ctrl
        effective = np.nan_to_num(self_lfc, nan=np.inf) <= max_self
        used = enough & (effective if cfg.efficacy_filter else True)
        reason = np.where(~ok_ctrl, f"control has {n_ctrl} < {cfg.min_cells} cells",
                          np.where(~enough, "too few cells",
                                   np.where(used, "", "knockdown not effective")))
        rows.append(pd.DataFrame({"cell_line": line, "knockdown": kds["target"].to_numpy(),
                                  "n_cells": kds["n_cells"].to_numpy(), "n_control_cells": n_ctrl,
                                  "self_lfc": self_lfc, "effective": effective, "used": used,
                                  "excluded_because": reason}))
        if used.any():
            lfc[line] = (kds["target"].to_numpy()[used], mat[used])
            control[line] = pb.means[ctrl.index[0]]
    knockdowns = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if not lfc:
        raise InputError(screen.path, f"no knockdown of a predicted gene passes the filters in any cell line "
                                      f"(min cells {cfg.min_cells}"
                                      f"{', efficacy filter on' if cfg.efficacy_filter else ''})")
    return lfc, knockdowns, genes, background, pb.n_empty_cells, control


def _few(labels, n: int = 5) -> str:
    labels = [str(x) for x in labels]
    return ", ".join(labels[:n]) + (", ..." if len(labels) > n else "")


# ---------------------------------------------------------------------------------------------
# metrics per cell line and subset


def pair_table(pred: pd.DataFrame, lfc: dict, genes: pd.Index) -> pd.DataFrame:
    """Predicted pairs joined with their observed LFC per cell line (pairs measurable there)."""
    keep = [c for c in ("source", "target", "n_edges", "weighted_abs_d", "mean_d", "max_abs_d",
                        "consensus", "novel") if c in pred.columns]
    parts = []
    for line, (kds, mat) in lfc.items():
        r = pd.Index(kds).get_indexer(pred["source"].astype(str))
        c = genes.get_indexer(pred["target"].astype(str))
        ok = (r >= 0) & (c >= 0)
        part = pred.loc[ok, keep].copy()
        part.insert(0, "cell_line", line)
        part["lfc"] = mat[r[ok], c[ok]]
        parts.append(part)
    pairs = pd.concat(parts, ignore_index=True)
    pairs["predicted_sign"] = np.sign(pairs["mean_d"]).astype(np.int8)
    pairs["observed_sign"] = np.sign(pairs["lfc"]).astype(np.int8)
    return pairs


def expression_strata(control_mean, universe: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin (0..n_bins-1) of each gene's control expression among the ``universe`` genes
    (tied expression, e.g. zeros, shares a bin; genes outside the universe get bin 0)."""
    from scipy.stats import rankdata

    x = np.asarray(control_mean, dtype=np.float64)
    bins = np.zeros(x.size, dtype=np.int64)
    u = np.flatnonzero(universe)
    if u.size:
        ranks = rankdata(x[u], method="average")  # 1..n
        bins[u] = np.minimum(((ranks - 0.5) / u.size * n_bins).astype(np.int64), n_bins - 1)
    return bins


def stratified_fisher(predicted: np.ndarray, responsive: np.ndarray, universe: np.ndarray, strata: np.ndarray):
    """Per row: 2x2 totals (a, b, c, d), Mantel-Haenszel odds ratio and the exact one-sided
    p of predicted x responsive genes stratified by ``strata`` (one bin per gene)."""
    onehot = np.zeros((strata.size, strata.max() + 1 if strata.size else 1))
    onehot[np.arange(strata.size), strata] = 1.0
    p = predicted & universe
    r = responsive & universe
    a = (p & r) @ onehot
    n = p @ onehot
    k = r @ onehot
    N = universe @ onehot
    b, c = n - a, k - a
    d = N - a - b - c
    pv = stats.stratified_hypergeom_sf(a, n, k, N)
    return a.sum(1), b.sum(1), c.sum(1), d.sum(1), stats.mantel_haenszel_odds_ratio(a, b, c, d), pv


def enrichment_table(pairs: pd.DataFrame, lfc: dict, genes: pd.Index, background: np.ndarray,
                     cfg: ValidateConfig, control: dict | None = None) -> pd.DataFrame:
    """Per (cell line, knockdown): Fisher test of responsive genes among its predicted targets.

    With ``control`` (cell line -> control mean expression per gene) and ``cfg.expression_bins``
    > 1, the test is stratified by the genes' control expression (``p_value``, Mantel-Haenszel
    ``odds_ratio``): predicted targets tend to be well-expressed genes, and how often a gene is
    responsive depends on its expression, so an unstratified test finds enrichment from
    expression alone (``p_value_unstratified`` keeps that test for comparison).
    """
    out = []
    for line, (kds, mat) in lfc.items():
        p = pairs[pairs["cell_line"] == line]
        predicted = np.zeros(mat.shape, dtype=bool)
        predicted[pd.Index(kds).get_indexer(p["source"]), genes.get_indexer(p["target"])] = True
        responsive = np.abs(mat) > cfg.responsive_lfc
        universe = np.broadcast_to(background, mat.shape).copy()
        own = genes.get_indexer(pd.Index(kds))
        universe[np.flatnonzero(own >= 0), own[own >= 0]] = False  # a knockdown's own gene is not a target
        a, b, c, d = metrics.fisher_tables(predicted, responsive, universe)
        has = (a + b) > 0
        pv = np.where(has, stats.hypergeom_sf(a, a + b, a + c, a + b + c + d), np.nan)
        odds = stats.odds_ratio(a, b, c, d)
        pv_plain = pv
        if control is not None and cfg.expression_bins > 1:
            strata = expression_strata(control[line], background, cfg.expression_bins)
            *_, odds, pv = stratified_fisher(predicted, responsive, universe, strata)
        out.append(pd.DataFrame({"cell_line": line, "knockdown": kds, "n_predicted": a + b,
                                 "n_predicted_responsive": a, "n_other_responsive": c, "n_other": c + d,
                                 "odds_ratio": odds, "p_value": pv, "p_value_unstratified": pv_plain})[has])
    enr = pd.concat(out, ignore_index=True)
    enr["q_value"] = np.nan
    for line in enr["cell_line"].unique():
        m = enr["cell_line"] == line
        enr.loc[m, "q_value"] = stats.bh_fdr(enr.loc[m, "p_value"].to_numpy())
    return enr


def summarise(pairs: pd.DataFrame, enr: pd.DataFrame, subset: str, line: str, cfg: ValidateConfig) -> dict:
    """One summary row: accuracy vs the sign-bias, within-knockdown and within-target baselines
    with two-way bootstrap CIs, Spearman, Fisher counts (naive p-values labelled as such)."""
    scored = pairs[(pairs["lfc"].abs() >= cfg.min_abs_lfc) & (pairs["mean_d"] != 0)]
    acc = metrics.accuracy_with_nulls(scored["mean_d"], scored["lfc"], scored["source"], scored["target"],
                                      scored["cell_line"], n_perm=cfg.n_perm, n_boot=cfg.n_boot, seed=cfg.seed)
    rho, rho_p = metrics.spearman(scored["mean_d"].abs(), scored["lfc"].abs())
    n_correct = int(round(acc.get("accuracy", 0) * acc["n_pairs"])) if acc["n_pairs"] else 0
    perm = {f"{w}_{k}": acc[f"{w}_{k}"] for w in ("within_knockdown", "within_target") for k in ("baseline", "excess", "p")}
    return {"subset": subset, "cell_line": line, "n_pairs_measured": int(len(pairs)),
            **{k: acc[k] for k in ("n_pairs", "n_clusters", "n_targets")},
            "accuracy": acc["accuracy"], "accuracy_ci_low": acc["accuracy_ci_low"],
            "accuracy_ci_high": acc["accuracy_ci_high"], "p_pred_positive": acc["p_pred"],
            "p_obs_positive": acc["p_obs"], "baseline": acc["baseline"],
            "baseline_ci_low": acc["baseline_ci_low"], "baseline_ci_high": acc["baseline_ci_high"],
            "excess": acc["excess"], "excess_ci_low": acc["excess_ci_low"], "excess_ci_high": acc["excess_ci_high"],
            **perm, "within_knockdown_excess_ci_low": acc["within_knockdown_excess_ci_low"],
            "within_knockdown_excess_ci_high": acc["within_knockdown_excess_ci_high"],
            "naive_binomial_p_vs_half": metrics.binomial_p_half(n_correct, acc["n_pairs"]),
            "spearman_abs_d_abs_lfc": rho, "naive_spearman_p": rho_p,
            **knockdown_enrichment_counts(enr, cfg)}


def knockdown_enrichment_counts(enr: pd.DataFrame, cfg: ValidateConfig) -> dict:
    """Knockdowns tested / enriched: BH q < fdr over every knockdown with a predicted target, or
    with compat the published rule (>= 3 predicted targets, uncorrected p < 0.05, L513 and L546)
    plus the published median of the finite sample odds ratios (L547-548)."""
    if cfg.compat != "reference":
        return {"n_knockdowns_tested": int(len(enr)), "n_knockdowns_enriched": int((enr["q_value"] < cfg.fdr).sum())}
    t = enr[enr["n_predicted"] >= 3]
    a = t["n_predicted_responsive"].to_numpy(np.float64)
    b = t["n_predicted"].to_numpy(np.float64) - a
    c = t["n_other_responsive"].to_numpy(np.float64)
    d = t["n_other"].to_numpy(np.float64) - c
    with np.errstate(divide="ignore", invalid="ignore"):
        sample_or = np.round((a * d) / (b * c), 4)  # published rounds each OR (L540)
    finite = sample_or[np.isfinite(sample_or)]
    return {"n_knockdowns_tested": int(len(t)), "n_knockdowns_enriched": int((t["p_value"] < 0.05).sum()),
            "median_odds_ratio": float(np.median(finite)) if finite.size else 0.0}


def subsets(pred: pd.DataFrame) -> list[str]:
    """'all', plus 'consensus' / 'novel' when the predictions carry those flags."""
    return ["all"] + [s for s in ("consensus", "novel") if s in pred.columns]


# ---------------------------------------------------------------------------------------------
# the stage


def validate(runs, perturbations_path: str | os.PathLike, cfg: ValidateConfig | None = None,
             predictions: pd.DataFrame | None = None, out: str | os.PathLike | None = None,
             progress: bool = True) -> ValidationResult:
    """Validate the gene-level predictions of ``runs`` against a CRISPRi screen (module docstring).

    ``runs``: one run directory or a list. ``predictions``: use this table instead of
    predicting from the runs. ``out``: output directory (a run-like directory whose manifest
    gets the ``validate`` stage); default: the single run. Returns a :class:`ValidationResult`.
    """
    cfg = cfg or ValidateConfig()
    runs = [] if runs is None else ([runs] if isinstance(runs, (str, os.PathLike)) else list(runs))
    if out is None:
        if len(runs) != 1:
            raise InputError(None, "give an output directory (--out) unless validating exactly one run")
        out = runs[0]
    perturbations_path = Path(perturbations_path)
    if not perturbations_path.is_file():
        raise InputError(perturbations_path, "file not found")
    pred = predict_genes(runs, cfg.predict, progress=progress) if predictions is None else predictions
    missing = [c for c in ("source", "target", "mean_d") if c not in pred.columns]
    if missing:
        raise InputError(None, f"the prediction table lacks column(s) {', '.join(missing)}")
    if pred.empty:
        raise InputError(None, "no gene-pair predictions (no edges, or none pass min_edges / min_max_abs_d)")
    screen = open_screen(perturbations_path, cfg.target_column, cfg.control_label,
                         cfg.cell_line_column, cfg.gene_column)
    rd = RunDir(out)
    with rd.hold("validate"):  # a failure marks the stage failed and frees the run lock
        rd.begin_stage("validate", cfg, runs=[str(r) for r in runs], perturbations=str(perturbations_path))
        lfc, knockdowns, genes, background, n_empty, control = fold_changes(screen, pred, cfg, progress=progress)
        pairs = pair_table(pred, lfc, genes)
        lines = list(lfc) + ([POOLED] if len(lfc) > 1 else [])
        rows, enr_all = [], []
        for subset in subsets(pred):
            sub = pairs if subset == "all" else pairs[pairs[subset].astype(bool)]
            enr = enrichment_table(sub, lfc, genes, background, cfg, control) if len(sub) else pd.DataFrame(
                columns=["cell_line", "knockdown", "p_value", "q_value"])
            enr.insert(0, "subset", subset)
            enr_all.append(enr)
            for line in lines:
                p = sub if line == POOLED else sub[sub["cell_line"] == line]
                e = enr if line == POOLED else enr[enr["cell_line"] == line]
                rows.append(summarise(p, e, subset, line, cfg))
        summary = pd.DataFrame(rows)
        result = ValidationResult(summary, pairs, knockdowns, pd.concat(enr_all, ignore_index=True), pred,
                                  rd / "validation")
        outputs = _write(result)
        main = summary[summary["subset"] == "all"].astype(object).where(summary.notna(), None).to_dict(orient="records")
        rd.complete_stage("validate", outputs=outputs, metrics={"summary": main, "n_empty_cells": n_empty})
        return result


def _write(res: ValidationResult) -> list[str]:
    """Write every table atomically; returns paths relative to the run."""
    from .. import artifacts

    records = res.summary.astype(object).where(res.summary.notna(), None).to_dict(orient="records")
    return artifacts.write_validation(res.out_dir, {
        "predictions": res.predictions, "knockdowns": res.knockdowns, "pairs": res.pairs,
        "enrichment": res.enrichment, "summary": res.summary}, records)  # NaN -> null (valid JSON)


def summary_table(summary: pd.DataFrame):
    """A rich Table of the summary (for the terminal); the full numbers are in summary.parquet."""
    from rich.table import Table

    t = Table(title="CRISPRi validation: directional accuracy vs sign-bias and within-knockdown baselines "
                    "[95% two-way bootstrap CI, knockdowns x targets]", title_justify="left")
    for c in ("subset", "cell line", "pairs", "KD genes", "accuracy", "baseline", "excess", "within-KD excess",
              "within-KD p", "within-target p", "rho |d|,|LFC|", "enriched KD (q<fdr)"):
        t.add_column(c, justify="left" if c in ("subset", "cell line") else "right")

    def fmt(r, k, ci=True):
        if not np.isfinite(r[k]):
            return "-"
        return f"{r[k]:.3f} [{r[k + '_ci_low']:.2f}, {r[k + '_ci_high']:.2f}]" if ci else f"{r[k]:.3f}"

    for _, r in summary.iterrows():
        rho = f"{r['spearman_abs_d_abs_lfc']:.3f}" if np.isfinite(r["spearman_abs_d_abs_lfc"]) else "-"
        t.add_row(r["subset"], str(r["cell_line"]), str(r["n_pairs"]), str(r["n_clusters"]), fmt(r, "accuracy"),
                  fmt(r, "baseline", ci=False), fmt(r, "excess"), fmt(r, "within_knockdown_excess"),
                  fmt(r, "within_knockdown_p", ci=False), fmt(r, "within_target_p", ci=False), rho,
                  f"{r['n_knockdowns_enriched']}/{r['n_knockdowns_tested']}")
    return t
