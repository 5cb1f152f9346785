"""GMT and gene-pair file reading: valid files round-trip, malformed lines name their line."""

from __future__ import annotations

import gzip

import pytest

from sccircuits.errors import InputError
from sccircuits.genesets import library_name, read_gmt, read_pairs, write_gmt


def _write(path, text: str, gz: bool = False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_plain_and_gzip(tmp_path, gz):
    p = _write(tmp_path / ("a.gmt.gz" if gz else "a.gmt"),
               "T1\tterm one\tA\tB\tB\n\nT2\t\tC\tD\t\r\n", gz=gz)
    sets = read_gmt(p)
    assert list(sets) == ["T1", "T2"]  # file order kept, blank line skipped
    assert sets["T1"] == ("term one", frozenset({"A", "B"}))  # duplicate gene merged
    assert sets["T2"] == ("", frozenset({"C", "D"}))  # trailing tab and CRLF ignored


def test_enrichr_style_ids_and_weights(tmp_path):
    p = _write(tmp_path / "GO_Biological_Process_2023.txt",
               "regulation of X (GO:0001234)\t\tTP53,1.0\tMYC\n")
    sets = read_gmt(p)
    assert sets == {"GO:0001234": ("regulation of X", frozenset({"TP53", "MYC"}))}
    assert library_name(p) == "GO_Biological_Process_2023"


def test_round_trip(tmp_path):
    sets = {"GO:1": ("alpha", frozenset({"B", "A"})), "GO:2": ("beta", frozenset({"C"}))}
    for name in ("x.gmt", "x.gmt.gz"):
        write_gmt(tmp_path / name, sets)
        assert read_gmt(tmp_path / name) == sets
    assert (tmp_path / "x.gmt").read_text() == "GO:1\talpha\tA\tB\nGO:2\tbeta\tC\n"


@pytest.mark.parametrize("text, line, words", [
    ("T1\td\tA\nT2 d A B\n", 2, "field"),                      # space separated: 1 field
    ("T1\td\tA\nT2\td\n", 2, "at least one gene"),            # no genes
    ("T1\td\tA\n\nT1\tagain\tB\n", 3, "duplicate term id 'T1' (first seen on line 1)"),
    ("T1\td\tA\t\tB\n", 1, "empty gene field"),
    ("T1\td\tA\t7157\n", 1, "number"),                         # Entrez id, not a symbol
    ("T1\td\tA\n\t\tB\n", 2, "empty term id"),
])
def test_malformed_lines_name_the_line(tmp_path, text, line, words):
    p = _write(tmp_path / "bad.gmt", text)
    with pytest.raises(InputError) as e:
        read_gmt(p)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}:" in msg and words in msg


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_gmt(tmp_path / "nope.gmt")
    with pytest.raises(InputError, match="no gene sets"):
        read_gmt(_write(tmp_path / "empty.gmt", "\n\n"))
    (tmp_path / "bin.gmt").write_bytes(b"\xff\xfe\x00T1\td\tA")
    with pytest.raises(InputError, match="UTF-8"):
        read_gmt(tmp_path / "bin.gmt")


def test_write_rejects_tabs_and_empty_terms(tmp_path):
    with pytest.raises(ValueError, match="tab"):
        write_gmt(tmp_path / "x.gmt", {"T\t1": ("n", {"A"})})
    with pytest.raises(ValueError, match="at least one gene"):
        write_gmt(tmp_path / "x.gmt", {"T1": ("n", set())})
    with pytest.raises(ValueError, match="not a string"):
        write_gmt(tmp_path / "x.gmt", {"T1": ("n", {7157})})


def test_read_pairs(tmp_path):
    p = _write(tmp_path / "trrust.tsv", "# comment\nTF\ttarget\tmode\nSTAT3\tMYC\tActivation\n"
                                        "MYC\tMYC\tRepression\nGATA1\tKLF1\n")
    assert read_pairs(p) == [("STAT3", "MYC"), ("GATA1", "KLF1")]  # header, comment, self pair gone
    with pytest.raises(InputError, match="line 2"):
        read_pairs(_write(tmp_path / "bad.tsv", "A\tB\nC\n"))
