"""Hallmark, Reactome and WikiPathways gene sets from the MSigDB files inside the PyPI
``pegasuspy`` wheel (BSD-3; ``pegasus/data_files/h.all.v7.5.1.symbols.gmt`` and
``c2.cp.v7.5.1.symbols.gmt``).

Only collections that may be redistributed are written: MSigDB Hallmark, Reactome
(``REACTOME_`` sets) and WikiPathways (``WP_`` sets); MSigDB releases these under CC BY 4.0, and
Reactome and WikiPathways themselves are CC0. MSigDB's KEGG and BioCarta sets (in the same
file) carry their own, restrictive terms and are skipped on purpose, as are PID and the rest.

Rules: genes are mapped to current NCBI symbols through the shipped gene id table (a current
symbol is kept; an alias naming exactly one gene becomes that gene's symbol; anything else is
kept as it is), terms keep their MSigDB name as id (``HALLMARK_APOPTOSIS``) and a readable
name (``Apoptosis``), and terms with fewer than ``min_size`` genes are dropped.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..config import check, option, to_dict
from ..errors import InputError
from ..rundir import atomic_write_json

PEGASUS = "pegasuspy==1.10.2"
HALLMARK_MEMBER = "pegasus/data_files/h.all.v7.5.1.symbols.gmt"
C2CP_MEMBER = "pegasus/data_files/c2.cp.v7.5.1.symbols.gmt"
#: library file -> (source member, id prefix kept, licence)
LIBRARIES = {
    "hallmark": (HALLMARK_MEMBER, "HALLMARK_", "MSigDB Hallmark v7.5.1: CC BY 4.0 (Liberzon et al. 2015)"),
    "reactome": (C2CP_MEMBER, "REACTOME_", "Reactome via MSigDB v7.5.1: CC BY 4.0 (MSigDB), Reactome data CC0 (Gillespie et al. 2022)"),
    "wikipathways": (C2CP_MEMBER, "WP_", "WikiPathways via MSigDB v7.5.1: CC BY 4.0 (MSigDB), WikiPathways data CC0 (Martens et al. 2021)"),
}


@dataclass
class BuildMSigDBConfig:
    """Options of ``sccircuits genesets build-msigdb``."""

    out: str = option("", "output directory (hallmark.gmt.gz, reactome.gmt.gz, wikipathways.gmt.gz, msigdb.json)")
    wheel: str | None = option(None, "pegasuspy wheel or unpacked directory (default: pip download pegasuspy==1.10.2)")
    gene_table: str | None = option(None, "gene id table for symbol updates (default: the shipped gene_ids.tsv.gz)")
    min_size: int = option(5, "smallest term kept (genes)")

    def __post_init__(self) -> None:
        check(bool(self.out), "build-msigdb: --out is required")
        check(self.min_size >= 1, f"build-msigdb: min_size must be >= 1, got {self.min_size}")


def readable_name(term_id: str, prefix: str) -> str:
    """``REACTOME_CELL_CYCLE_CHECKPOINTS`` -> ``Cell cycle checkpoints``."""
    words = term_id[len(prefix):].replace("_", " ").strip().lower()
    return words[:1].upper() + words[1:]


def symbol_updater(table) -> "collections.abc.Callable[[str], str]":
    """Function symbol -> current NCBI symbol (unchanged when current or ambiguous/unknown)."""
    current = set(table["symbol"])
    alias_of = collections.defaultdict(set)
    for sym, aliases in table[["symbol", "aliases"]].itertuples(index=False):
        for a in aliases.split("|"):
            if a:
                alias_of[a].add(sym)

    def update(s: str) -> str:
        if s in current:
            return s
        hits = alias_of.get(s, ())
        return next(iter(hits)) if len(hits) == 1 else s

    return update


def select_sets(lines, prefix: str, update, min_size: int) -> tuple[dict, dict]:
    """Gene sets {id: (name, genes)} of the GMT ``lines`` whose id starts with ``prefix``,
    genes updated, plus counts."""
    sets, n_updated, n_small = {}, 0, 0
    for line in lines:
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3 or not fields[0].startswith(prefix):
            continue
        genes = {update(g) for g in fields[2:] if g}
        n_updated += sum(1 for g in fields[2:] if g and update(g) != g)
        if len(genes) < min_size:
            n_small += 1
            continue
        sets[fields[0]] = (readable_name(fields[0], prefix), sorted(genes))
    return sets, {"n_terms": len(sets), "n_genes": len({g for _, gs in sets.values() for g in gs}),
                  "n_symbols_updated": n_updated, "n_terms_too_small": n_small}


def _wheel_text(wheel: Path, member: str) -> list[str]:
    if wheel.is_dir():
        p = wheel / member
        if not p.is_file():
            raise InputError(wheel, f"no {member} inside")
        return p.read_text(encoding="utf-8").splitlines()
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member).decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError) as e:
        raise InputError(wheel, f"not a pegasuspy wheel with {member} ({e})") from None


def build_msigdb(cfg: BuildMSigDBConfig) -> dict:
    """Write the three libraries and ``msigdb.json`` (options, counts, licences) into
    ``cfg.out``; returns the metadata."""
    from ..genesets import write_gmt
    from . import gene_ids_path
    from .pbmc import read_gene_table

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    update = symbol_updater(read_gene_table(cfg.gene_table or gene_ids_path()))
    meta = {"options": {k: v for k, v in to_dict(cfg).items() if k not in ("out", "wheel", "gene_table")},
            "source": PEGASUS, "libraries": {}}
    with tempfile.TemporaryDirectory(prefix="sccircuits-msigdb-") as tmp:
        wheel = Path(cfg.wheel) if cfg.wheel else None
        if wheel is None:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PEGASUS, "-d", tmp],
                               capture_output=True, text=True)
            found = sorted(Path(tmp).glob("pegasuspy-*.whl"))
            if r.returncode != 0 or not found:
                raise InputError(None, f"pip download {PEGASUS} failed: pass --wheel ({r.stderr.strip()[-200:]})")
            wheel = found[-1]
        elif not wheel.exists():
            raise InputError(wheel, "not found")
        for name, (member, prefix, licence) in LIBRARIES.items():
            sets, stats = select_sets(_wheel_text(wheel, member), prefix, update, cfg.min_size)
            write_gmt(out / f"{name}.gmt.gz", sets)
            os.chmod(out / f"{name}.gmt.gz", 0o644)
            meta["libraries"][name] = {**stats, "member": member, "licence": licence}
    atomic_write_json(out / "msigdb.json", meta)
    os.chmod(out / "msigdb.json", 0o644)
    return meta
