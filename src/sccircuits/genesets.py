"""Gene-set (GMT) and gene-network (two-column TSV) files.

GMT format, one term per line, tab-separated::

    term_id <TAB> description <TAB> gene <TAB> gene ...

Reading rules (:func:`read_gmt`), chosen so that real library files load and broken ones fail
loudly with the line number:

- plain text or gzip (``.gz``), UTF-8; ``\\r\\n`` line ends are fine;
- blank lines (empty or whitespace only) are skipped anywhere in the file, they carry no term;
- trailing tabs are ignored (many published files end lines with a tab); the description
  may be empty;
- Enrichr-style ids ``"regulation of X (GO:0001234)"`` with an empty description become
  term id ``GO:0001234`` and name ``regulation of X``;
- Enrichr-style weighted genes ``"TP53,1.0"`` keep only the symbol;
- duplicate genes inside a term are merged (the set is a ``frozenset``).

Errors (:class:`~sccircuits.errors.InputError` naming the file and the line): a line with fewer
than 3 fields (no genes; often a space-separated file), an empty term id, a term id seen
before (both line numbers), an empty gene field between genes, a gene that is not a symbol
(a number-only token such as an Entrez id ``7157``, which would never match the model's
symbols), a file that is not UTF-8 text.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from .errors import InputError

GeneSets = dict[str, tuple[str, frozenset[str]]]

_ENRICHR_GO = re.compile(r"^(?P<name>.*\S)\s*\((?P<id>GO:\d{7})\)$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _open_text(path: Path) -> io.TextIOBase:
    """Open a plain or gzip text file for reading (gzip detected by its magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline=None)
    return open(path, encoding="utf-8", newline=None)


def _lines(path: str | os.PathLike) -> Iterable[tuple[int, str]]:
    """(1-based line number, line without its end) of a text file, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with _open_text(path) as fh:
            for i, line in enumerate(fh, start=1):
                yield i, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file") from None
    except (OSError, EOFError) as e:  # e.g. truncated gzip
        raise InputError(path, f"cannot read file ({e})") from None


def _clean_gene(token: str) -> str:
    """Symbol of a gene field: strip spaces and an Enrichr weight suffix (``TP53,1.0``)."""
    token = token.strip()
    if "," in token:
        sym, _, weight = token.partition(",")
        if _NUMBER.match(weight.strip()):
            token = sym.strip()
    return token


def parse_gmt_line(fields: list[str]) -> tuple[str, str, list[str], str | None]:
    """Parse the tab-separated fields of one GMT line -> (term_id, name, genes, problem).

    ``problem`` is None for a valid line, else a short description of what is wrong.
    """
    while fields and fields[-1].strip() == "":
        fields = fields[:-1]
    if len(fields) < 3:
        return "", "", [], (f"expected 'term_id<TAB>description<TAB>gene...' but found {len(fields)} "
                            "tab-separated field(s) (a term needs at least one gene)")
    term_id, name = fields[0].strip(), fields[1].strip()
    if not term_id:
        return "", "", [], "empty term id"
    if not name:
        m = _ENRICHR_GO.match(term_id)
        if m:
            term_id, name = m.group("id"), m.group("name")
    genes = []
    for j, raw in enumerate(fields[2:], start=3):
        gene = _clean_gene(raw)
        if not gene:
            return term_id, name, [], f"empty gene field (field {j}) in term {term_id!r}"
        if _NUMBER.match(gene):
            return term_id, name, [], (f"gene {gene!r} (field {j}) in term {term_id!r} is a number, "
                                       "not a gene symbol (convert Entrez ids to symbols)")
        genes.append(gene)
    return term_id, name, genes, None


def read_gmt(path: str | os.PathLike) -> GeneSets:
    """Read a GMT file (plain or gzip) -> ``{term_id: (term_name, frozenset(gene symbols))}``.

    Terms keep their file order. See the module docstring for the accepted format and the
    errors raised (:class:`~sccircuits.errors.InputError` with the line number).
    """
    sets: GeneSets = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        term_id, name, genes, problem = parse_gmt_line(line.split("\t"))
        if problem:
            raise InputError(path, f"line {lineno}: {problem}")
        if term_id in sets:
            raise InputError(path, f"line {lineno}: duplicate term id {term_id!r} "
                                   f"(first seen on line {first_line[term_id]})")
        sets[term_id] = (name, frozenset(genes))
        first_line[term_id] = lineno
    if not sets:
        raise InputError(path, "no gene sets in file")
    return sets


def write_gmt(path: str | os.PathLike, sets: Mapping[str, tuple[str, Iterable[str]]]) -> None:
    """Write gene sets as GMT (gzip when the name ends in ``.gz``), genes sorted, atomically.

    ``sets`` maps term id -> (term name, genes). Ids, names and genes must not contain tabs or
    line breaks, and every term needs at least one gene (so the file reads back unchanged).
    """
    from .rundir import atomic_write_bytes

    out = []
    for term_id, (name, genes) in sets.items():
        genes = sorted(set(genes))
        for what, value in [("term id", term_id), ("term name", name), *(("gene", g) for g in genes)]:
            if not isinstance(value, str):
                raise ValueError(f"{what} {value!r} of term {term_id!r} is not a string")
            if "\t" in value or "\n" in value or "\r" in value:
                raise ValueError(f"{what} {value!r} of term {term_id!r} contains a tab or line break")
        if not term_id.strip() or not genes:
            raise ValueError(f"term {term_id!r} needs a non-empty id and at least one gene")
        out.append("\t".join([term_id, name, *genes]))
    data = ("\n".join(out) + "\n").encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)


def library_name(path: str | os.PathLike) -> str:
    """Library name of a gene-set file: its file name without ``.gz``/``.gmt``/``.txt``/``.tsv``."""
    name = Path(path).name
    for ext in (".gz", ".gmt", ".txt", ".tsv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


_HEADER_WORDS = {"gene1", "gene2", "gene_a", "gene_b", "genea", "geneb", "protein1", "node1",
                 "#node1", "source", "target", "from", "to", "tf", "regulator", "symbol1", "a", "b"}


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a gene network as a two-column TSV (extra columns ignored) -> list of (gene, gene).

    Meant for STRING pairs (``gene1 gene2 [score]``, symbols) and TRRUST edges (``TF target
    mode PMIDs``). Lines starting with ``#`` and blank lines are skipped; a first line whose
    first field is a usual column name (gene1, protein1, node1, source, TF, ...) is a header.
    Self-pairs are dropped. Direction is kept here; callers decide whether it matters.
    """
    pairs: list[tuple[str, str]] = []
    for lineno, line in _lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not pairs and fields[0].lower() in _HEADER_WORDS:
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise InputError(path, f"line {lineno}: expected at least two tab-separated gene symbols")
        for g in fields[:2]:
            if _NUMBER.match(g):
                raise InputError(path, f"line {lineno}: {g!r} is a number, not a gene symbol")
        if fields[0] != fields[1]:
            pairs.append((fields[0], fields[1]))
    if not pairs:
        raise InputError(path, "no gene pairs in file")
    return pairs
