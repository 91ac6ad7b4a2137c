"""SAELens 6.x on-disk format: `cfg.json` + `sae_weights.safetensors`.

Written without importing sae-lens (it pins transformer-lens 3.x). The cfg mirrors what
`TopKSAEConfig.to_dict()` writes: the SAEConfig fields, `k`, `rescale_acts_by_decoder_norm`,
`architecture` and a `metadata` dict (free-form in SAELens 6; `hook_name` is what
HookedSAETransformer attaches to).

SAELens 6 (`loading/pretrained_sae_loaders.handle_config_defaulting`) treats a cfg whose
`metadata.sae_lens_version` (or top-level `sae_lens_version`) is missing or < 6.0.0 as a
pre-6.0 cfg and rebuilds `metadata` from top-level keys only, dropping a nested `hook_name`
and `model_name`; so `metadata.sae_lens_version` is always written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from interp.result_io import atomic_save_file, atomic_write_text, read_json
from sae.describe import describe
from sae.errors import SAEError
from sae.store import ActivationStore
from sae.model import TopKSAE

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"  # SAELens' name for the log10 feature density
LATENT_STATS = "latent_stats.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
# The SAELens on-disk format these files follow (the 6.x cfg layout); not a dependency.
SAELENS_FORMAT_VERSION = "6.0.0"


def saelens_cfg(sae: TopKSAE, hook_name: str, model_name: str | None = None,
                dtype: str = "float32", device: str = "cpu", **metadata) -> dict:
    """The cfg dict SAELens 6 writes for an inference TopK SAE."""
    return {
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": dtype, "device": device,
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": model_name, "hook_name": hook_name,
                     "sae_lens_version": SAELENS_FORMAT_VERSION,
                     "sae_lens_training_version": None, **metadata},
        "k": sae.k, "rescale_acts_by_decoder_norm": False, "architecture": "topk",
    }


def save_saelens(sae: TopKSAE, directory: str | Path, hook_name: str,
                 model_name: str | None = None, dtype: str = "float32", *, model: Any = None,
                 store: ActivationStore | torch.Tensor | None = None, **metadata) -> Path:
    """Write `cfg.json` + `sae_weights.safetensors` (W_enc [d_in,d_sae], b_enc, W_dec
    [d_sae,d_in], b_dec) atomically; extra keyword arguments go into `metadata`.

    Self-describing (`sae.describe`): with `model` (the culturelens model; `hook_name` its
    site) `metadata.module` names the pipeline module; with `store` (the training store, or
    sample rows) `metadata` also records `position_policy`, `activation_scale` and `steering`,
    and `sparsity.safetensors` (`sparsity`: log10 firing rate per latent, SAELens' file) and
    `latent_stats.safetensors` (`typical_activation`, `max_activation`) are written beside."""
    if dtype not in _DTYPES:
        raise SAEError(f"save_saelens: dtype {dtype!r} not in {sorted(_DTYPES)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    per = None
    if model is not None or store is not None:
        info, per = describe(model, hook_name if model is not None else None, sae, store)
        metadata = {**info, **metadata}
    if per is not None:
        for name, t in ((SPARSITY, {"sparsity": per["firing_rate"].clamp_min(1e-10).log10()}),
                        (LATENT_STATS, {"typical_activation": per["typical"], "max_activation": per["max"]})):
            atomic_save_file(out / name, {k: v.contiguous() for k, v in t.items()})
    tensors = {n: getattr(sae, n).detach().to("cpu", _DTYPES[dtype]).contiguous()
               for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    atomic_save_file(out / WEIGHTS, tensors)
    cfg = saelens_cfg(sae, hook_name, model_name, dtype, **metadata)
    atomic_write_text(out / CFG, json.dumps(cfg, indent=2))
    return out


def _fold_decoder_norm(w: dict[str, torch.Tensor], where: Path) -> None:
    """`rescale_acts_by_decoder_norm: true` (SAELens ≥ 6.54 TopK) encodes topk(pre·‖W_dec‖)
    and decodes (z / ‖W_dec‖)·W_dec: the same SAE as W_enc·diag(n), b_enc·n, W_dec / n with
    n = ‖W_dec rows‖, which has unit rows and needs no rescaling. Folded in place; refused
    only when some n is 0 or not finite (nothing to divide by)."""
    n = w["W_dec"].double().norm(dim=1)
    bad = ~torch.isfinite(n) | (n <= 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        dev = float((n - 1).abs().nan_to_num(float("inf")).max())
        raise SAEError(f"{where}: rescale_acts_by_decoder_norm=true but decoder row {i} has norm "
                       f"{float(n[i])!r}; {int(bad.sum())} rows cannot be folded (max norm "
                       f"deviation from 1 over all rows: {dev:.3g})")
    w["W_enc"] = (w["W_enc"].double() * n).to(w["W_enc"].dtype)
    w["b_enc"] = (w["b_enc"].double() * n).to(w["b_enc"].dtype)
    w["W_dec"] = (w["W_dec"].double() / n[:, None]).to(w["W_dec"].dtype)


def _read_cfg(cfg_path: Path) -> dict:
    """cfg.json as a dict; any read, decoding or syntax problem names the file."""
    cfg = read_json(cfg_path, SAEError)
    if not isinstance(cfg, dict):
        raise SAEError(f"{cfg_path}: expected a JSON object, got a JSON {type(cfg).__name__}")
    return cfg


def _cfg_int(cfg: dict, key: str, cfg_path: Path, lo: int, hi: int | None = None) -> int:
    """An integer field in lo..hi; 4.9 or true would be truncated or read as 1 without a word."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f"≥ {lo}"
        raise SAEError(f"{cfg_path}: {key}={v!r}; expected an integer {rng}")
    return v


def _read_weights(w_path: Path) -> dict[str, torch.Tensor]:
    """The safetensors tensors; a truncated, pickled or otherwise unreadable file names the file."""
    try:
        return load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise SAEError(f"{w_path}: not a readable safetensors file ({first}); a SAELens folder stores its "
                       "weights as safetensors (re-export it, e.g. with sae.save_saelens)") from None


def _check_finite(w: dict[str, torch.Tensor], w_path: Path) -> None:
    """Refuse NaN/Inf weights: steering through them turns every edited activation into NaN."""
    for name, t in w.items():
        if not t.is_floating_point():
            raise SAEError(f"{w_path}: tensor {name} has dtype {t.dtype}; expected floating-point weights")
        bad = ~torch.isfinite(t)
        if bad.any():
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise SAEError(f"{w_path}: tensor {name} has {int(bad.sum())} non-finite values (NaN or inf), the first "
                           f"at index {first}")


def load_saelens(directory: str | Path, device: str = "cpu") -> TopKSAE:
    """Read a SAELens TopK folder (the cfg dict is kept as `sae.saelens_cfg`). Refuses a cfg without `architecture`
    or `k` (SAELens would fall back to defaults and load it wrongly). A cfg with
    `rescale_acts_by_decoder_norm: true` is folded into unit-norm decoder rows
    (`_fold_decoder_norm`), which computes exactly what SAELens computes."""
    d = Path(directory)
    cfg_path, w_path = d / CFG, d / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.exists():
            raise SAEError(f"{p}: missing; a SAELens folder holds {CFG} and {WEIGHTS}")
    cfg = _read_cfg(cfg_path)
    for key in ("architecture", "k", "d_in", "d_sae"):
        if key not in cfg:
            raise SAEError(f"{cfg_path}: no '{key}' field; refusing to guess (SAELens would "
                           f"silently use a default)")
    d_in = _cfg_int(cfg, "d_in", cfg_path, 1)
    d_sae = _cfg_int(cfg, "d_sae", cfg_path, 1)
    k = _cfg_int(cfg, "k", cfg_path, 1, d_sae)
    dtype_name = cfg.get("dtype", "float32")
    if dtype_name not in _DTYPES:  # an unknown dtype silently read as float32 would hide a wrong file
        raise SAEError(f"{cfg_path}: dtype={dtype_name!r}; supported: {', '.join(sorted(_DTYPES))}")
    if cfg["architecture"] != "topk":
        raise SAEError(f"{cfg_path}: architecture {cfg['architecture']!r}, only 'topk' is supported")
    for key, want in (("apply_b_dec_to_input", True), ("normalize_activations", "none"),
                      ("reshape_activations", "none")):
        if cfg.get(key, want) != want:
            raise SAEError(f"{cfg_path}: {key}={cfg[key]!r} is not supported (need {want!r})")
    w = _read_weights(w_path)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in shapes.items():
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise SAEError(f"{w_path}: tensor {name} is {got}, cfg implies {shape}")
    _check_finite({name: w[name] for name in shapes}, w_path)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    if rescale not in (True, False):
        raise SAEError(f"{cfg_path}: rescale_acts_by_decoder_norm={rescale!r} is not a boolean")
    if rescale:
        _fold_decoder_norm(w, w_path)
    dtype = _DTYPES[dtype_name]
    sae = TopKSAE(d_in, d_sae, k)
    with torch.no_grad():
        for name in shapes:
            getattr(sae, name).copy_(w[name].float())
    sae.saelens_cfg = cfg
    return sae.to(device=device, dtype=dtype)
