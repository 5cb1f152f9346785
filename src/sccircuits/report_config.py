"""Options of ``sccircuits report`` (one dataclass; importing it is cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import check, option


@dataclass
class ReportConfig:
    """Options of ``sccircuits report``."""

    top_circuits: int = option(25, "Number of strongest annotated edges listed as top circuits.")
    capped: bool = option(False, "Use the published top-N-capped edges (in_cap) in edge figures instead of "
                                 "the trace's edge set (column 'edge').")

    def __post_init__(self) -> None:
        check(self.top_circuits >= 0, "top_circuits must be >= 0")
