"""Saving and loading SAEs: our SAELens-compatible layout and the published bio-sae checkpoints.

Our layout, one directory per layer (``RUN/saes/layerNN/``)::

    cfg.json                          SAELens config (architecture "topk", d_in, d_sae, k, ...)
                                      plus a "sccircuits" block (layer, model, metrics, ...)
    sae_weights.safetensors           W_enc, b_enc, W_dec, b_dec exactly as SAELens expects them
    sccircuits_centring.safetensors   activation_mean and the centred-space biases

SAELens has no notion of an activation mean, so ``sae_weights.safetensors`` holds the mean
*folded into the biases* (``b_enc - mean @ W_enc`` and ``b_dec + mean``) with
``apply_b_dec_to_input: false``: ``SAE.load_from_disk`` then encodes RAW residuals the same
way we do (up to float rounding) and its strict state-dict load sees exactly its four keys.
Our loader reads the exact centred biases and mean from the second file. A plain SAELens TopK
SAE (no centring file) also loads: with ``apply_b_dec_to_input`` its ``b_dec`` becomes our
activation mean.

Published bio-sae layout (import only)::

    DIR/layerNN_x4_k32/sae_final.pt        {"model_state_dict": {W_enc.weight (4d, d), W_enc.bias,
                                             W_dec.weight (d, 4d), W_dec.bias}, "k", ...}
    DIR/layerNN_x4_k32/activation_mean.npy (d,)   (or DIR/activation_mean.npy / layerNN_activation_mean.npy)
"""

from __future__ import annotations

import os
import re

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..rundir import atomic_write_json, follow_umask, temp_path
from .model import TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
CENTRING_FILE = "sccircuits_centring.safetensors"
_OURS = re.compile(r"^layer(\d+)$")
_BIO = re.compile(r"^layer(\d+)_x(\d+)_k(\d+)$")


# ---------------------------------------------------------------------------- our layout
def saelens_cfg(sae: TopKSAE) -> dict:
    """The cfg.json dict: SAELens v6 keys (plus the legacy flat keys older versions read)."""
    meta = sae.metadata or {}
    layer = meta.get("layer")
    hook = None if layer is None else f"layer{int(layer)}.output"
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "meta": {"model_name": meta.get("model_name"), "hook_name": hook, "hook_layer": layer},
        # legacy (SAELens < 6) flat keys
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": sae.k},
        "model_name": meta.get("model_name"),
        "hook_name": hook,
        "hook_layer": layer,
        "finetuning_scaling_factor": False,
        "sccircuits": {"activation_mean_file": CENTRING_FILE,
                       "note": "sae_weights.safetensors has the activation mean folded into b_enc "
                               "and b_dec, so it encodes raw residuals",
                       **meta},
    }


def save_sae(sae: TopKSAE, path: str | os.PathLike) -> Path:
    """Write ``sae`` to directory ``path`` (created) in the layout above; files appear atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        W_enc = sae.W_enc.detach().cpu().float().contiguous()
        W_dec = sae.W_dec.detach().cpu().float().contiguous()
        mean = sae.activation_mean.detach().cpu().double()
        b_enc = sae.b_enc.detach().cpu().float()
        b_dec = sae.b_dec.detach().cpu().float()
        folded = {"W_enc": W_enc, "W_dec": W_dec,
                  "b_enc": (b_enc.double() - mean @ W_enc.double()).float().contiguous(),
                  "b_dec": (b_dec.double() + mean).float().contiguous()}
        centring = {"activation_mean": sae.activation_mean.detach().cpu().float().contiguous(),
                    "b_enc": b_enc.contiguous(), "b_dec": b_dec.contiguous()}
    for name, tensors in ((WEIGHTS_FILE, folded), (CENTRING_FILE, centring)):
        tmp = temp_path(path / name)
        save_file(tensors, str(tmp))
        follow_umask(tmp)
        os.replace(tmp, path / name)
    atomic_write_json(path / CFG_FILE, saelens_cfg(sae))
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as e:  # corrupt header etc.
        raise InputError(path, f"cannot read safetensors ({type(e).__name__}: {e})") from None


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> TopKSAE:
    """Load one SAE directory (our layout, or any SAELens TopK SAE)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "SAE directory not found")
    from ..rundir import read_json

    cfg = read_json(path / CFG_FILE)
    arch = cfg.get("architecture", cfg.get("activation_fn_str"))
    if arch != "topk":
        raise InputError(path / CFG_FILE, f"architecture {arch!r} is not supported (only 'topk')")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    for key, val in (("d_in", cfg.get("d_in")), ("d_sae", cfg.get("d_sae")), ("k", k)):
        if not isinstance(val, int):
            raise InputError(path / CFG_FILE, f"missing or non-integer '{key}'")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise InputError(path / CFG_FILE, f"normalize_activations={cfg['normalize_activations']!r} "
                                          "is not supported")
    w = _read_safetensors(path / WEIGHTS_FILE)
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(w)
    if missing:
        raise InputError(path / WEIGHTS_FILE, f"missing tensors {sorted(missing)}")
    sae = TopKSAE(cfg["d_in"], cfg["d_sae"], k)
    expect = {"W_enc": (sae.d_in, sae.d_sae), "b_enc": (sae.d_sae,), "W_dec": (sae.d_sae, sae.d_in),
              "b_dec": (sae.d_in,)}
    for name, shape in expect.items():
        if tuple(w[name].shape) != shape:
            raise InputError(path / WEIGHTS_FILE, f"{name} has shape {tuple(w[name].shape)}, expected {shape}")
    if (path / CENTRING_FILE).is_file():
        c = _read_safetensors(path / CENTRING_FILE)
        mean, b_enc, b_dec = c["activation_mean"], c["b_enc"], c["b_dec"]
    elif cfg.get("apply_b_dec_to_input", True):
        mean, b_enc, b_dec = w["b_dec"], w["b_enc"], torch.zeros_like(w["b_dec"])
    else:
        mean, b_enc, b_dec = torch.zeros_like(w["b_dec"]), w["b_enc"], w["b_dec"]
    with torch.no_grad():
        sae.W_enc.copy_(w["W_enc"])
        sae.W_dec.copy_(w["W_dec"])
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
        sae.activation_mean.copy_(mean)
    sae.metadata = dict(cfg.get("sccircuits") or {})
    sae.metadata.pop("activation_mean_file", None)
    sae.metadata.pop("note", None)
    return sae.to(device).eval()


