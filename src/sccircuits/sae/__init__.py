"""TopK sparse autoencoders: the model, training, and SAELens / bio-sae storage.

``TopKSAE.encode`` takes RAW residuals (it subtracts the stored activation mean itself) and
``decode`` adds the mean back. See :mod:`sccircuits.sae.model` for the formula,
:mod:`sccircuits.sae.io` for the on-disk layouts and :mod:`sccircuits.sae.train` for training.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "import_bio_sae": ".io", "load_bio_sae": ".io", "load_sae": ".io", "load_saes": ".io", "save_sae": ".io",
    "TopKSAE": ".model", "topk_relu": ".model", "train_saes": ".train", "SAETrainConfig": ".config",
}

__all__ = ["TopKSAE", "topk_relu", "load_sae", "load_saes", "save_sae", "load_bio_sae",
           "import_bio_sae", "train_saes", "SAETrainConfig"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
