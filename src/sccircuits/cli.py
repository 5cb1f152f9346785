"""Command-line interface: parses arguments and calls library functions, nothing more.

Every command here has a Python function twin documented in its stage module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import SCCircuitsError

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


def _int_list(value: Optional[str], option: str) -> Optional[list[int]]:
    """'0,5,11' -> [0, 5, 11] (None stays None); anything else is a one-line error naming the option."""
    from .errors import ConfigError

    if value is None:
        return None
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, e.g. 0,5,11; got {value!r}") from None
    if not out:
        raise ConfigError(f"{option} is empty")
    return out


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
    mode: str = typer.Option("official", "--mode", help="tokenization: official or reference (compat)"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="tokens per cell (default: the model's)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Tokenize cells with a model: cells kept / skipped, genes mapped / unmapped, lengths."""
    from .errors import ConfigError
    from .inspect import inspect_data

    if mode not in ("official", "reference"):
        raise ConfigError(f"--mode must be official or reference, got {mode!r}")
    _print_facts(f"{data} through {model}", inspect_data(model, data, mode=mode, gene_column=gene_column,
                                                       layer=layer, normalized=normalized,
                                                       max_length=max_length), as_json)


# --- bundled data: GO gene sets, demo models (issue 3; sccircuits.datasets, sccircuits.pretrain) ---
genesets_app = typer.Typer(no_args_is_help=True, help="Build gene-set libraries (GMT files).")
app.add_typer(genesets_app, name="genesets")


@genesets_app.command("build-go")
def genesets_build_go(
    out: Path = typer.Option(..., "--out", help="output directory (go_bp.gmt.gz, gene_ids.tsv.gz, go_bp.json)"),
    orgdb: Optional[Path] = typer.Option(None, "--orgdb", help="org.Hs.eg.db .deb, unpacked dir or "
                                         "org.Hs.eg.sqlite (default: apt-get download r-bioc-org.hs.eg.db)"),
    godb: Optional[Path] = typer.Option(None, "--godb", help="GO.db .deb, unpacked dir or GO.sqlite "
                                        "(default: apt-get download r-bioc-go.db)"),
    min_size: int = typer.Option(5, "--min-size", help="smallest term kept (genes)"),
    max_size: int = typer.Option(500, "--max-size", help="largest term kept (genes)"),
    follow_regulates: bool = typer.Option(False, "--follow-regulates",
                                          help="also propagate along 'regulates' edges"),
) -> None:
    """GO biological-process gene sets (propagated along is_a/part_of) and a symbol/Entrez/Ensembl
    table from Bioconductor's org.Hs.eg.db and GO.db (Debian packages)."""
    from .datasets.go import BuildGOConfig, build_go

    meta = build_go(BuildGOConfig(out=str(out), orgdb=None if orgdb is None else str(orgdb),
                                  godb=None if godb is None else str(godb), min_size=min_size,
                                  max_size=max_size, follow_regulates=follow_regulates))
    print(f"{meta['n_terms']} GO BP terms ({min_size}-{max_size} genes, GO release "
          f"{meta['sources']['go_release_date']}) and {meta['gene_table_rows']} gene id rows -> {out}")


@app.command("pretrain-demo")
def pretrain_demo_cmd(
    out: Path = typer.Option(..., "--out", help="output directory (demo-geneformer/, demo-scgpt/ inside)"),
    kind: str = typer.Option("both", "--kind", help="geneformer, scgpt or both"),
    seed: int = typer.Option(0, "--seed", help="random seed (weights, masking, held-out cells)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default: the shipped models' setting)"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)"),
) -> None:
    """Train the small demo models on the bundled PBMC cells (masked gene / masked value prediction)."""
    from .pretrain import PretrainConfig, pretrain_demo

    cfg = PretrainConfig(kind=kind, out=str(out), seed=seed, threads=threads,
                         **({} if epochs is None else {"epochs": epochs}))
    for name, report in pretrain_demo(cfg).items():
        ev = report["eval"]
        print(f"{name}: held-out {ev['metric']} trained {ev['trained']:.4f}, untrained {ev['untrained']:.4f}, "
              f"frequency baseline {ev['frequency_baseline']:.4f} -> {report['path']}")


