"""GO biological-process gene sets and a gene id table from Bioconductor's SQLite annotation files.

Source: Debian's ``r-bioc-org.hs.eg.db`` (``org.Hs.eg.sqlite``: NCBI Entrez genes, symbols,
Ensembl ids and direct GO annotations) and ``r-bioc-go.db`` (``GO.sqlite``: GO terms and the
parent graph). :func:`build_go` fetches the two .deb files with ``apt-get download``, unpacks
them with ``dpkg -x`` and reads the SQLite files with :mod:`sqlite3`, or takes local paths.

Rules (documented in ``assets/README.md`` too):

- annotations: org.Hs.eg.db's ``go_bp`` table (direct annotations), **all evidence codes**
  (IEA and ND included; the ND annotations are to the root term, which the size filter drops);
- propagation: a gene annotated to a term also belongs to every ancestor along ``is_a`` and
  ``part_of`` edges of GO.db's ``go_bp_parents`` (the true-path rule). ``regulates`` edges are
  not followed unless ``follow_regulates`` is set; org.Hs.eg.db's pre-propagated ``go_bp_all``
  follows them, which is why we do not use it;
- genes are NCBI gene symbols; the root ``GO:0008150`` is never written; terms keep their size
  (distinct symbols) between ``min_size`` and ``max_size`` inclusive;
- id table: one row per (symbol, Entrez id, Ensembl id) link, an empty Ensembl id when the gene
  has none; a ``aliases`` column (``|``-separated previous symbols) helps map old symbols.
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import check, option, to_dict
from ..errors import InputError
from ..rundir import atomic_write_bytes, atomic_write_json

ORGDB_PACKAGE = "r-bioc-org.hs.eg.db"
GODB_PACKAGE = "r-bioc-go.db"
ROOT_BP = "GO:0008150"
PROPAGATED_RELATIONS = ("isa", "part of")
REGULATES_RELATIONS = ("regulates", "positively regulates", "negatively regulates")


@dataclass
class BuildGOConfig:
    """Options of ``sccircuits genesets build-go``."""

    out: str = option("", "output directory (go_bp.gmt.gz, gene_ids.tsv.gz, go_bp.json)")
    orgdb: str | None = option(None, "org.Hs.eg.db: a .deb file, an unpacked directory or the "
                                     "org.Hs.eg.sqlite file (default: apt-get download it)")
    godb: str | None = option(None, "GO.db: a .deb file, an unpacked directory or GO.sqlite "
                                    "(default: apt-get download it)")
    min_size: int = option(5, "smallest term kept (distinct gene symbols)")
    max_size: int = option(500, "largest term kept (distinct gene symbols)")
    follow_regulates: bool = option(False, "also propagate along 'regulates' edges (as org.Hs.eg.db's go_bp_all does)")

    def __post_init__(self) -> None:
        check(bool(self.out), "build-go: --out is required")
        check(self.min_size >= 1, f"build-go: min_size must be >= 1, got {self.min_size}")
        check(self.max_size >= self.min_size,
              f"build-go: max_size ({self.max_size}) must be >= min_size ({self.min_size})")


# --------------------------------------------------------------------------- locating the files

def _apt_download(package: str, dest: Path) -> Path:
    """``apt-get download package`` into ``dest`` (running ``apt-get update`` once if needed)."""
    if shutil.which("apt-get") is None:
        raise InputError(None, f"apt-get not found: download {package} yourself and pass its path")
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if r.returncode == 0 and debs:
            return debs[-1]
        if attempt == 0:
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    raise InputError(None, f"apt-get download {package} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")


def _unpack_deb(deb: Path, dest: Path) -> Path:
    """``dpkg -x deb dest``; returns dest."""
    if shutil.which("dpkg") is None:
        raise InputError(deb, "dpkg not found: unpack the .deb yourself and pass the .sqlite file")
    r = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(deb, f"dpkg -x failed: {r.stderr.strip()}")
    return dest


def locate_sqlite(path: str | os.PathLike | None, package: str, filename: str, workdir: Path) -> Path:
    """The SQLite file ``filename`` from a .deb, a directory, the file itself, or (path None)
    a freshly downloaded .deb of ``package``."""
    if path is None:
        src = _apt_download(package, workdir)
    else:
        src = Path(path)
        if not src.exists():
            raise InputError(src, "not found")
    if src.is_file() and src.suffix == ".deb":
        src = _unpack_deb(src, workdir / package)
    if src.is_dir():
        hits = sorted(src.rglob(filename))
        if not hits:
            raise InputError(src, f"no {filename} inside")
        src = hits[0]
    with open(src, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise InputError(src, "not an SQLite database")
    return src


def _connect(path: Path, tables: tuple[str, ...]) -> sqlite3.Connection:
    """Read-only connection; error if a required table is missing."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    have = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    missing = [t for t in tables if t not in have]
    if missing:
        raise InputError(path, f"missing table(s) {', '.join(missing)}: not the expected Bioconductor database")
    return con


