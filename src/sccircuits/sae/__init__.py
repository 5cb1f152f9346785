"""TopK sparse autoencoders: the model, training, and SAELens / bio-sae storage.

``TopKSAE.encode`` takes RAW residuals (it subtracts the stored activation mean itself) and
``decode`` adds the mean back. See :mod:`sccircuits.sae.model` for the formula,
:mod:`sccircuits.sae.io` for the on-disk layouts and :mod:`sccircuits.sae.train` for training.
"""

from __future__ import annotations

from .io import import_bio_sae, load_bio_sae, load_sae, load_saes, save_sae
from .model import TopKSAE, topk_relu

__all__ = ["TopKSAE", "topk_relu", "load_sae", "load_saes", "save_sae", "load_bio_sae",
           "import_bio_sae", "train_saes", "SAETrainConfig"]


def __getattr__(name: str):
    # training pulls in the activation store; import it only when asked for
    if name in ("train_saes", "SAETrainConfig"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