# --- gene-level predictions and CRISPRi validation (issue 8; sccircuits.validate) ---
def _predict_cfg(top_genes: int, uncapped: bool, min_edges: int, min_max_abs_d: float,
                 string_pairs: Optional[Path], trrust: Optional[Path], go_gmt: Optional[Path],
                 consensus_pairs: Optional[Path], novel_pairs: Optional[Path]):
    from .validate import PredictConfig

    s = lambda p: None if p is None else str(p)  # noqa: E731
    return PredictConfig(top_genes=top_genes, edges="uncapped" if uncapped else "capped", min_edges=min_edges,
                         min_max_abs_d=min_max_abs_d, string_pairs=s(string_pairs), trrust=s(trrust),
                         go_gmt=s(go_gmt), consensus_pairs=s(consensus_pairs), novel_pairs=s(novel_pairs))


_PRED_OPTS = dict(
    top_genes=typer.Option(10, "--top-genes", help="top genes per feature on each side of an edge"),
    uncapped=typer.Option(False, "--uncapped", help="use every edge, not only the published top-N cap"),
    min_edges=typer.Option(2, "--min-edges", help="keep pairs seen in at least this many edges ..."),
    min_max_abs_d=typer.Option(2.0, "--min-max-abs-d", help="... or whose largest |d| exceeds this"),
    string_pairs=typer.Option(None, "--string-pairs", help="STRING gene pairs TSV (status: confirmed)"),
    trrust=typer.Option(None, "--trrust", help="TRRUST edges TSV (status: confirmed)"),
    go_gmt=typer.Option(None, "--go-gmt", help="GO GMT (pairs sharing a term: plausible)"),
    consensus_pairs=typer.Option(None, "--consensus-pairs", help="table of consensus domain pairs (flags)"),
    novel_pairs=typer.Option(None, "--novel-pairs", help="table of novel domain pairs (flags)"),
)


@app.command("predict")
def predict_cmd(
    run: list[Path] = typer.Option(..., "--run", help="run directory (repeat for several conditions)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .parquet or .tsv (default with one run: "
                                       "RUN/validation/gene_predictions.parquet)"),
    top_genes: int = _PRED_OPTS["top_genes"], uncapped: bool = _PRED_OPTS["uncapped"],
    min_edges: int = _PRED_OPTS["min_edges"], min_max_abs_d: float = _PRED_OPTS["min_max_abs_d"],
    string_pairs: Optional[Path] = _PRED_OPTS["string_pairs"], trrust: Optional[Path] = _PRED_OPTS["trrust"],
    go_gmt: Optional[Path] = _PRED_OPTS["go_gmt"], consensus_pairs: Optional[Path] = _PRED_OPTS["consensus_pairs"],
    novel_pairs: Optional[Path] = _PRED_OPTS["novel_pairs"],
) -> None:
    """Gene-pair predictions: each edge's source x target top genes, weight 1/((i+1)(j+1))."""
    from .errors import InputError
    from .validate import predict_genes, write_predictions

    if out is None:
        if len(run) != 1:
            raise InputError(None, "give --out when combining several runs")
        out = run[0] / "validation" / "gene_predictions.parquet"
    pred = predict_genes([str(r) for r in run], _predict_cfg(top_genes, uncapped, min_edges, min_max_abs_d,
                                                            string_pairs, trrust, go_gmt, consensus_pairs,
                                                            novel_pairs))
    write_predictions(pred, out)
    extra = ""
    if "status" in pred.columns:
        extra = " (" + ", ".join(f"{k} {v}" for k, v in pred["status"].value_counts().items()) + ")"
    print(f"{len(pred)} gene pairs from {pred['source'].nunique() if len(pred) else 0} source genes{extra} -> {out}")