# ---------------------------------------------------------------------------- bio-sae
def load_bio_sae(layer_dir: str | os.PathLike, mean_path: str | os.PathLike | None = None) -> TopKSAE:
    """Load one published checkpoint directory ``layerNN_x4_k32`` (weights_only torch.load)."""
    layer_dir = Path(layer_dir)
    ckpt_path = layer_dir / "sae_final.pt"
    if not ckpt_path.is_file():
        raise InputError(layer_dir, "no sae_final.pt in this bio-sae layer directory")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        from ..models.pickles import torch_load_refusal

        raise InputError(ckpt_path, torch_load_refusal(e)) from None
    sd = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    keys = ("W_enc.weight", "W_enc.bias", "W_dec.weight", "W_dec.bias")
    if not isinstance(sd, dict) or any(k not in sd for k in keys):
        raise InputError(ckpt_path, f"expected model_state_dict with {', '.join(keys)}")
    We, be, Wd, bd = (sd[k].float() for k in keys)
    d_sae, d_in = We.shape
    if Wd.shape != (d_in, d_sae) or be.shape != (d_sae,) or bd.shape != (d_in,):
        raise InputError(ckpt_path, f"inconsistent shapes: W_enc.weight {tuple(We.shape)}, "
                                    f"W_dec.weight {tuple(Wd.shape)}")
    k = ckpt.get("k") if isinstance(ckpt, dict) else None
    if k is None:
        m = _BIO.match(layer_dir.name)
        k = int(m.group(3)) if m else None
    if k is None:
        raise InputError(ckpt_path, "no 'k' in the checkpoint and none in the directory name")
    mean = _read_bio_mean(layer_dir, mean_path, d_in)
    sae = TopKSAE(d_in, d_sae, int(k), activation_mean=torch.from_numpy(mean))
    with torch.no_grad():
        sae.W_enc.copy_(We.T)
        sae.b_enc.copy_(be)
        sae.W_dec.copy_(Wd.T)
        sae.b_dec.copy_(bd)
    m = _BIO.match(layer_dir.name)
    sae.metadata = {"layer": int(m.group(1)) if m else None, "imported_from": str(ckpt_path),
                    "format": "bio-sae"}
    return sae.eval()


def _read_bio_mean(layer_dir: Path, mean_path, d_in: int) -> np.ndarray:
    m = _BIO.match(layer_dir.name)
    candidates = [Path(mean_path)] if mean_path is not None else [
        layer_dir / "activation_mean.npy", layer_dir.parent / "activation_mean.npy",
        *([layer_dir.parent / f"layer{m.group(1)}_activation_mean.npy"] if m else [])]
    for p in candidates:
        if p.is_file():
            try:
                arr = np.load(p, allow_pickle=False)
            except Exception as e:
                raise InputError(p, f"cannot read .npy ({type(e).__name__})") from None
            arr = np.asarray(arr, dtype=np.float64).reshape(-1)
            if arr.shape != (d_in,):
                raise InputError(p, f"activation mean has {arr.size} values, expected {d_in}")
            return arr
    raise InputError(layer_dir, "no activation_mean.npy found beside sae_final.pt")


