"""The restricted unpickler: plain dictionaries load, anything that would run code is refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from sccircuits.errors import InputError
from sccircuits.models.pickles import load_dictionary


class _RunsCode:
    """Unpickling this calls os.system (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_plain_dict_loads(tmp_path):
    d = {"ENSG00000000001": 4, "ENSG00000000002": 5, "<pad>": 0, "x": 1.5, "y": None, "z": True}
    assert load_dictionary(_write_pickle(tmp_path / "t.pkl", d)) == d


def test_numpy_scalars_become_python_numbers(tmp_path):
    d = {"ENSG1": np.float32(1.25), "ENSG2": np.float64(2.5), "ENSG3": np.int64(7)}
    out = load_dictionary(_write_pickle(tmp_path / "m.pkl", d))
    assert out == {"ENSG1": 1.25, "ENSG2": 2.5, "ENSG3": 7}
    assert type(out["ENSG1"]) is float and type(out["ENSG3"]) is int


def test_code_running_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_pickle(tmp_path / "token_dictionary.pkl", {"ENSG1": _RunsCode(marker)})
    with pytest.raises(InputError) as err:
        load_dictionary(path)
    assert not marker.exists(), "the payload ran"
    msg = str(err.value)
    assert str(path) in msg and "system" in msg  # names the file and the refused global


@pytest.mark.parametrize("obj", [{"a": {1, 2}}, {"a": eval}, {"a": object()}])
def test_other_globals_are_refused(tmp_path, obj):
    try:
        data = pickle.dumps(obj, protocol=4)
    except Exception:  # object() instances cannot always be pickled; nothing to test then
        pytest.skip("unpicklable test object")
    path = tmp_path / "d.pkl"
    path.write_bytes(data)
    with pytest.raises(InputError, match="d.pkl"):
        load_dictionary(path)


def test_non_dict_and_nested_values_are_refused(tmp_path):
    with pytest.raises(InputError, match="expected a dictionary"):
        load_dictionary(_write_pickle(tmp_path / "l.pkl", ["ENSG1", "ENSG2"]))
    with pytest.raises(InputError, match="strings and numbers"):
        load_dictionary(_write_pickle(tmp_path / "n.pkl", {"a": [1, 2]}))


def test_corrupt_pickle_and_json(tmp_path):
    good = pickle.dumps({"ENSG1": 1}, protocol=4)
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cut.pkl"):
        load_dictionary(tmp_path / "cut.pkl")
    (tmp_path / "d.json").write_text(json.dumps({"ENSG1": 3}))
    assert load_dictionary(tmp_path / "d.json") == {"ENSG1": 3}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_dictionary(tmp_path / "bad.json")
    with pytest.raises(InputError, match="missing.pkl"):
        load_dictionary(tmp_path / "missing.pkl")


def test_numpy_1_pickles_load(tmp_path):
    """Dictionaries pickled under numpy 1.x name ``numpy.core.multiarray.scalar``."""
    data = pickle.dumps({"ENSG1": np.float64(0.75)}, protocol=2)
    assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "old.pkl").write_bytes(data)
    assert load_dictionary(tmp_path / "old.pkl") == {"ENSG1": 0.75}
