"""Gene-level predictions and their validation against CRISPRi Perturb-seq (issue 8).

- :mod:`.predictions`: :func:`predict_genes` (edges x top genes -> gene-pair predictions).
- :mod:`.perturb`: reading a Replogle-2022-layout screen in row chunks (backed mode).
- :mod:`.metrics`: pure statistics (fold change, accuracy vs sign-bias baseline, bootstrap).
- :mod:`.core`: :func:`validate`, the stage (tables in ``RUN/validation/``).
"""

from .core import ValidateConfig, ValidationResult, summary_table, validate
from .predictions import PredictConfig, add_status, predict_genes, read_predictions, write_predictions

__all__ = ["PredictConfig", "ValidateConfig", "ValidationResult", "add_status", "predict_genes",
           "read_predictions", "summary_table", "validate", "write_predictions"]
