"""Circuit analyses (one run) and cross-condition comparison (docs/method.md §6).

>>> from sccircuits.analysis import analyze, compare, AnalyzeConfig, CompareConfig
>>> summary = analyze("runs/gf_k562")                       # writes runs/gf_k562/analysis/
>>> result = compare(["runs/gf_k562", "runs/scgpt_ts"],      # writes cmp/
...                  groups="geneformer=gf_k562;scgpt=scgpt_ts", out="cmp")

Every statistic is a pure function of DataFrames in the submodules: :mod:`.summary` (counts,
effect sizes, sign balance, attenuation, hubs), :mod:`.coherence`, :mod:`.consensus`,
:mod:`.novel`, :mod:`.hierarchy`, :mod:`.tissue`, :mod:`.disease`, :mod:`.graph` (GraphML).
"""

from .config import AnalyzeConfig, CompareConfig
from .pipeline import analyze, compare, summarize

__all__ = ["AnalyzeConfig", "CompareConfig", "analyze", "compare", "summarize"]
