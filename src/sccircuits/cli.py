"""Command-line interface: parses arguments and calls library functions, nothing more.

Every command here has a Python function twin documented in its stage module. A stage's
options are declared once, in its config dataclass; ``@config_options(Config)`` generates the
command's options from it (``cli_options.py``) and passes the built config as ``cfg``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .activations import ExtractConfig
from .analysis.config import AnalyzeConfig, CompareConfig
from .annotate.config import AnnotateConfig
from .atlas.config import AtlasConfig
from .celltypes_config import CellTypeConfig
from .cli_options import config_options
from .datasets.go import BuildGOConfig
from .datasets.msigdb import BuildMSigDBConfig
from .demo import DemoConfig
from .errors import SCCircuitsError
from .pretrain_config import PretrainConfig
from .report_config import ReportConfig
from .sae.config import SAETrainConfig
from .trace.config import TraceConfig
from .validate.config import PredictConfig, ValidateConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Causal circuit tracing in single-cell foundation models.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Causal circuit tracing in single-cell foundation models."""


@app.command()
def version() -> None:
    """Print the sccircuits version."""
    from . import __version__

    print(__version__)


# --- commands are added below this line, one block per stage (keep blocks in pipeline order) ---


# --- inspect a model or a data set (issue 2; sccircuits.inspect) ---
def _print_facts(title: str, facts: dict, as_json: bool) -> None:
    """A dict as JSON on stdout or as a two-column rich table (nested dicts on one line)."""
    import json

    if as_json:
        print(json.dumps(facts, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    Console().print(table)


@app.command("inspect-model")
def inspect_model_cmd(
    path: Path = typer.Argument(..., help="model directory (Geneformer or scGPT)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Kind, layers, width, heads, vocabulary, special tokens and dictionaries of a model."""
    from .inspect import inspect_model

    _print_facts(f"model {path}", inspect_model(path), as_json)


@app.command("inspect-data")
def inspect_data_cmd(
    model: Path = typer.Option(..., "--model", help="model directory (Geneformer or scGPT)"),
    data: Path = typer.Option(..., "--data", help="cells (.h5ad with raw counts)"),
    gene_column: Optional[str] = typer.Option(None, "--gene-column", help="var column with gene ids "
                                              "(default: var_names)"),
    layer: Optional[str] = typer.Option(None, "--layer", help="layer holding counts (default: X)"),
    normalized: bool = typer.Option(False, "--normalized", help="accept non-count (already normalised) values"),
    tokenization: str = typer.Option("official", "--tokenization", "--mode",
                                     help="official or reference (the published study's tokenization)"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="tokens per cell (default: the model's)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Tokenize cells with a model: cells kept / skipped, genes mapped / unmapped, lengths."""
    from .errors import ConfigError
    from .inspect import inspect_data

    if tokenization not in ("official", "reference"):
        raise ConfigError(f"--tokenization must be official or reference, got {tokenization!r}")
    _print_facts(f"{data} through {model}", inspect_data(model, data, mode=tokenization, gene_column=gene_column,
                                                       layer=layer, normalized=normalized,
                                                       max_length=max_length), as_json)


# --- bundled data: GO gene sets, demo models (issue 3; sccircuits.datasets, sccircuits.pretrain) ---
genesets_app = typer.Typer(no_args_is_help=True, help="Build gene-set libraries (GMT files).")
app.add_typer(genesets_app, name="genesets")


@genesets_app.command("build-go")
@config_options(BuildGOConfig)
def genesets_build_go(cfg=None) -> None:
    """GO biological-process gene sets (propagated along is_a/part_of) and a symbol/Entrez/Ensembl
    table from Bioconductor's org.Hs.eg.db and GO.db (Debian packages)."""
    from .datasets.go import build_go

    meta = build_go(cfg)
    print(f"{meta['n_terms']} GO BP terms ({cfg.min_size}-{cfg.max_size} genes, GO release "
          f"{meta['sources']['go_release_date']}) and {meta['gene_table_rows']} gene id rows -> {cfg.out}")


@genesets_app.command("build-msigdb")
@config_options(BuildMSigDBConfig)
def genesets_build_msigdb(cfg=None) -> None:
    """MSigDB Hallmark, Reactome and WikiPathways gene sets (not KEGG/BioCarta) from the pegasuspy
    wheel, symbols updated to current NCBI symbols."""
    from .datasets.msigdb import build_msigdb

    meta = build_msigdb(cfg)
    for name, lib in meta["libraries"].items():
        print(f"{name}: {lib['n_terms']} terms, {lib['n_genes']} genes, {lib['n_symbols_updated']} symbols updated")
    print(f"-> {cfg.out}")


@app.command("pretrain-demo")
@config_options(PretrainConfig)
def pretrain_demo_cmd(cfg=None) -> None:
    """Train the small demo models on the bundled blood cells (masked gene / masked value prediction)."""
    from .pretrain import pretrain_demo

    for name, report in pretrain_demo(cfg).items():
        ev = report["eval"]
        print(f"{name}: held-out {ev['metric']} trained {ev['trained']:.4f}, untrained {ev['untrained']:.4f}, "
              f"frequency baseline {ev['frequency_baseline']:.4f} -> {report['path']}")


# --- gene-level predictions and CRISPRi validation (issue 8; sccircuits.validate) ---
@app.command("predict")
@config_options(PredictConfig)
def predict_cmd(
    run: list[Path] = typer.Option(..., "--run", help="run directory (repeat for several conditions)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .parquet or .tsv (default with one run: "
                                       "RUN/validation/gene_predictions.parquet)"),
    cfg=None,
) -> None:
    """Gene-pair predictions: each edge's source x target top genes, weight 1/((i+1)(j+1))."""
    from .errors import InputError
    from .validate import predict_genes, write_predictions

    if out is None:
        if len(run) != 1:
            raise InputError(None, "give --out when combining several runs")
        out = run[0] / "validation" / "gene_predictions.parquet"
    pred = predict_genes([str(r) for r in run], cfg)
    write_predictions(pred, out)
    extra = ""
    if "status" in pred.columns:
        extra = " (" + ", ".join(f"{k} {v}" for k, v in pred["status"].value_counts().items()) + ")"
    print(f"{len(pred)} gene pairs from {pred['source'].nunique() if len(pred) else 0} source genes{extra} -> {out}")


@app.command("validate")
@config_options(ValidateConfig)
def validate_cmd(
    run: Optional[list[Path]] = typer.Option(None, "--run", help="run directory (repeat for several conditions)"),
    perturbations: Path = typer.Option(..., "--perturbations", help="CRISPRi screen .h5ad (Replogle 2022 layout)"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="use this table from `sccircuits "
                                               "predict` (parquet/tsv) instead of predicting from the runs"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default with one run: the run)"),
    cfg=None,
) -> None:
    """Validate gene-pair predictions against a CRISPRi Perturb-seq screen (accuracy vs sign-bias
    baseline, cluster-bootstrap CI, Spearman, Fisher enrichment); tables in OUT/validation/."""
    from .errors import InputError
    from .validate import read_predictions, summary_table, validate

    if not run and predictions is None:
        raise InputError(None, "give --run (one or more) or --predictions")
    table = None if predictions is None else read_predictions(predictions)
    res = validate([str(r) for r in run or []], perturbations, cfg, predictions=table, out=out)
    Console().print(summary_table(res.summary))
    print(f"tables -> {res.out_dir}")


# --- feature catalog and gene-set annotation (issue 5; sccircuits.annotate) ---
@app.command("annotate")
@config_options(AnnotateConfig, aliases={"network_permutations": ("--permutations",)})
def annotate_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (with activations and SAEs)"),
    gene_sets: list[Path] = typer.Option(..., "--gene-sets", help="GMT file (plain or .gz); repeat for "
                                         "several libraries; library name = file name"),
    cfg=None,
) -> None:
    """Feature catalog (fire counts, top genes) and gene-set enrichment with one GO BP label per feature."""
    from .annotate import annotate

    metrics = annotate(run, [str(g) for g in gene_sets], cfg)
    for layer, m in metrics["layers"].items():
        print(f"layer {int(layer):2d}: {m['n_alive']} alive features, {m['annotation_rate']:.1%} annotated, "
              f"{m['label_rate']:.1%} with a {metrics['label_library']} label")


# --- activations and SAEs (issue 4; sccircuits.activations, sccircuits.sae) ---
@app.command("extract")
@config_options(ExtractConfig)
def extract_cmd(
    model: Path = typer.Option(..., "--model", help="model directory (Geneformer or scGPT)"),
    data: Path = typer.Option(..., "--data", help="cells .h5ad with raw counts"),
    out: Path = typer.Option(..., "--out", help="run directory (activations go to OUT/activations/)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace activations extracted with other options"),
    cfg=None,
) -> None:
    """Residual activations at every gene position of the chosen layers, streamed to disk (resumable)."""
    from .activations import extract

    store = extract(out, model, data, cfg, overwrite=overwrite)
    print(f"{len(store.cells())} cells, {store.n_positions} gene positions x {len(store.layers)} layers "
          f"(d_model {store.d_model}) -> {store.path}")


@app.command("train-sae")
@config_options(SAETrainConfig)
def train_sae_cmd(
    run: Path = typer.Option(..., "--run", help="run directory with extracted activations"),
    cfg=None,
) -> None:
    """Train one TopK SAE per layer (SAELens layout in RUN/saes/layerNN/) and report held-out quality."""
    from .sae.train import train_saes

    train_saes(run, cfg)
    from .rundir import RunDir

    for name, m in RunDir(run, create=False).stage("train-sae")["metrics"].items():
        if name.startswith("layer"):
            print(f"{name}: variance explained {m['variance_explained']:.1%}, L0 {m['l0']:.1f}, "
                  f"dead {m['dead']}/{m['d_sae']} ({m['dead_fraction']:.1%})")


@app.command("import-sae")
def import_sae_cmd(
    src: Path = typer.Argument(..., help="directory of published checkpoints (layerNN_x4_k32/sae_final.pt)"),
    out: Path = typer.Option(..., "--out", help="output SAE directory (layerNN/ in SAELens layout), "
                             "e.g. RUN/saes"),
    fmt: str = typer.Option("bio-sae", "--format", help="checkpoint format (only bio-sae)"),
) -> None:
    """Convert published bio-sae SAE checkpoints to our layout (encoding exactly as published)."""
    from .errors import ConfigError
    from .sae.io import import_bio_sae

    if fmt != "bio-sae":
        raise ConfigError(f"--format must be bio-sae, got {fmt!r}")
    for layer, path in import_bio_sae(src, out).items():
        print(f"layer {layer} -> {path}")


# --- analyses and comparison (issue 7; sccircuits.analysis) ---
@app.command("analyze")
@config_options(AnalyzeConfig, aliases={"n_perm": ("--permutations",)})
def analyze_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (trace complete; annotate complete for coherence)"),
    cfg=None,
) -> None:
    """Counts, effect sizes, sign balance, attenuation, hubs, coherence (+null), hierarchy, novelty, GraphML."""
    from .analysis import analyze

    s = analyze(run, cfg)
    for es in ("all", "capped"):
        x = s[es]
        neg = x["sign_balance"]["d_negative"]
        line = (f"{es:6s}: {x['n_edges']} edges, {x['n_targets']} targets, mean |d| {x['mean_abs_d']:.2f}, "
                f"{neg['frac']:.1%} d<0 (source supports target; paper: inhibitory)")
        c = x["coherence"]
        if c.get("n_edges_annotated"):
            line += f", coherence {c['coherence']:.1%} ({c['fold_enrichment']:.2f}x null, p={c['p_value']:.3g})"
        else:
            line += f", coherence skipped ({c.get('reason', 'no annotated edges')})"
        print(line)
    print(f"written to {Path(run) / 'analysis'}")


@app.command("compare")
@config_options(CompareConfig, prefixes={"analyze": "analyze_"},
                aliases={"n_perm": ("--permutations",), "n_rewire": ("--rewirings",), "n_edge_perm": ("--edge-permutations",),
                         "disease_n_perm": ("--disease-permutations",), "contrasts": ("--contrast",)})
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories to compare"),
    groups: Optional[str] = typer.Option(None, "--groups", help="e.g. 'geneformer=RUN_A,RUN_C;scgpt=RUN_B' "
                                         "(run names or paths; default: group by model)"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    cfg=None,
) -> None:
    """Comparison table, cross-model consensus with three nulls, novelty, hierarchy, tissue and disease tests."""
    from .analysis import compare

    r = compare(runs, groups, out, cfg)
    for es, c in r["consensus"].items():
        if "n_consensus" not in c:
            print(f"{es}: {c['note']}")
            continue
        lab, rew, edg = c["label_permutation_null"], c["rewiring_null"], c["edge_permutation_null"]
        print(f"{es}: {c['n_consensus']} consensus pairs ({c['n_high_confidence']} high-confidence, "
              f"{c['n_consensus_self_pairs']} self pairs); edge permutation (headline) "
              f"{edg['fold_enrichment']:.2f}x (p={edg['p_value']:.3g}), "
              f"label permutation {lab['fold_enrichment']:.2f}x (p={lab['p_value']:.3g}), "
              f"rewiring {rew['fold_enrichment']:.2f}x (p={rew['p_value']:.3g})")
    if "reference" in r:
        d = r["reference"]["disease"]
        print(f"compat reference: {r['reference']['consensus']['n_consensus']} consensus pairs; disease pairs "
              f"{d['n_disease_pairs']}/{d['n_pairs']}, OR {d['odds_ratio']:.2f} (p={d['p_value']:.3g})")
    print(f"written to {out}")


@app.command("celltypes")
@config_options(CellTypeConfig)
def celltypes_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (extract and train-sae completed)"),
    cfg=None,
) -> None:
    """Per-cell-type activity of every SAE feature and a Kruskal-Wallis test across cell types."""
    from .celltypes import celltypes

    m = celltypes(run, cfg)
    print(f"{m['n_significant']} of {m['n_features_tested']} features differ by cell type (BH q < {cfg.alpha}); "
          f"traced sources: {m['n_traced_significant']} of {m['n_traced_tested']} -> {run}/celltypes")


# --- demo and report (issue 9) ---
@app.command("demo")
@config_options(DemoConfig)
def demo_cmd(
    out: Path = typer.Option(Path("sccircuits-demo"), "--out", help="output directory (reruns reuse finished stages)"),
    cfg=None,
) -> None:
    """Whole pipeline on the bundled blood cells with both demo models; writes OUT/report.html."""
    from .demo import run_demo

    print(run_demo(out, cfg))


@app.command("report")
@config_options(ReportConfig)
def report_cmd(
    run: list[Path] = typer.Option(..., "--run", help="run directory (repeat for several conditions)"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="output directory of `sccircuits compare`"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: RUN/report.html)"),
    cfg=None,
) -> None:
    """Write one self-contained HTML report (figures embedded) of runs and a comparison."""
    from .report import build_report

    print(build_report(run, compare=compare, out=out, cfg=cfg))


@app.command("atlas")
@config_options(AtlasConfig)
def atlas_cmd(
    run: list[Path] = typer.Option([], "--run", help="run directory (repeat for several conditions)"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="output directory of `sccircuits compare` "
                                           "(its runs are used when no --run is given)"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: RUN/atlas.html)"),
    cfg=None,
) -> None:
    """Write one offline HTML atlas: search genes/terms/features, feature cards, edges, neighbourhood graphs."""
    from .atlas import build_atlas

    print(build_atlas(run, compare=compare, out=out, cfg=cfg))


# --- trace and merge (issue 6; sccircuits.trace) ---
@app.command("trace")
@config_options(TraceConfig)
def trace_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (model, cells, SAEs, annotation from it)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model directory (instead of --run)"),
    data: Optional[Path] = typer.Option(None, "--data", help="cells .h5ad with raw counts (instead of --run)"),
    saes: Optional[Path] = typer.Option(None, "--saes", help="SAE directory: layerNN/ (ours) or layerNN_x4_k32/ (bio-sae)"),
    annotation: Optional[Path] = typer.Option(None, "--annotation", help="run directory whose annotation gives labels / selection"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory receiving trace/ (default: --run)"),
    executor: str = typer.Option("local", "--executor", help="local, or ray (distributed; pip install 'sccircuits[ray]')"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)"),
    num_workers: int = typer.Option(2, "--num-workers", help="Ray workers (one GPU each with --device cuda)"),
    plan: bool = typer.Option(False, "--plan", help="print forward passes, time and memory estimates; trace nothing"),
    cfg=None,
) -> None:
    """Ablate source SAE features and measure every downstream SAE feature (trace/edges.parquet)."""
    from .artifacts import trace_file
    from .trace import run_trace

    res = run_trace(run, model=model, data=data, saes=saes, annotation=annotation, out=out, config=cfg,
                    executor=executor, address=address, num_workers=num_workers, plan=plan)
    if plan:
        print(res)
        return
    m = res.metrics
    if res.edges is None:
        print(f"shard {cfg.shard} done ({len(m['blocks'])} blocks) in {res.out / 'trace'}; "
              "run `sccircuits merge` when all shards finished")
    else:
        print(f"{_edge_summary(m)} from {m['ablations']} ablations (+{m['null_ablations']} null) over "
              f"{m['n_cells']} cells -> {res.out / trace_file('edges')}")


def _edge_summary(m: dict) -> str:
    fdr = m.get("estimated_fdr")
    return (f"{m['n_edges']} edges (criterion {m['criterion']}, estimated FDR "
            f"{'n/a' if fdr is None else f'{fdr:.1%}'}; published rule {m['n_edges_published']}, "
            f"{m['n_edges_in_cap']} in its cap)")


@app.command("merge")
def merge_cmd(
    shards: list[Path] = typer.Argument(..., help="run directories holding the shards (one if all shards share --out)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory for the merged trace (default: the first)"),
) -> None:
    """Merge `trace --shard i/n` results into the same tables a single run gives."""
    from .artifacts import trace_file
    from .trace import merge

    res = merge(shards, out=out)
    m = res.metrics
    print(f"{_edge_summary(m)} -> {res.out / trace_file('edges')}")


# --- scale-out: dtype check (issue 10; sccircuits.trace.plan) ---
@app.command("check-dtype")
def check_dtype_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (model, cells, SAEs, annotation from it)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model directory (instead of --run)"),
    data: Optional[Path] = typer.Option(None, "--data", help="cells .h5ad with raw counts (instead of --run)"),
    saes: Optional[Path] = typer.Option(None, "--saes", help="SAE directory (instead of --run)"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="low precision to check against float32: bfloat16 or float16"),
    n_cells: int = typer.Option(32, "--n-cells", help="cells of the sample"),
    n_features: int = typer.Option(30, "--n-features", help="source features per layer"),
    source_layers: Optional[str] = typer.Option(None, "--source-layers", help="e.g. 0,5,11"),
    selection: str = typer.Option("richness", "--selection", help="richness, frequency or random"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
    batch_size: int = typer.Option(16, "--batch-size", help="ablated sequences per forward pass"),
) -> None:
    """Trace a sample in float32 and in --dtype; print how far Cohen's d moves and edges flip."""
    from .trace.plan import dtype_agreement

    cfg = TraceConfig(source_layers=source_layers, n_features=n_features, selection=selection, n_cells=n_cells,
                      device=device, batch_size=batch_size)
    print(dtype_agreement(run, model=model, data=data, saes=saes, config=cfg, dtype=dtype, n_cells=n_cells))


# --- end of commands ---


def main() -> None:
    """Entry point: user errors become one red line and exit code 2."""
    import signal

    from .errors import Interrupted

    def interrupted(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGINT, interrupted)
    try:
        app()
    except SCCircuitsError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted:
        console.print("interrupted; rerun the same command to resume", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