# --------------------------------------------------------------------------- reading

def read_gene_table(orgdb: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """Rows (symbol, entrez_id, ensembl_id or "", aliases "|"-joined) sorted by symbol."""
    sym = dict(orgdb.execute("select g._id, i.symbol from genes g join gene_info i on g._id = i._id"))
    entrez = dict(orgdb.execute("select _id, gene_id from genes"))
    ens = collections.defaultdict(list)
    for i, e in orgdb.execute("select _id, ensembl_id from ensembl"):
        ens[i].append(e)
    alias = collections.defaultdict(list)
    for i, a in orgdb.execute("select _id, alias_symbol from alias"):
        if a != sym.get(i):
            alias[i].append(a)
    rows = []
    for i, s in sym.items():
        aliases = "|".join(sorted(set(alias[i])))
        for e in sorted(ens[i]) or [""]:
            rows.append((s, entrez[i], e, aliases))
    rows.sort(key=lambda r: (r[0], int(r[1]), r[2]))
    return rows


def go_bp_terms(godb: sqlite3.Connection) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """({BP term id: name}, {term: [(parent term, relationship)]}) from GO.db."""
    ids = {}
    names = {}
    for i, go, term, ont in godb.execute("select _id, go_id, term, ontology from go_term"):
        ids[i] = go
        if ont == "BP":
            names[go] = term
    parents = collections.defaultdict(list)
    for c, p, rel in godb.execute("select _id, _parent_id, relationship_type from go_bp_parents"):
        if ids[p] in names:  # skip the artificial 'all' root
            parents[ids[c]].append((ids[p], rel))
    return names, parents


def ancestors_closure(parents: dict[str, list[tuple[str, str]]], relations: tuple[str, ...]):
    """A function term -> frozenset(term and all its ancestors along ``relations``), memoised."""
    memo: dict[str, frozenset[str]] = {}

    def anc(term: str) -> frozenset[str]:
        if term in memo:
            return memo[term]
        stack, seen = [term], {term}
        while stack:  # iterative DFS: GO is deep enough to make recursion fragile
            t = stack.pop()
            for p, rel in parents.get(t, ()):
                if rel in relations and p not in seen:
                    seen.add(p)
                    stack.append(p)
        memo[term] = frozenset(seen)
        return memo[term]

    return anc


def propagate(direct: list[tuple[str, str]], ancestors) -> dict[str, set[str]]:
    """{term: genes} from direct (gene, term) annotations, each gene added to all ancestors."""
    sets: dict[str, set[str]] = collections.defaultdict(set)
    for gene, term in direct:
        for t in ancestors(term):
            sets[t].add(gene)
    return sets


def build_sets(orgdb: sqlite3.Connection, godb: sqlite3.Connection, min_size: int, max_size: int,
               follow_regulates: bool = False) -> tuple[dict[str, tuple[str, list[str]]], dict]:
    """GO BP gene sets {term_id: (name, sorted symbols)} within the size bounds, plus stats."""
    names, parents = go_bp_terms(godb)
    sym = dict(orgdb.execute("select g._id, i.symbol from genes g join gene_info i on g._id = i._id"))
    direct, evidence, unknown = [], collections.Counter(), set()
    for i, go, ev in orgdb.execute("select _id, go_id, evidence from go_bp"):
        if go not in names:
            unknown.add(go)
            continue
        if i in sym:
            direct.append((sym[i], go))
            evidence[ev] += 1
    relations = PROPAGATED_RELATIONS + (REGULATES_RELATIONS if follow_regulates else ())
    sets = propagate(direct, ancestors_closure(parents, relations))
    sizes = {t: len(g) for t, g in sets.items()}
    kept = {t: (names[t], sorted(g)) for t, g in sorted(sets.items())
            if t != ROOT_BP and min_size <= len(g) <= max_size}
    stats = {
        "n_direct_annotations": len(direct),
        "n_annotated_genes": len({g for g, _ in direct}),
        "evidence_counts": dict(evidence.most_common()),
        "n_terms_with_genes": len(sets),
        "n_terms_too_small": sum(1 for t, n in sizes.items() if n < min_size and t != ROOT_BP),
        "n_terms_too_large": sum(1 for t, n in sizes.items() if n > max_size and t != ROOT_BP),
        "n_annotation_terms_not_in_godb": len(unknown),
        "n_terms": len(kept),
        "n_genes_in_terms": len({g for _, gs in kept.values() for g in gs}),
        "relations_followed": list(relations),
    }
    return kept, stats


def source_metadata(orgdb: sqlite3.Connection, godb: sqlite3.Connection) -> dict:
    """Release facts from the metadata tables of both databases."""
    om = dict(orgdb.execute("select name, value from metadata"))
    gm = dict(godb.execute("select name, value from metadata"))
    return {
        "go_source": gm.get("GOSOURCEURL"),
        "go_release_date": gm.get("GOSOURCEDATE"),
        "go_annotation_source": om.get("GOEGSOURCENAME"),
        "go_annotation_date": om.get("GOEGSOURCEDATE"),
        "entrez_gene_date": om.get("EGSOURCEDATE"),
        "ensembl_date": om.get("ENSOURCEDATE"),
        "organism": om.get("ORGANISM"),
    }


# --------------------------------------------------------------------------- writing

def write_gene_table(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """gzip TSV with header symbol, entrez_id, ensembl_id, aliases (atomic, reproducible bytes)."""
    buf = io.StringIO()
    buf.write("symbol\tentrez_id\tensembl_id\taliases\n")
    for r in rows:
        buf.write("\t".join(r) + "\n")
    atomic_write_bytes(path, gzip.compress(buf.getvalue().encode("utf-8"), mtime=0))


def build_go(cfg: BuildGOConfig) -> dict:
    """Write ``go_bp.gmt.gz``, ``gene_ids.tsv.gz`` and ``go_bp.json`` (sources, options,
    counts) into ``cfg.out``; returns the metadata dict."""
    from ..genesets import write_gmt

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sccircuits-go-") as tmp:
        work = Path(tmp)
        org_path = locate_sqlite(cfg.orgdb, ORGDB_PACKAGE, "org.Hs.eg.sqlite", work)
        go_path = locate_sqlite(cfg.godb, GODB_PACKAGE, "GO.sqlite", work)
        orgdb = _connect(org_path, ("genes", "gene_info", "ensembl", "alias", "go_bp", "metadata"))
        godb = _connect(go_path, ("go_term", "go_bp_parents", "metadata"))
        try:
            sets, stats = build_sets(orgdb, godb, cfg.min_size, cfg.max_size, cfg.follow_regulates)
            rows = read_gene_table(orgdb)
            meta = {"options": {k: v for k, v in to_dict(cfg).items() if k not in ("out", "orgdb", "godb")},
                    "sources": source_metadata(orgdb, godb), **stats,
                    "gene_table_rows": len(rows), "licence": "GO data: CC BY 4.0 (geneontology.org)"}
        finally:
            orgdb.close()
            godb.close()
    write_gmt(out / "go_bp.gmt.gz", sets)
    write_gene_table(out / "gene_ids.tsv.gz", rows)
    atomic_write_json(out / "go_bp.json", meta)
    for name in ("go_bp.gmt.gz", "gene_ids.tsv.gz", "go_bp.json"):
        os.chmod(out / name, 0o644)  # temp files are created 0600; shipped files must be readable
    return meta
