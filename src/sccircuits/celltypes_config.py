"""Options of ``sccircuits celltypes`` (one dataclass; importing it is cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import check, option


@dataclass
class CellTypeConfig:
    """Options of ``sccircuits celltypes``."""

    data: str = option("", "the .h5ad the activations were extracted from (default: the extract stage's data)")
    label_column: str = option("cell_type", "obs column with the cell-type labels")
    subset: str = option("", "test only the cells with obs[COLUMN] == VALUE, given as COLUMN=VALUE (e.g. one "
                             "batch, so that batch differences are not read as cell-type differences)")
    min_cells: int = option(3, "cell types with fewer extracted cells are left out of the test")
    alpha: float = option(0.05, "FDR level reported in the stage metrics")
    batch_size: int = option(8192, "positions per SAE encode batch")

    def __post_init__(self) -> None:
        check(bool(self.label_column), "celltypes: label_column must not be empty")
        check(not self.subset or ("=" in self.subset and self.subset.split("=", 1)[0] != ""),
              f"celltypes: subset must look like COLUMN=VALUE, got {self.subset!r}")
        check(self.min_cells >= 2, f"celltypes: min_cells must be >= 2, got {self.min_cells}")
        check(0 < self.alpha < 1, "celltypes: alpha must be in (0, 1)")
        check(self.batch_size >= 1, "celltypes: batch_size must be >= 1")
