"""TopK sparse autoencoders: the model, training, and SAELens / bio-sae storage.

``TopKSAE.encode`` takes RAW residuals (it subtracts the stored activation mean itself) and
``decode`` adds the mean back. See :mod:`sccircuits.sae.model` for the formula,
:mod:`sccircuits.sae.io` for the on-disk layouts and :mod:`sccircuits.sae.train` for training.
"""

from __future__ import annotations

_EXPORTS = {
    "import_bio_sae": ".io", "load_bio_sae": ".io", "load_sae": ".io", "load_saes": ".io", "save_sae": ".io",
    "TopKSAE": ".model", "topk_relu": ".model", "train_saes": ".train", "SAETrainConfig": ".config",
}

__all__ = ["TopKSAE", "topk_relu", "load_sae", "load_saes", "save_sae", "load_bio_sae",
           "import_bio_sae", "train_saes", "SAETrainConfig"]


def __getattr__(name: str):
    """Import the SAE code only when one of its names is used (so that importing the options
    dataclass, e.g. for the CLI, does not load torch)."""
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
