"""Gene-level predictions and their validation against CRISPRi Perturb-seq (issue 8).

- :mod:`.predictions`: :func:`predict_genes` (edges x top genes -> gene-pair predictions).
- :mod:`.perturb`: reading a Replogle-2022-layout screen in row chunks (backed mode).
- :mod:`.metrics`: pure statistics (fold change, accuracy vs sign-bias baseline, bootstrap).
- :mod:`.core`: :func:`validate`, the stage (tables in ``RUN/validation/``).
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    'ValidateConfig': '.config',
    'ValidationResult': '.core',
    'summary_table': '.core',
    'validate': '.core',
    'PredictConfig': '.config',
    'add_status': '.predictions',
    'predict_genes': '.predictions',
    'read_predictions': '.predictions',
    'write_predictions': '.predictions',
}

__all__ = ["PredictConfig", "ValidateConfig", "ValidationResult", "add_status", "predict_genes",
           "read_predictions", "summary_table", "validate", "write_predictions"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
