"""Benchmark: our SAE recipe vs the published recipe on the same activations.

For each model, extracts every layer's residuals once (cached in --workdir), then trains one SAE
per layer with each recipe using the same k, expansion, batch size, epochs and training
positions, and evaluates both on the same held-out cells: variance explained (1 - FVU), dead
latents (never fired on the held-out positions), L0 and training positions/s.

Data: the shipped demo models on the shipped PBMC cells when the demo models are installed
(``--source demo``, the default when present), else a tiny random Geneformer-style model on
synthetic counts (``--source synthetic``; the script says which it used).

    python benchmarks/sae_training.py --workdir /tmp/saebench            # print a table
    python benchmarks/sae_training.py --workdir /tmp/saebench --append    # ... and add it to RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def demo_available() -> bool:
    from sccircuits.datasets import demo_model_path

    try:
        return all((demo_model_path(k)).is_dir() for k in ("geneformer", "scgpt"))
    except Exception:
        return False


def conditions(source: str, workdir: Path, kinds: list[str]) -> list[dict]:
    """[{name, model, data, gene_column}] to extract."""
    if source == "demo":
        from sccircuits.datasets import demo_model_path, pbmc

        adata = pbmc()
        return [{"name": f"demo-{k}", "model": demo_model_path(k), "data": adata, "gene_column": None} for k in kinds]
    from sccircuits.models import testing

    model = workdir / "synthetic-geneformer"
    if not (model / "config.json").is_file():
        testing.make_tiny_geneformer(model, n_genes=400, n_layers=4, d_model=64, seed=0)
    adata = testing.make_synthetic_adata(n_cells=600, n_genes=400, seed=0, n_types=6)
    return [{"name": "synthetic-geneformer", "model": model, "data": adata, "gene_column": None}]


def run(args) -> str:
    from sccircuits.activations import ActivationStore, ExtractConfig, extract
    from sccircuits.rundir import RunDir
    from sccircuits.sae import train as tr

    torch.set_num_threads(args.threads)
    source = args.source or ("demo" if demo_available() else "synthetic")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for cond in conditions(source, workdir, args.kinds):
        run_dir = workdir / cond["name"]
        t0 = time.perf_counter()
        if RunDir(run_dir).is_complete("extract"):
            store = ActivationStore(run_dir)
        else:
            store = extract(run_dir, cond["model"], cond["data"],
                            ExtractConfig(dtype="float32", batch_size=16, gene_column=cond["gene_column"]),
                            progress=not args.quiet)
        t_extract = time.perf_counter() - t0
        print(f"{cond['name']}: {len(store.cells())} cells, {store.n_positions} positions x {len(store.layers)} "
              f"layers, d_model {store.d_model} (extract {t_extract:.1f}s)", file=sys.stderr)
        for layer in store.layers:
            row = {"condition": cond["name"], "layer": layer}
            for recipe in ("ours", "reference"):
                cfg = tr.SAETrainConfig(recipe=recipe, k=args.k, expansion=args.expansion, epochs=args.epochs,
                                        batch_size=args.batch_size, seed=args.seed,
                                        lr=args.lr_ours if recipe == "ours" else args.lr_reference,
                                        max_positions=args.max_positions)
                split = tr.heldout_split(store.cell_index(), cfg.holdout_fraction, cfg.seed)
                _, m = tr.train_layer(store, layer, cfg, split, checkpoint=None, progress=not args.quiet)
                row[recipe] = m
                print(f"  layer {layer} {recipe:9s}: VE {m['variance_explained']:.3f} dead {m['dead']}/{m['d_sae']} "
                      f"L0 {m['l0']:.1f} {m['positions_per_second']:.0f} pos/s", file=sys.stderr)
            lines.append(row)
    return format_results(lines, source, args)


def format_results(rows: list[dict], source: str, args) -> str:
    head = ("| condition | layer | VE ours | VE reference | dead ours | dead reference | L0 ours | L0 ref "
            "| pos/s ours | pos/s ref |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        o, f = r["ours"], r["reference"]
        body += (f"| {r['condition']} | {r['layer']} | {o['variance_explained']:.1%} | {f['variance_explained']:.1%} "
                 f"| {o['dead']}/{o['d_sae']} | {f['dead']}/{f['d_sae']} | {o['l0']:.1f} | {f['l0']:.1f} "
                 f"| {o['positions_per_second']:.0f} | {f['positions_per_second']:.0f} |\n")
    ve_o = np.mean([r["ours"]["variance_explained"] for r in rows])
    ve_f = np.mean([r["reference"]["variance_explained"] for r in rows])
    dead_o = sum(r["ours"]["dead"] for r in rows)
    dead_f = sum(r["reference"]["dead"] for r in rows)
    tot = sum(r["ours"]["d_sae"] for r in rows)
    o0 = rows[0]["ours"]
    what = ("shipped demo models on the shipped PBMC cells (700 cells)" if source == "demo" else
            "tiny random Geneformer-style model (4 layers, d_model 64) on synthetic counts (600 cells x 400 genes); "
            "the demo models were not installed when this ran")
    cmd = "python benchmarks/sae_training.py " + " ".join(sys.argv[1:])
    return (f"\n## SAE training: our recipe vs the published recipe\n\n"
            f"Machine: 2-core CPU, shared with other work at the time ({platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {args.threads} threads).\n"
            f"Command: `{cmd}`\n"
            f"Activations: {what}. Same k={args.k}, expansion={args.expansion}, batch {args.batch_size}, "
            f"{args.epochs} epochs, same training positions and held-out cells (10%) for both recipes; "
            f"lr ours {args.lr_ours}, reference {args.lr_reference}.\n\n"
            + head + body +
            f"\nMean variance explained: ours {ve_o:.1%}, reference {ve_f:.1%}. Dead latents: ours {dead_o}/{tot}, "
            f"reference {dead_f}/{tot}. pos/s = training positions per second (forward, backward, update; "
            f"k={o0['k']}, d_sae={o0['d_sae']}).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="where activations are extracted (reused across runs)")
    ap.add_argument("--source", choices=["demo", "synthetic"], default=None)
    ap.add_argument("--kinds", default="geneformer,scgpt", help="demo models to use")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--max-positions", type=int, default=None)
    ap.add_argument("--lr-ours", type=float, default=None, help="default: SAETrainConfig's default")
    ap.add_argument("--lr-reference", type=float, default=3e-4, help="the published 3e-4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.lr_ours is None:
        from sccircuits.sae.train import SAETrainConfig

        args.lr_ours = SAETrainConfig().learning_rate
    text = run(args)
    print(text)
    if args.append:
        path = Path(__file__).resolve().parent / "RESULTS.md"
        with open(path, "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