@app.command("validate")
def validate_cmd(
    run: Optional[list[Path]] = typer.Option(None, "--run", help="run directory (repeat for several conditions)"),
    perturbations: Path = typer.Option(..., "--perturbations", help="CRISPRi screen .h5ad (Replogle 2022 layout)"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="use this table from `sccircuits "
                                               "predict` (parquet/tsv) instead of predicting from the runs"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default with one run: the run)"),
    target_column: str = typer.Option("gene", "--target-column", help="obs column with the knocked-down gene"),
    control_label: str = typer.Option("non-targeting", "--control-label", help="label of control cells"),
    cell_line_column: Optional[str] = typer.Option(None, "--cell-line-column", help="obs column with the cell "
                                                   "line (default: 'cell_line' if present, else one line)"),
    gene_column: Optional[str] = typer.Option(None, "--gene-column", help="var column with gene symbols "
                                              "(default: gene_name etc. when var_names are Ensembl ids)"),
    min_cells: int = typer.Option(20, "--min-cells", help="minimum cells per knockdown and control group"),
    efficacy_filter: bool = typer.Option(False, "--efficacy-filter", help="use only knockdowns whose own "
                                         "gene drops by --min-knockdown"),
    min_knockdown: float = typer.Option(0.3, "--min-knockdown", help="required fractional drop (0.3 = 30%)"),
    pseudocount: float = typer.Option(0.1, "--pseudocount", help="pseudocount of the log2 fold change (CP10k)"),
    background: str = typer.Option("screen", "--background", help="Fisher background: screen or predicted"),
    n_boot: int = typer.Option(1000, "--n-boot", help="cluster-bootstrap draws"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    chunk_size: int = typer.Option(5000, "--chunk-size", help="cells per read chunk"),
    top_genes: int = _PRED_OPTS["top_genes"], uncapped: bool = _PRED_OPTS["uncapped"],
    min_edges: int = _PRED_OPTS["min_edges"], min_max_abs_d: float = _PRED_OPTS["min_max_abs_d"],
    consensus_pairs: Optional[Path] = _PRED_OPTS["consensus_pairs"],
    novel_pairs: Optional[Path] = _PRED_OPTS["novel_pairs"],
) -> None:
    """Validate gene-pair predictions against a CRISPRi Perturb-seq screen (accuracy vs sign-bias
    baseline, cluster-bootstrap CI, Spearman, Fisher enrichment); tables in OUT/validation/."""
    from .errors import InputError
    from .validate import ValidateConfig, read_predictions, summary_table, validate

    if not run and predictions is None:
        raise InputError(None, "give --run (one or more) or --predictions")
    cfg = ValidateConfig(target_column=target_column, control_label=control_label,
                         cell_line_column=cell_line_column, gene_column=gene_column, min_cells=min_cells,
                         efficacy_filter=efficacy_filter, min_knockdown=min_knockdown, pseudocount=pseudocount,
                         background=background, n_boot=n_boot, seed=seed, chunk_size=chunk_size,
                         predict=_predict_cfg(top_genes, uncapped, min_edges, min_max_abs_d, None, None, None,
                                              consensus_pairs, novel_pairs))
    table = None if predictions is None else read_predictions(predictions)
    res = validate([str(r) for r in run or []], perturbations, cfg, predictions=table, out=out)
    Console().print(summary_table(res.summary))
    print(f"tables -> {res.out_dir}")


# --- feature catalog and gene-set annotation (issue 5; sccircuits.annotate) ---
@app.command("annotate")
def annotate_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (with activations and SAEs)"),
    gene_sets: list[Path] = typer.Option(..., "--gene-sets", help="GMT file (plain or .gz); repeat for "
                                         "several libraries; library name = file name"),
    top_genes: int = typer.Option(20, "--top-genes", help="top genes per feature"),
    min_count: Optional[int] = typer.Option(None, "--min-count", help="minimum fires on a gene to rank it "
                                            "(default 5; 1 with --compat reference)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: all with an SAE)"),
    compat: Optional[str] = typer.Option(None, "--compat", help="'reference': the published annotation, flaws included"),
    alpha: float = typer.Option(0.05, "--alpha", help="FDR level for significant terms and labels"),
    min_term_size: int = typer.Option(5, "--min-term-size", help="smallest term tested"),
    max_term_size: int = typer.Option(500, "--max-term-size", help="largest term tested"),
    label_library: str = typer.Option("", "--label-library", help="library labelling features (default: GO BP)"),
    string_pairs: Optional[Path] = typer.Option(None, "--string-pairs", help="STRING gene pairs TSV"),
    trrust: Optional[Path] = typer.Option(None, "--trrust", help="TRRUST edges TSV (TF, target, ...)"),
    permutations: int = typer.Option(1000, "--permutations", help="rewirings for the STRING/TRRUST null"),
    seed: int = typer.Option(0, "--seed", help="random seed of the network null"),
    device: str = typer.Option("cpu", "--device", help="torch device for SAE encoding"),
) -> None:
    """Feature catalog (fire counts, top genes) and gene-set enrichment with one GO BP label per feature."""
    from .annotate import AnnotateConfig, annotate
    from .errors import ConfigError

    try:
        layer_list = None if layers is None else [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers, got {layers!r}") from None
    cfg = AnnotateConfig(top_genes=top_genes, min_count=min_count, layers=layer_list, compat=compat or "",
                         alpha=alpha, min_term_size=min_term_size, max_term_size=max_term_size,
                         label_library=label_library, string_pairs=None if string_pairs is None else str(string_pairs),
                         trrust=None if trrust is None else str(trrust), network_permutations=permutations,
                         seed=seed, device=device)
    metrics = annotate(run, [str(g) for g in gene_sets], cfg)
    for layer, m in metrics["layers"].items():
        print(f"layer {int(layer):2d}: {m['n_alive']} alive features, {m['annotation_rate']:.1%} annotated, "
              f"{m['label_rate']:.1%} with a {metrics['label_library']} label")


# --- activations and SAEs (issue 4; sccircuits.activations, sccircuits.sae) ---
@app.command("extract")
def extract_cmd(
    model: Path = typer.Option(..., "--model", help="model directory (Geneformer or scGPT)"),
    data: Path = typer.Option(..., "--data", help="cells .h5ad with raw counts"),
    out: Path = typer.Option(..., "--out", help="run directory (activations go to OUT/activations/)"),
    layers: str = typer.Option("all", "--layers", help="'all' or comma-separated 0-based layers, e.g. 0,5,11"),
    n_cells: Optional[int] = typer.Option(None, "--n-cells", help="number of cells (without --sample-seed: "
                                          "the first N in file order)"),
    sample_seed: Optional[int] = typer.Option(None, "--sample-seed", help="draw --n-cells cells at random"),
    stratify_by: Optional[str] = typer.Option(None, "--stratify-by", help="obs column to sample within"),
    dtype: str = typer.Option("float16", "--dtype", help="storage dtype: float16 or float32"),
    tokenization: str = typer.Option("official", "--tokenization", help="official or reference (published)"),
    batch_size: int = typer.Option(8, "--batch-size", help="cells per forward pass"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
    gene_column: Optional[str] = typer.Option(None, "--gene-column", help="var column with gene ids/symbols"),
    counts_layer: Optional[str] = typer.Option(None, "--counts-layer", help="AnnData layer with raw counts"),
    shard_mb: float = typer.Option(256.0, "--shard-mb", help="target size of one layer's shard in MiB (the unit "
                                   "of resume: a killed run redoes at most one shard)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace activations extracted with other options"),
) -> None:
    """Residual activations at every gene position of the chosen layers, streamed to disk (resumable)."""
    from .activations import ExtractConfig, extract

    cfg = ExtractConfig(layers=layers, n_cells=n_cells, sample_seed=sample_seed, stratify_by=stratify_by,
                        dtype=dtype, tokenization=tokenization, batch_size=batch_size, device=device,
                        gene_column=gene_column, counts_layer=counts_layer, shard_mb=shard_mb)
    store = extract(out, model, data, cfg, overwrite=overwrite)
    print(f"{len(store.cells())} cells, {store.n_positions} gene positions x {len(store.layers)} layers "
          f"(d_model {store.d_model}) -> {store.path}")


@app.command("train-sae")
def train_sae_cmd(
    run: Path = typer.Option(..., "--run", help="run directory with extracted activations"),
    layers: str = typer.Option("all", "--layers", help="'all' or comma-separated layers"),
    expansion: int = typer.Option(4, "--expansion", help="d_sae = expansion x d_model"),
    k: int = typer.Option(32, "--k", help="active latents per position"),
    max_positions: Optional[int] = typer.Option(None, "--max-positions", help="train on a random subsample"),
    epochs: int = typer.Option(5, "--epochs", help="passes over the training positions"),
    batch_size: int = typer.Option(4096, "--batch-size", help="positions per step"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 5e-3 ours, 3e-4 reference)"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    recipe: str = typer.Option("ours", "--recipe", help="ours, or reference (the published recipe, flaws included)"),
    holdout_fraction: float = typer.Option(0.1, "--holdout-fraction", help="fraction of cells held out"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
) -> None:
    """Train one TopK SAE per layer (SAELens layout in RUN/saes/layerNN/) and report held-out quality."""
    from .sae.train import SAETrainConfig, train_saes

    cfg = SAETrainConfig(layers=layers, expansion=expansion, k=k, max_positions=max_positions, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, recipe=recipe,
                         holdout_fraction=holdout_fraction, device=device)
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
def analyze_cmd(
    run: Path = typer.Option(..., "--run", help="run directory (trace complete; annotate complete for coherence)"),
    permutations: int = typer.Option(1000, "--permutations", help="draws of the coherence null"),
    seed: int = typer.Option(0, "--seed", help="seed of the coherence null"),
    libraries: str = typer.Option("go,kegg,reactome", "--libraries",
                                  help="library name prefixes counted for coherence (STRING/TRRUST never count)"),
    n_layers: Optional[int] = typer.Option(None, "--n-layers", help="model layers for relative depth (default: inferred)"),
    gene_sets: Optional[Path] = typer.Option(None, "--gene-sets", help="GMT of domain term genes for novel relations"),
    no_graphml: bool = typer.Option(False, "--no-graphml", help="skip the GraphML circuit graph"),
) -> None:
    """Counts, effect sizes, sign balance, attenuation, hubs, coherence (+null), hierarchy, novelty, GraphML."""
    from .analysis import AnalyzeConfig, analyze

    cfg = AnalyzeConfig(n_perm=permutations, seed=seed, libraries=[x.strip() for x in libraries.split(",") if x.strip()],
                        n_layers=n_layers, gene_sets=None if gene_sets is None else str(gene_sets), graphml=not no_graphml)
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
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories to compare"),
    groups: Optional[str] = typer.Option(None, "--groups", help="e.g. 'geneformer=RUN_A,RUN_C;scgpt=RUN_B' "
                                         "(run names or paths; default: group by model)"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    permutations: int = typer.Option(1000, "--permutations", help="draws of the label-permutation null"),
    rewirings: int = typer.Option(1000, "--rewirings", help="draws of the degree-preserving rewiring null"),
    edge_permutations: int = typer.Option(1000, "--edge-permutations",
                                          help="draws of the edge-permutation null (headline consensus null)"),
    disease_permutations: int = typer.Option(1000, "--disease-permutations",
                                             help="draws of the degree-conditioned disease null"),
    seed: int = typer.Option(42, "--seed", help="seed of the consensus and disease nulls"),
    edge_sets: str = typer.Option("all,capped", "--edge-sets", help="all (uncapped) and/or capped"),
    contrast: list[str] = typer.Option([], "--contrast", help="tissue contrast FOCUS:BASELINE (repeatable)"),
    gene_sets: Optional[Path] = typer.Option(None, "--gene-sets", help="GMT of domain term genes for novel relations"),
    disease_gmt: Optional[Path] = typer.Option(None, "--disease-gmt", help="independent disease gene sets "
                                               "(default: compat keyword categories from GO names)"),
) -> None:
    """Comparison table, cross-model consensus with three nulls, novelty, hierarchy, tissue and disease tests."""
    from .analysis import CompareConfig, compare

    cfg = CompareConfig(n_perm=permutations, n_rewire=rewirings, n_edge_perm=edge_permutations,
                        disease_n_perm=disease_permutations, seed=seed,
                        edge_sets=[x.strip() for x in edge_sets.split(",") if x.strip()], contrasts=list(contrast),
                        gene_sets=None if gene_sets is None else str(gene_sets),
                        disease_gmt=None if disease_gmt is None else str(disease_gmt))
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
    print(f"written to {out}")


# --- demo and report (issue 9) ---
@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("sccircuits-demo"), "--out", help="output directory (reruns reuse finished stages)"),
    models: str = typer.Option("geneformer,scgpt", help="demo models: geneformer, scgpt or both"),
    n_cells: Optional[int] = typer.Option(None, help="cells for activations and SAEs (default: all 700)"),
    trace_cells: int = typer.Option(120, help="cells traced per model"),
    n_features: int = typer.Option(8, help="source features per source layer"),
    source_layers: str = typer.Option("first,middle", help="'first,middle' or explicit layers, e.g. '0,2'"),
    sae_epochs: int = typer.Option(5, help="SAE training epochs"),
    perturbations: Optional[Path] = typer.Option(None, help="Perturb-seq .h5ad to validate against"),
    n_perm: int = typer.Option(200, help="permutations of the coherence and consensus nulls"),
) -> None:
    """Whole pipeline on the bundled PBMC cells with both demo models; writes OUT/report.html."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(models=models, n_cells=n_cells, trace_cells=trace_cells, n_features=n_features,
                     source_layers=source_layers, sae_epochs=sae_epochs,
                     perturbations=None if perturbations is None else str(perturbations), n_perm=n_perm)
    print(run_demo(out, cfg))


@app.command("report")
def report_cmd(
    run: list[Path] = typer.Option(..., "--run", help="run directory (repeat for several conditions)"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="output directory of `sccircuits compare`"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: RUN/report.html)"),
    top_circuits: int = typer.Option(25, help="strongest annotated edges listed"),
    capped: bool = typer.Option(False, help="use only the published top-N-capped edges"),
) -> None:
    """Write one self-contained HTML report (figures embedded) of runs and a comparison."""
    from .report import ReportConfig, build_report

    print(build_report(run, compare=compare, out=out, cfg=ReportConfig(top_circuits=top_circuits, capped=capped)))


# --- trace and merge (issue 6; sccircuits.trace) ---
@app.command("trace")
def trace_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (model, cells, SAEs, annotation from it)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model directory (instead of --run)"),
    data: Optional[Path] = typer.Option(None, "--data", help="cells .h5ad with raw counts (instead of --run)"),
    saes: Optional[Path] = typer.Option(None, "--saes", help="SAE directory: layerNN/ (ours) or layerNN_x4_k32/ (bio-sae)"),
    annotation: Optional[Path] = typer.Option(None, "--annotation", help="run directory whose annotation gives labels / selection"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory receiving trace/ (default: --run)"),
    source_layers: Optional[str] = typer.Option(None, "--source-layers", help="e.g. 0,5,11 (default: every SAE layer with a later SAE)"),
    n_features: int = typer.Option(30, "--n-features", help="source features per layer chosen by --selection"),
    features: Optional[str] = typer.Option(None, "--features", help="explicit features, e.g. '0:309,460;5:12,80'"),
    all_active: bool = typer.Option(False, "--all-active", help="trace every feature of each source layer"),
    selection: str = typer.Option("richness", "--selection", help="richness, frequency or random"),
    n_cells: int = typer.Option(200, "--n-cells", help="cells traced (first N unless --sample-seed)"),
    sample_seed: Optional[int] = typer.Option(None, "--sample-seed", help="random sample of cells with this seed"),
    tokenization: str = typer.Option("official", "--tokenization", help="official or reference"),
    gene_column: Optional[str] = typer.Option(None, "--gene-column", help="var column with gene ids/symbols"),
    device: str = typer.Option("cpu", "--device", help="torch device"),
    dtype: str = typer.Option("float32", "--dtype", help="model dtype: float32, bfloat16, float16"),
    batch_size: int = typer.Option(16, "--batch-size", help="ablated sequences per forward pass"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="cells per checkpointed block"),
    shard: str = typer.Option("0/1", "--shard", help="i/n: trace the i-th of n parts; then `sccircuits merge`"),
    compat: str = typer.Option("none", "--compat", help="'reference' reproduces the published algorithm"),
    d_threshold: float = typer.Option(0.5, "--d-threshold", help="edge if |d| > this"),
    consistency_threshold: float = typer.Option(0.7, "--consistency-threshold", help="edge if consistency > this"),
    consistency_kind: str = typer.Option("reference", "--consistency-kind", help="reference or nonzero"),
    min_cells: int = typer.Option(3, "--min-cells", help="minimum cells per test"),
    max_q: Optional[float] = typer.Option(None, "--max-q", help="also require BH q <= this"),
    top_per_layer: int = typer.Option(50, "--top-per-layer", help="published cap per (source feature, target layer); 0 = uncapped"),
    null_ablation: bool = typer.Option(True, "--null-ablation/--no-null-ablation", help="random-direction noise floor"),
    null_seed: int = typer.Option(0, "--null-seed", help="seed of the null directions"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="value of the 'model' column"),
    executor: str = typer.Option("local", "--executor", help="local, or ray (distributed; pip install 'sccircuits[ray]')"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)"),
    num_workers: int = typer.Option(2, "--num-workers", help="Ray workers (one GPU each with --device cuda)"),
    plan: bool = typer.Option(False, "--plan", help="print forward passes, time and memory estimates; trace nothing"),
) -> None:
    """Ablate source SAE features and measure every downstream SAE feature (edges.parquet)."""
    from .trace import TraceConfig
    from .trace_ray import run_trace

    layers = _int_list(source_layers, "--source-layers")
    cfg = TraceConfig(source_layers=layers, n_features=n_features, features=features, all_active=all_active,
                      selection=selection, n_cells=n_cells, sample_seed=sample_seed, tokenization=tokenization,
                      gene_column=gene_column, device=device, dtype=dtype, batch_size=batch_size,
                      checkpoint_every=checkpoint_every, shard=shard, compat=compat, d_threshold=d_threshold,
                      consistency_threshold=consistency_threshold, consistency_kind=consistency_kind,
                      min_cells=min_cells, max_q=max_q, top_per_layer=top_per_layer, null_ablation=null_ablation,
                      null_seed=null_seed, model_name=model_name)
    res = run_trace(run, model=model, data=data, saes=saes, annotation=annotation, out=out, config=cfg,
                    executor=executor, address=address, num_workers=num_workers, plan=plan)
    if plan:
        print(res)
        return
    m = res.metrics
    if res.edges is None:
        print(f"shard {shard} done ({len(m['blocks'])} blocks) in {res.out / 'trace'}; "
              "run `sccircuits merge` when all shards finished")
    else:
        print(f"{m['n_edges']} edges ({m['n_edges_in_cap']} in the cap) from {m['ablations']} ablations "
              f"over {m['n_cells']} cells -> {res.out / 'trace' / 'edges.parquet'}")


@app.command("merge")
def merge_cmd(
    shards: list[Path] = typer.Argument(..., help="run directories holding the shards (one if all shards share --out)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory for the merged trace (default: the first)"),
) -> None:
    """Merge `trace --shard i/n` results into the same tables a single run gives."""
    from .trace import merge

    res = merge(shards, out=out)
    m = res.metrics
    print(f"{m['n_edges']} edges ({m['n_edges_in_cap']} in the cap) -> {res.out / 'trace' / 'edges.parquet'}")


# --- scale-out: dtype check (issue 10; sccircuits.plan) ---
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
    from .plan import dtype_agreement
    from .trace import TraceConfig

    layers = _int_list(source_layers, "--source-layers")
    cfg = TraceConfig(source_layers=layers, n_features=n_features, selection=selection, n_cells=n_cells,
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
