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
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch"),
) -> None:
    """Train the small demo models on the bundled PBMC cells (masked gene / masked value prediction)."""
    from .pretrain import PretrainConfig, pretrain_demo

    cfg = PretrainConfig(kind=kind, out=str(out), seed=seed, threads=threads,
                         **({} if epochs is None else {"epochs": epochs}))
    for name, report in pretrain_demo(cfg).items():
        ev = report["eval"]
        print(f"{name}: held-out {ev['metric']} trained {ev['trained']:.4f}, untrained {ev['untrained']:.4f}, "
              f"frequency baseline {ev['frequency_baseline']:.4f} -> {report['path']}")


# --- end of commands ---


def main() -> None:
    """Entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except SCCircuitsError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
