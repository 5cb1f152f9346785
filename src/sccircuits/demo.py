"""The one-command demo: the whole pipeline on the bundled blood cells with both demo models.

``run_demo(out)`` does, for each shipped demo model (Geneformer- and scGPT-architecture,
trained by sccircuits on the 719 bundled immune cells x 8,455 genes): extract -> train-sae ->
annotate (shipped GO BP, Hallmark, Reactome and WikiPathways sets) -> trace -> analyze ->
celltypes (per-cell-type activity of every feature, Kruskal test); then compares the two
models (cross-model consensus), validates against a Perturb-seq screen when one is given, and
writes ``OUT/report.html``. Each stage is skipped when the run already holds a completed stage
with the same options, so rerunning is cheap. ``data='pbmc'`` runs on the small 765-gene PBMC
set instead (fast tests).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import check, option, parse_layers
from .rundir import RunDir


#: bundled data set -> (obs column of its cell-type labels, cells the cell-type test uses). On the
#: blood cells only the PBMC3k batch is tested: its labels come from its clusters' markers, and
#: the CellTypist batch is mostly monocytes, so a batch effect would pass as a cell-type effect.
DEMO_DATA = {"blood": ("cell_type", "source=pbmc3k"), "pbmc": ("bulk_labels", "")}


@dataclass
class DemoConfig:
    """Options of ``sccircuits demo``."""

    models: str = option("geneformer,scgpt", "demo models to run (comma-separated: geneformer, scgpt)")
    data: str = option("blood", "bundled cells: 'blood' (719 immune cells x 8,455 genes) or 'pbmc' "
                                "(700 PBMCs x 765 genes, for quick tests)")
    n_cells: int | None = option(None, "cells used for activations and SAEs (default: all)")
    trace_cells: int = option(120, "cells traced per model")
    n_features: int = option(8, "source features per source layer (chosen by annotation richness)")
    source_layers: str = option("first,middle", "source layers: 'first,middle' or explicit, e.g. '0,2'")
    sae_epochs: int = option(5, "SAE training epochs")
    sae_expansion: int = option(2, "SAE expansion factor (2 on the d_model-64 demo models: fewer, broader "
                                   "features are more often gene-set labelled there; with k 4, expansion 4 "
                                   "labelled 10-28% of features per layer, expansion 2 16-39%, docs/demo-models.md)")
    sae_k: int = option(4, "SAE TopK (4 on the d_model-64 demo models: sparser features are more gene-set "
                            "coherent there; k 32 labelled 6-12% of features per layer, k 4 10-28%, "
                            "docs/demo-models.md)")
    perturbations: str | None = option(None, "optional Perturb-seq .h5ad to validate against")
    n_perm: int = option(200, "permutations of the coherence and consensus nulls")
    seed: int = option(0, "seed of SAE training and the nulls")
    threads: int = option(2, "CPU threads for torch, fixed (with deterministic algorithms) so that a rerun on "
                             "the same machine gives byte-identical tables")

    def __post_init__(self) -> None:
        kinds = [k.strip() for k in self.models.split(",") if k.strip()]
        check(bool(kinds) and all(k in ("geneformer", "scgpt") for k in kinds),
              f"models must list geneformer and/or scgpt, got {self.models!r}")
        check(self.data in DEMO_DATA, f"data must be one of {', '.join(DEMO_DATA)}, got {self.data!r}")
        check(self.n_cells is None or self.n_cells >= 20, "n_cells must be >= 20")
        check(self.trace_cells >= 4, "trace_cells must be >= 4")
        check(self.n_features >= 1, "n_features must be >= 1")
        check(self.sae_epochs >= 1 and self.sae_expansion >= 1 and self.sae_k >= 1,
              "SAE epochs, expansion and k must be >= 1")
        check(self.n_perm >= 10, "n_perm must be >= 10")
        check(self.threads >= 1, "threads must be >= 1")
        if self.source_layers.strip() != "first,middle":
            parse_layers(self.source_layers, "source_layers")  # syntax check

    @property
    def kinds(self) -> list[str]:
        return [k.strip() for k in self.models.split(",") if k.strip()]


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]demo[/] {msg}", highlight=False)


def _same(run: RunDir, stage: str, cfg) -> bool:
    """True when ``stage`` completed in ``run`` with exactly these options, on the current
    results of the stages it read (none of them rerun since)."""
    return run.is_current(stage, cfg)


def _source_layers(spec: str, n_layers: int) -> list[int]:
    if spec.strip() == "first,middle":
        return sorted({0, max(1, (n_layers - 1) // 2)} - {n_layers - 1})
    return parse_layers(spec, "source_layers", n_layers)


def run_demo(out: str | os.PathLike, cfg: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run the whole pipeline on the bundled data and models; returns the report's path.

    Runs with ``cfg.threads`` torch threads and deterministic algorithms (restored afterwards):
    a float reduction split over a different number of threads sums in another order, which
    can move an edge across a threshold, so the thread count is part of the demo's options."""
    from .pretrain import torch_settings

    cfg = cfg or DemoConfig()
    with torch_settings(cfg.threads):
        return _run_demo(out, cfg, progress)


