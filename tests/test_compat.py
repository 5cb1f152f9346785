"""Compat is one rule in every stage: ``--compat reference`` supplies the published values as
defaults, and an explicit value that contradicts them is a one-line error naming the option
(never silently replaced)."""

from __future__ import annotations

import sys

import pytest

from sccircuits import cli
from sccircuits.activations import ExtractConfig
from sccircuits.annotate.stage import AnnotateConfig
from sccircuits.config import from_dict, to_dict
from sccircuits.errors import ConfigError
from sccircuits.sae.train import SAETrainConfig
from sccircuits.trace.config import TraceConfig

# config class -> (an option compat decides, its value without compat, with compat, a contradicting value)
RULES = {
    TraceConfig: [("tokenization", "official", "reference", "official"), ("dtype", "float32", "float32", "bfloat16"),
                  ("d_threshold", 0.5, 0.5, 1.0), ("consistency_threshold", 0.7, 0.7, 0.9),
                  ("consistency_kind", "reference", "reference", "nonzero"), ("min_cells", 3, 2, 5),
                  ("top_per_layer", 50, 50, 0)],
    AnnotateConfig: [("min_count", 5, 1, 5)],
    ExtractConfig: [("tokenization", "official", "reference", "official")],
    SAETrainConfig: [("recipe", "ours", "reference", "ours")],
}
CASES = [(cls, *rule) for cls, rules in RULES.items() for rule in rules]


@pytest.mark.parametrize("cls, name, ours, published, wrong", CASES,
                         ids=[f"{c[0].__name__}.{c[1]}" for c in CASES])
def test_compat_supplies_defaults_and_refuses_contradictions(cls, name, ours, published, wrong):
    assert getattr(cls(), name) == ours
    assert getattr(cls(compat="reference"), name) == published
    assert getattr(cls(compat="reference", **{name: published}), name) == published  # agreeing: fine
    assert getattr(cls(**{name: wrong}), name) == wrong  # without compat the user's value stands
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag} .* contradicts --compat reference"):
        cls(compat="reference", **{name: wrong})
    cfg = cls(compat="reference")
    assert from_dict(cls, to_dict(cfg)) == cfg  # a saved manifest reads back


def test_one_spelling_of_compat():
    for cls in RULES:
        assert cls().compat == "none"
        with pytest.raises(ConfigError, match="compat must be 'none' or 'reference'"):
            cls(compat="published")
    assert AnnotateConfig(compat="").compat == "none"  # manifests written before the rule was shared
    with pytest.raises(ConfigError, match="--max-q"):
        TraceConfig(compat="reference", max_q=0.05)


@pytest.mark.parametrize("argv, flag", [
    (["trace", "--run", "RUN", "--compat", "reference", "--d-threshold", "1.0"], "--d-threshold"),
    (["trace", "--run", "RUN", "--compat", "reference", "--dtype", "bfloat16"], "--dtype"),
    (["annotate", "--run", "RUN", "--gene-sets", "G", "--compat", "reference", "--min-count", "5"], "--min-count"),
    (["extract", "--model", "M", "--data", "D", "--out", "O", "--compat", "reference", "--tokenization", "official"],
     "--tokenization"),
    (["train-sae", "--run", "RUN", "--compat", "reference", "--recipe", "ours"], "--recipe"),
], ids=lambda x: x[0] if isinstance(x, list) else x)
def test_each_command_refuses_a_contradiction(monkeypatch, capsys, argv, flag):
    monkeypatch.setattr(sys, "argv", ["sccircuits", *argv])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    err = capsys.readouterr().err
    assert ex.value.code == 2, err
    assert f"{flag} " in err and "contradicts --compat reference" in err
    assert len(err.strip().splitlines()) == 1, err