def import_bio_sae(src: str | os.PathLike, out: str | os.PathLike) -> dict[int, Path]:
    """Convert every published ``layerNN_x4_k32/`` under ``src`` into ``out/layerNN/``."""
    saes = _load_bio_dir(Path(src))
    out = Path(out)
    return {layer: save_sae(sae, out / f"layer{layer:02d}") for layer, sae in saes.items()}


def _load_bio_dir(src: Path) -> dict[int, TopKSAE]:
    dirs = sorted(p for p in src.iterdir() if p.is_dir() and _BIO.match(p.name))
    if not dirs:
        raise InputError(src, "no layerNN_xE_kK/ directories (bio-sae layout) found")
    out: dict[int, TopKSAE] = {}
    for d in dirs:
        layer = int(_BIO.match(d.name).group(1))
        if layer in out:
            raise InputError(src, f"several bio-sae directories for layer {layer}")
        out[layer] = load_bio_sae(d)
    return out


# ---------------------------------------------------------------------------- any layout
def load_saes(path: str | os.PathLike, device: str | torch.device = "cpu",
              layers: list[int] | None = None) -> dict[int, TopKSAE]:
    """All SAEs under ``path`` as {layer: TopKSAE}. ``path`` may be a run directory (uses
    ``saes/``), a directory of ``layerNN/`` SAEs (our layout) or a published bio-sae directory
    of ``layerNN_x4_k32/`` checkpoints."""
    path, layout, found = sae_layer_dirs(path, layers)
    if layout == "ours":
        return {l: load_sae(p, device) for l, p in found.items()}
    saes = _load_bio_dir(path)
    return {l: s.to(device) for l, s in saes.items() if layers is None or l in layers}


def sae_layer_dirs(path: str | os.PathLike, layers: list[int] | None = None) -> tuple[Path, str, dict[int, Path]]:
    """(SAE directory, layout "ours" or "bio-sae", {layer: its folder}) of the SAEs that
    :func:`load_saes` loads from ``path`` (only ``layers`` if given). A ``layerNN/`` folder
    without cfg.json is an error naming it, never silently skipped (its layer would vanish from
    the trace targets)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "SAE directory not found")
    if (path / "saes").is_dir() and not any(_OURS.match(p.name) for p in path.iterdir()):
        path = path / "saes"
    ours = {int(_OURS.match(p.name).group(1)): p for p in sorted(path.iterdir()) if p.is_dir() and _OURS.match(p.name)}
    if ours:
        wanted = ours if layers is None else {l: p for l, p in ours.items() if l in layers}
        broken = [p for p in wanted.values() if not (p / CFG_FILE).is_file()]
        if broken:
            more = f" (and {len(broken) - 1} more layer folder(s) like it)" if len(broken) > 1 else ""
            raise InputError(broken[0], f"SAE folder has no {CFG_FILE} (unfinished training or an incomplete "
                                        f"copy?){more}; finish or remove it")
        _check_layers(path, ours, layers)
        return path, "ours", dict(sorted(wanted.items()))
    bio = {int(_BIO.match(p.name).group(1)): p for p in sorted(path.iterdir()) if p.is_dir() and _BIO.match(p.name)}
    if bio:
        _check_layers(path, bio, layers)
        return path, "bio-sae", {l: p for l, p in sorted(bio.items()) if layers is None or l in layers}
    raise InputError(path, "no SAEs found: expected layerNN/ (sccircuits/SAELens) or "
                           "layerNN_x4_k32/sae_final.pt (bio-sae) subdirectories")


def sae_fingerprints(path: str | os.PathLike, layers: list[int] | None = None) -> dict[str, str]:
    """{layer: content fingerprint} of the files each loaded SAE is read from (for bio-sae also
    the activation means kept beside the layer folders)."""
    from ..rundir import content_fingerprint, file_fingerprint

    root, layout, found = sae_layer_dirs(path, layers)
    out = {str(l): content_fingerprint(d) for l, d in found.items()}
    if layout == "bio-sae":
        for f in sorted(root.glob("*activation_mean*.npy")):
            out[f.name] = file_fingerprint(f)
    return out


def _check_layers(path: Path, found: dict, layers: list[int] | None) -> None:
    if layers is not None:
        missing = [l for l in layers if l not in found]
        if missing:
            raise InputError(path, f"no SAE for layer(s) {missing} (have {sorted(found)})")
