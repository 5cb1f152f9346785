from dataclasses import dataclass

import pytest

from sccircuits.config import check, from_dict, option, to_dict
from sccircuits.errors import ConfigError, InputError
from sccircuits.rundir import RunDir, read_json


@dataclass
class _Cfg:
    n: int = option(3, "a number")

    def __post_init__(self):
        check(self.n > 0, "n must be positive")


def test_stage_lifecycle_records_config_and_status(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.stage("extract") is None
    run.begin_stage("extract", _Cfg(5))
    assert not run.is_complete("extract")
    with pytest.raises(InputError, match="stage 'extract' has not completed"):
        run.require("extract")
    run.complete_stage("extract", outputs=["activations/"], metrics={"positions": 10})
    st = RunDir(tmp_path / "run", create=False).require("extract")
    assert st["config"] == {"n": 5} and st["metrics"] == {"positions": 10}


def test_config_roundtrip_and_validation():
    assert from_dict(_Cfg, to_dict(_Cfg(7))) == _Cfg(7)
    with pytest.raises(ConfigError):
        _Cfg(0)
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict(_Cfg, {"n": 1, "m": 2})


def test_missing_run_and_bad_json_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        RunDir(tmp_path / "nope", create=False)
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="x.json: not valid JSON"):
        read_json(bad)