def _run_demo(out: str | os.PathLike, cfg: DemoConfig, progress: bool) -> Path:
    from .activations import ExtractConfig, extract
    from .analysis import AnalyzeConfig, CompareConfig, analyze, compare
    from . import datasets
    from .annotate import AnnotateConfig, annotate
    from .celltypes import CellTypeConfig, celltypes
    from .datasets import demo_model_path
    from .models import load_model
    from .report import build_report
    from .sae import SAETrainConfig, train_saes
    from .trace import TraceConfig, trace

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, dict[str, float]] = {}  # step -> wall and CPU seconds (all threads of this process)

    def timed(name: str, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        timings[name] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        return result

    data_path = out / f"{cfg.data}.h5ad"
    if not data_path.is_file():
        tmp = out / f".{cfg.data}.h5ad.tmp"
        timed("write data", lambda: getattr(datasets, cfg.data)().write_h5ad(tmp, compression="gzip"))
        os.replace(tmp, data_path)
    gene_sets = datasets.gene_set_paths()
    runs: dict[str, Path] = {}

    for kind in cfg.kinds:
        model_dir = demo_model_path(kind)
        run = RunDir(out / kind)
        runs[kind] = rp = run.path
        n_layers = load_model(model_dir).n_layers

        def stage(name: str, stage_cfg, fn) -> None:
            if stage_cfg is not None and _same(run, name, stage_cfg):
                _say(f"{kind}: {name} already done, reused")
                return
            _say(f"{kind}: {name} ...")
            timed(f"{kind}/{name}", fn)
            t = timings[f"{kind}/{name}"]
            _say(f"{kind}: {name} done in {t['wall_s']:.0f} s ({t['cpu_s']:.0f} s CPU)")

        ecfg = ExtractConfig(n_cells=cfg.n_cells, dtype="float32",
                             gene_column="ensembl_id" if kind == "geneformer" else None)
        stage("extract", ecfg, lambda: extract(rp, model_dir, data_path, ecfg, progress=progress))
        scfg = SAETrainConfig(expansion=cfg.sae_expansion, k=cfg.sae_k, epochs=cfg.sae_epochs, seed=cfg.seed)
        stage("train-sae", scfg, lambda: train_saes(rp, scfg, progress=progress))
        acfg = AnnotateConfig()
        stage("annotate", acfg, lambda: annotate(rp, gene_sets, acfg, progress=progress))
        tcfg = TraceConfig(source_layers=_source_layers(cfg.source_layers, n_layers), n_features=cfg.n_features,
                           n_cells=cfg.trace_cells, model_name=f"demo-{kind}")
        stage("trace", tcfg, lambda: trace(rp, config=tcfg, progress=progress))
        ancfg = AnalyzeConfig(n_perm=cfg.n_perm, seed=cfg.seed)
        stage("analyze", ancfg, lambda: analyze(rp, ancfg))
        label_column, subset = DEMO_DATA[cfg.data]
        ctcfg = CellTypeConfig(data=str(data_path), label_column=label_column, subset=subset)
        stage("celltypes", ctcfg, lambda: celltypes(rp, ctcfg, progress=progress))

    compare_dir = None
    if len(runs) > 1:
        compare_dir = out / "compare"
        ccfg = CompareConfig(n_perm=cfg.n_perm, n_rewire=cfg.n_perm, n_edge_perm=cfg.n_perm, disease_n_perm=cfg.n_perm)
        groups = ";".join(f"{k}={p}" for k, p in runs.items())
        _say("compare ...")
        timed("compare", lambda: compare(list(runs.values()), groups=groups, out=compare_dir, cfg=ccfg))

    if cfg.perturbations:
        from .validate import validate

        _say("validate ...")
        validate(list(runs.values()), cfg.perturbations)

    report = timed("report", lambda: build_report(list(runs.values()), compare=compare_dir, out=out / "report.html"))
    _say(f"report written to {report}")
    from .atlas import build_atlas

    atlas = timed("atlas", lambda: build_atlas(list(runs.values()), compare=compare_dir, out=out / "atlas.html"))
    _say(f"atlas written to {atlas}")
    from .artifacts import write_demo_timings

    write_demo_timings(out, timings)
    return report
