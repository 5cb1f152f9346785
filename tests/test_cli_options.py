"""The CLI exposes every config field with the config's own default and help, and parses
layer and feature lists with one-line errors."""

from __future__ import annotations

import dataclasses
import sys
import typing

import pytest
import typer

from sccircuits import cli
from sccircuits.activations import ExtractConfig
from sccircuits.analysis.config import AnalyzeConfig, CompareConfig
from sccircuits.annotate.stage import AnnotateConfig
from sccircuits.atlas.data import AtlasConfig
from sccircuits.config import parse_feature_spec, parse_int_list, parse_layers
from sccircuits.datasets.go import BuildGOConfig
from sccircuits.demo import DemoConfig
from sccircuits.errors import ConfigError
from sccircuits.pretrain import PretrainConfig
from sccircuits.report import ReportConfig
from sccircuits.sae.train import SAETrainConfig
from sccircuits.trace.config import TraceConfig
from sccircuits.validate.core import ValidateConfig
from sccircuits.validate.predictions import PredictConfig

# command -> (config class, prefix of each nested config's options)
COMMANDS = {
    ("genesets", "build-go"): (BuildGOConfig, {}),
    ("pretrain-demo",): (PretrainConfig, {}),
    ("extract",): (ExtractConfig, {}),
    ("train-sae",): (SAETrainConfig, {}),
    ("annotate",): (AnnotateConfig, {}),
    ("trace",): (TraceConfig, {}),
    ("analyze",): (AnalyzeConfig, {}),
    ("compare",): (CompareConfig, {"analyze": "analyze_"}),
    ("predict",): (PredictConfig, {}),
    ("validate",): (ValidateConfig, {}),
    ("demo",): (DemoConfig, {}),
    ("report",): (ReportConfig, {}),
    ("atlas",): (AtlasConfig, {}),
}


def _command(path):
    cmd = typer.main.get_command(cli.app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _leaf_fields(cls, prefixes, prefix="", skip=()):
    """(option name, field, declared default) of every non-config field, nested ones flattened
    (a nested ``compat`` is left out when the outer config has one: one --compat per stage)."""
    hints = typing.get_type_hints(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]):
            yield from _leaf_fields(inner[0], prefixes, prefix + prefixes.get(f.name, ""),
                                    skip=("compat",) if "compat" in own else ())
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield prefix + f.name, f, default


def _same_default(cli_default, default) -> bool:
    if isinstance(default, list):  # lists are comma-separated text on the command line
        return [x for x in (cli_default or "").split(",") if x] == [str(x) for x in default]
    return cli_default == default and type(cli_default) is type(default)


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p))
def test_every_config_field_is_an_option_with_the_same_default_and_help(path):
    cls, prefixes = COMMANDS[path]
    params = {p.name: p for p in _command(path).params}
    checked = 0
    for name, f, default in _leaf_fields(cls, prefixes):
        assert name in params, f"{' '.join(path)}: config field {f.name} has no option"
        p = params[name]
        assert f"--{name.replace('_', '-')}" in p.opts, (name, p.opts)
        assert p.help == f.metadata["help"] and p.help, f"{' '.join(path)} --{name}: help differs from the config"
        assert _same_default(p.default, default), f"{' '.join(path)} --{name}: default {p.default!r} != {default!r}"
        checked += 1
    assert checked >= 2


def test_an_option_reaches_the_config(monkeypatch, tmp_path):
    """Options (new ones included) land in the config the library function gets."""
    from typer.testing import CliRunner

    seen = {}

    def fake_run_trace(run, **kwargs):
        seen.update(kwargs)
        return "planned"

    import sccircuits.trace as tr

    monkeypatch.setattr(tr, "run_trace", fake_run_trace)
    res = CliRunner().invoke(cli.app, ["trace", "--run", str(tmp_path), "--plan", "--source-layers", "2,0,2",
                                       "--min-frequency", "0.2", "--no-null-ablation", "--encode-chunk", "64"])
    assert res.exit_code == 0, res.output
    cfg = seen["config"]
    assert isinstance(cfg, TraceConfig)
    assert (cfg.source_layers, cfg.min_frequency, cfg.null_ablation, cfg.encode_chunk) == ([0, 2], 0.2, False, 64)
    assert cfg.n_features == TraceConfig().n_features


def test_compare_nested_and_aliased_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import sccircuits.analysis as an

    seen = {}
    monkeypatch.setattr(an, "compare", lambda runs, groups, out, cfg: seen.setdefault("cfg", cfg) and {"consensus": {}})
    res = CliRunner().invoke(cli.app, ["compare", "A", "B", "--out", str(tmp_path), "--permutations", "9",
                                       "--analyze-n-perm", "7", "--edge-sets", "capped", "--contrast", "A:B"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.n_perm, cfg.analyze.n_perm, cfg.edge_sets, cfg.contrasts) == (9, 7, ["capped"], ["A:B"])


def test_layer_and_feature_parsers():
    assert parse_layers("3, 0,3") == [0, 3]
    assert parse_layers([2, 1]) == [1, 2]
    assert parse_layers(None) is None
    assert parse_layers("all", n_layers=4, allow_all=True) == [0, 1, 2, 3]
    assert parse_int_list("1,,2", "x") == [1, 2]
    assert parse_feature_spec("0:309,460;5:12,80;0:1") == {0: [1, 309, 460], 5: [12, 80]}
    for bad, match in [("0,x", "source_layers must be comma-separated integers"), ("all", "comma-separated"),
                       ("-1", ">= 0"), (",", "empty")]:
        with pytest.raises(ConfigError, match=match):
            parse_layers(bad, "source_layers")
    with pytest.raises(ConfigError, match="out of range"):
        parse_layers("0,9", n_layers=4)
    for bad in ("0:a", "x:1", "0:1:2", "0:", "0:-1", ";"):
        with pytest.raises(ConfigError, match="features"):
            parse_feature_spec(bad)


@pytest.mark.parametrize("argv, message", [
    (["trace", "--run", "RUN", "--source-layers", "0,x"], "source_layers must be comma-separated integers"),
    (["check-dtype", "--run", "RUN", "--source-layers", "0,x"], "source_layers must be comma-separated integers"),
    (["trace", "--run", "RUN", "--features", "0:a"], "features: the ids of layer 0"),
    (["annotate", "--run", "RUN", "--gene-sets", "G", "--layers", "1;2"], "layers must be comma-separated integers"),
    (["extract", "--model", "M", "--data", "D", "--out", "O", "--layers", "first"], "layers must be"),
    (["demo", "--source-layers", "0,a"], "source_layers must be comma-separated integers"),
])
def test_bad_lists_are_one_line_errors(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["sccircuits", *argv])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    err = capsys.readouterr().err
    assert ex.value.code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
