"""Fine-tuned layer enhancer (PAPER.md Step 4b, decision 5): h~ = h + g(W2 s(W1 h)) at one
text-encoder layer, everything else frozen, trained with the denoising MSE on
(noun-only prompt, reference image) pairs. It is an interp intervention (`site`, `apply`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp.checks import moved, renamed
from interp.errors import CultureLensError

import interp
from interp.checkpoint import ResumeMismatchError, check_settings, load_checkpoint, refuse_legacy, save_checkpoint
from interp.folder_lock import lock_folder
from interp.model.sites import text_block
from interp.result_io import Stored, from_jsonable, load_result, record, result_folder, save_result
from sae.store import module_fingerprint

from circuits.plots import plot_lines
from circuits.results import save_safetensors, write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NORMS = ("softrms", "layernorm", "none")
CHECKPOINT = "checkpoint.safetensors"  # safetensors + JSON metadata (interp.checkpoint): never a pickle
LEGACY_CHECKPOINT = "checkpoint.pt"  # the old pickle format: refused, never loaded
CHECKPOINT_KIND = "layer-enhancer"


class SoftRMSNorm(nn.Module):
    """g(x) = gamma * x / sqrt(mean(x^2) + eps) with eps = 1: a normalisation that is smooth
    and linear near 0, so a zero-initialised W2 gives an exact identity and a finite first
    gradient (LayerNorm at x = 0 has a 1/sqrt(eps_LN) gradient and jumps to unit scale)."""

    def __init__(self, d: int, eps: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class LayerEnhancer(nn.Module):
    """Residual enhancer at `site` (a `*.blocks.{l}.hook_resid_post` site). W2 starts at zero,
    so a fresh enhancer is exactly the identity. Usable directly as an interp intervention."""

    def __init__(self, site: str, d_model: int, hidden: int | None = None, norm: str = "softrms", seed: int = 0):
        super().__init__()
        if norm not in NORMS:
            raise CultureLensError(f"LayerEnhancer: norm must be one of {NORMS}; got {norm!r}")
        try:
            block = text_block(site)
        except CultureLensError:  # SiteError: not a text block site at all
            block = None
        if block is None or block.rest != "hook_resid_post":
            raise CultureLensError(f"LayerEnhancer: site must be a text '*.blocks.{{l}}.hook_resid_post' site; got {site!r}")
        self.site = site
        self.norm_kind = norm
        hidden = hidden or d_model
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Linear(d_model, hidden)
        self.W2 = nn.Linear(hidden, d_model)
        with torch.no_grad():
            bound = 1 / d_model**0.5
            self.W1.weight.uniform_(-bound, bound, generator=g)
            self.W1.bias.zero_()
            self.W2.weight.zero_()
            self.W2.bias.zero_()
        self.g = {"softrms": lambda: SoftRMSNorm(d_model), "layernorm": lambda: nn.LayerNorm(d_model),
                  "none": nn.Identity}[norm]()

    @property
    def layer(self) -> int:
        return text_block(self.site).layer

    def forward(self, h: Float[Tensor, "B S d"]) -> Float[Tensor, "B S d"]:
        p = next(self.parameters())
        delta = self.g(self.W2(F.gelu(self.W1(h.to(p.dtype)))))
        return h + delta.to(h.dtype)

    def apply(self, act: Tensor) -> Tensor:  # type: ignore[override]  # the interp intervention interface
        if not callable(act) and isinstance(act, Tensor):
            return self.forward(act)
        return super().apply(act)

    def config(self) -> dict[str, Any]:
        return {"site": self.site, "d_model": self.W1.in_features, "hidden": self.W1.out_features, "norm": self.norm_kind}

    def save(self, path) -> None:
        """safetensors with the config in its metadata."""
        save_safetensors(path, dict(self.state_dict()), {"config": json.dumps(self.config())})

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "LayerEnhancer":
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise CultureLensError(f"{path}: not a LayerEnhancer file (no config in the safetensors metadata)")
        cfg = json.loads(meta["config"])
        enh = cls(cfg["site"], cfg["d_model"], cfg["hidden"], cfg["norm"])
        enh.load_state_dict(load_file(str(path)))
        return enh.to(device).eval()


# -- conditioning and images -------------------------------------------------------------------


def unet_conditioning(model, prompts: Sequence[str]) -> dict[str, Any]:
    """The denoiser's text inputs for `prompts`, computed with gradients (no CFG).

    Uses the pipeline's own `encode_prompt`; a pipeline may instead define
    `training_conditioning(prompts) -> dict` (the organism does for its class_labels)."""
    pipe = model.pipe
    prompts = list(prompts)
    if hasattr(pipe, "training_conditioning"):
        return dict(pipe.training_conditioning(prompts))
    name = type(pipe).__name__
    # By pipeline class, not family: a custom pipeline may share a family but not encode_prompt's signature.
    if (name.startswith("StableDiffusion") or name.startswith("AltDiffusion")) and "XL" not in name and "3" not in name:
        emb = pipe.encode_prompt(prompts, model.device, 1, False)[0]
        return {"encoder_hidden_states": emb}
    if name.startswith("StableDiffusionXL"):
        pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=model.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
        h = w = pipe.default_sample_size * pipe.vae_scale_factor
        ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=pe.dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return {"encoder_hidden_states": pe,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.to(pe.device).repeat(len(prompts), 1)}}
    if hasattr(pipe, "encode_prompt") and getattr(pipe, "unet", None) is not None:
        # Pixel-space pipelines such as the organism's CultureWorldPipeline: encode_prompt(prompts,
        # device) -> (hidden states, pooled); the pooled output goes in as class_labels.
        out = pipe.encode_prompt(prompts, model.device)
        if isinstance(out, tuple) and len(out) == 2:
            hidden, pooled = out
            cond = {"encoder_hidden_states": hidden}
            if getattr(pipe.unet.config, "class_embed_type", None) is not None or \
                    getattr(pipe.unet.config, "num_class_embeds", None) is not None:
                cond["class_labels"] = pooled
            return cond
    raise CultureLensError(f"enhancer training supports sd, sdxl, altdiffusion, pipelines whose encode_prompt(prompts, "
                           f"device) returns (hidden, pooled), and pipelines with training_conditioning(); "
                           f"got family {model.family!r} ({type(pipe).__name__})")


def _image_size(model) -> tuple[int, int]:
    d = model.defaults
    pipe = model.pipe
    if d.get("height") and d.get("width"):
        return int(d["height"]), int(d["width"])
    s = pipe.unet.config.sample_size
    f = getattr(pipe, "vae_scale_factor", 1) if getattr(pipe, "vae", None) is not None else 1
    return s * f, s * f


def load_image(path_or_image: Any, size: tuple[int, int]) -> Float[Tensor, "3 H W"]:
    """A reference image as [-1, 1] pixels at the pipeline's resolution."""
    from PIL import Image

    im = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    im = im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def to_model_space(model, pixels: Float[Tensor, "B 3 H W"]) -> Tensor:
    """VAE latents (scaled) for latent pipelines; the pixels themselves for pixel-space ones."""
    vae = getattr(model.pipe, "vae", None)
    if vae is None:
        return pixels
    with torch.no_grad():
        z = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def _from_model_space(model, x: Tensor) -> Tensor:
    vae = getattr(model.pipe, "vae", None)
    if vae is None:
        return x
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode(x / vae.config.scaling_factor + shift).sample


def denoising_loss(model, x0: Tensor, cond: dict[str, Any], gen: torch.Generator) -> Tensor:
    """Standard noise-prediction MSE at a random timestep (epsilon or v targets)."""
    unet, sch = model.pipe.unet, model.pipe.scheduler
    T = sch.config.num_train_timesteps
    t = torch.randint(0, T, (x0.shape[0],), generator=gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    noisy = sch.add_noise(x0, noise, t)
    pred = unet(noisy, t, return_dict=False, **cond)[0]
    kind = getattr(sch.config, "prediction_type", "epsilon")
    target = noise if kind == "epsilon" else sch.get_velocity(x0, noise, t) if kind == "v_prediction" else x0
    return F.mse_loss(pred.float(), target.float())


def pixel_loss(model, pixels: Tensor, cond: dict[str, Any], gen: torch.Generator, chain_steps: int = 2) -> Tensor:
    """Paper-literal option: sample with a short chain (with gradients), MSE to the reference pixels."""
    unet, sch = model.pipe.unet, model.pipe.scheduler
    x0 = to_model_space(model, pixels)
    x = torch.randn(x0.shape, generator=gen).to(x0) * getattr(sch, "init_noise_sigma", 1.0)
    sch.set_timesteps(chain_steps)
    for t in sch.timesteps:
        inp = sch.scale_model_input(x, t)
        eps = unet(inp, t, return_dict=False, **cond)[0]
        x = sch.step(eps, t, x, return_dict=False)[0]
    return F.mse_loss(_from_model_space(model, x).float(), pixels.float())


# -- training -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EnhancerConfig:
    """How `train_enhancer` trains (what decides the trained weights, besides the data and
    model, and how often it checkpoints); None means these defaults. A resume compares every
    field but `train_steps` and `checkpoint_every` with the checkpoint's (`chain_steps` only for
    the pixel objective); the checkpoint and enhancer.json keep their field names, with the
    count under its pre-0.2.0 key "steps" in enhancer.json."""

    train_steps: int = 2000
    """AdamW steps (constant lr: a larger value continues a finished run)."""

    lr: float = 5e-5
    """Learning rate (constant)."""

    batch_size: int = 1
    """(prompt, image) pairs per step."""

    weight_decay: float = 0.01
    """AdamW weight decay."""

    hidden: int | None = None
    """Width of the enhancer's hidden layer (None: the encoder's d_model)."""

    norm: str = "softrms"
    """The output normalisation g: "softrms", "layernorm" or "none" (`NORMS`)."""

    objective: str = "denoise"
    """The loss: "denoise" (noise-prediction MSE at a random timestep, decision 5) or "pixel"
    (paper-literal: MSE of a short sampled chain's image to the reference pixels)."""

    chain_steps: int = 2
    """Sampling steps of the "pixel" objective's chain (unused by "denoise")."""

    seed: int = 0
    """Seed of the enhancer's init and of step i's data order, timesteps and noise (with i)."""

    checkpoint_every: int = 100
    """With `out`: steps between checkpoints (and one at the last step)."""


#: The keywords of `train_enhancer` that moved into `EnhancerConfig` (culturelens 0.2.0).
ENHANCER_FIELDS = tuple(f.name for f in fields(EnhancerConfig))


@dataclass
class EnhancerRun:
    """What `train_enhancer` returns: the enhancer, its loss curve and where it was saved.
    `save(folder)` writes enhancer_run.json (`to_json`) and enhancer_run.safetensors (the
    enhancer's weights, keys "enhancer.<name>")."""

    result_name: ClassVar[str] = "enhancer_run"

    enhancer: LayerEnhancer
    losses: list[float]
    path: Path | None
    train_steps: int

    def to_json(self) -> dict[str, Any]:
        # On disk the count keeps its pre-0.2.0 key "steps" (enhancer_run.json, enhancer.json and
        # the reports that embed them): folders written before the rename load, reports' keys stay.
        return {"site": self.enhancer.site, "config": self.enhancer.config(), "losses": self.losses,
                "path": str(self.path) if self.path else None, "steps": self.train_steps}

    def to_markdown(self, heading: str | None = None) -> str:
        """One row: the enhancer's site and shape, training steps, first, last and lowest loss;
        `heading` (a Markdown heading line) first when given."""
        c = self.enhancer.config()
        first, last, low = ((f"{self.losses[0]:.4g}", f"{self.losses[-1]:.4g}", f"{min(self.losses):.4g}")
                            if self.losses else ("–", "–", "–"))
        body = ("| enhancer at | d_model | hidden | norm | steps | first loss | last loss | lowest loss |\n"
                "|---|---|---|---|---|---|---|---|\n"
                f"| `{c['site']}` | {c['d_model']} | {c['hidden']} | {c['norm']} | {self.train_steps} | {first} | {last} | {low} |")
        return body if heading is None else f"{heading}\n\n{body}"

    def plot(self, path: str | Path | None = None) -> Figure:
        """The training loss by step."""
        xs = list(range(1, len(self.losses) + 1))
        return plot_lines(xs, {"loss": (self.losses, self.losses, self.losses)}, path, "step", "MSE",
                          f"enhancer at {self.enhancer.site}")

    def save(self, folder: str | Path) -> Path:
        """`folder/enhancer_run.json` + `folder/enhancer_run.safetensors`; returns the folder."""
        weights = {f"enhancer.{k}": v for k, v in self.enhancer.state_dict().items()}
        return save_result(folder, self.result_name, record(self), weights)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "EnhancerRun":
        """Read back what `save` wrote; the enhancer on `device`, in eval mode."""
        folder = result_folder(folder, cls.result_name)
        meta, t = load_result(folder, cls.result_name, "EnhancerRun.save")
        where = str(folder / f"{cls.result_name}.json")
        c = meta.get("config")
        if not isinstance(c, dict) or not {"site", "d_model", "hidden", "norm"} <= set(c):
            raise CultureLensError(f"{where}: no enhancer config (site, d_model, hidden, norm); not an EnhancerRun record")
        enh = LayerEnhancer(c["site"], c["d_model"], c["hidden"], c["norm"])
        enh.load_state_dict({k.removeprefix("enhancer."): v for k, v in t.items()})
        s = Stored.of(meta, {}, where)
        return cls(enh.to(device).eval(), from_jsonable(list[float], meta["losses"], "losses.", s),
                   from_jsonable(Path | None, meta["path"], "path.", s), meta["steps"])  # on-disk key: to_json


def training_pairs(items: Sequence[Any], split: str | None = "train") -> list[tuple[str, Any]]:
    """(noun-only prompt, image) pairs; records without an image, or of another split, are skipped.
    A tuple (prompt, image path or PIL image) passes through."""
    out = []
    for i, x in enumerate(items):
        if isinstance(x, tuple) and len(x) == 2:
            out.append(x)
            continue
        if split is not None and getattr(x, "split", split) != split:
            continue
        img = getattr(x, "image", None)
        if img is None:
            continue
        out.append((x.noun_only if hasattr(x, "noun_only") else x.noun_prompt, img))
    if not out:
        raise CultureLensError(f"train_enhancer: no (noun-only prompt, image) pairs in split {split!r}")
    return out


def _frozen(model):
    """Freeze every pipeline parameter (restored afterwards): only the enhancer trains."""
    mods = [m for m in vars(model.pipe).values() if isinstance(m, nn.Module)]
    mods += [getattr(model.pipe, n) for n in getattr(model.pipe, "components", {}) if isinstance(getattr(model.pipe, n, None), nn.Module)]
    params = {id(p): p for m in mods for p in m.parameters()}
    state = {k: p.requires_grad for k, p in params.items()}

    class _Ctx:
        def __enter__(self):
            for p in params.values():
                p.requires_grad_(False)

        def __exit__(self, *a):
            for k, p in params.items():
                p.requires_grad_(state[k])

    return _Ctx()


@renamed(steps="train_steps")
@moved(EnhancerConfig, *ENHANCER_FIELDS, param="cfg", where="circuits.train_enhancer")
def train_enhancer(
    model,
    data: Sequence[Any],
    layer: int,
    encoder: str = "text",
    out: str | Path | None = None,
    cfg: EnhancerConfig | None = None,
    *,
    resume: bool = True,
    split: str | None = "train",
    progress: bool = True,
) -> EnhancerRun:
    """Train a `LayerEnhancer` at `encoder.blocks.{layer}.hook_resid_post` with AdamW for
    `cfg.train_steps` steps (`cfg`: an `EnhancerConfig`; None: its defaults).

    `cfg.objective`: "denoise" (decision 5) or "pixel" (paper-literal, a `cfg.chain_steps`
    sampling chain). With `out`, checkpoints go to `out/checkpoint.safetensors` atomically every
    `cfg.checkpoint_every` steps (safetensors + JSON, no pickle) and the result to
    `out/enhancer.safetensors`; `out` is locked while training. `resume` (the default) continues
    from the checkpoint, and refuses one made with other settings (enhancer config, seed, lr,
    weight decay, batch size, objective, chain steps) or other inputs (training prompts and
    images, model weights), naming the fields; `resume=False` starts over. A larger
    `train_steps` continues a finished run (the lr is constant, so that equals a longer
    uninterrupted run); a checkpoint past `train_steps` is refused. `split`: train on the
    records of this split (None: all; (prompt, image) tuples always).
    The data order, timesteps and noise of step i depend only on (seed, i), so a resumed run
    equals an uninterrupted one."""
    cfg = EnhancerConfig() if cfg is None else cfg
    if cfg.objective not in ("denoise", "pixel"):
        raise CultureLensError(f"train_enhancer: objective must be 'denoise' or 'pixel'; got {cfg.objective!r}")
    te = model.encoder(encoder)
    if not 0 <= layer < te.n_layers:
        raise CultureLensError(f"train_enhancer: layer {layer} outside [0, {te.n_layers}) of encoder {encoder!r}")
    out = Path(out) if out is not None else None
    # One writer per output folder: a second job on it fails at once, naming the holder's pid.
    with lock_folder(out, "enhancer output folder") if out is not None else contextlib.nullcontext():
        return _train_enhancer(model, data, layer, encoder, out, cfg, resume, split, progress)


def _inputs_fingerprint(model, pairs: Sequence[tuple[str, Any]], size: tuple[int, int]) -> dict[str, str]:
    """Fingerprints of what the enhancer learns from: the (prompt, image) pairs and the frozen model."""
    h = hashlib.sha256()
    for prompt, img in pairs:
        h.update(str(prompt).encode() + b"\0")
        h.update(load_image(img, size).numpy().tobytes())
    mods = {n: getattr(model.pipe, n) for n in sorted(getattr(model.pipe, "components", {}))
            if isinstance(getattr(model.pipe, n, None), nn.Module)}
    return {"data": h.hexdigest()[:16], "n_pairs": str(len(pairs)),
            **{f"model.{n}": module_fingerprint(m) for n, m in mods.items()}}


def _train_enhancer(model, data: Sequence[Any], layer: int, encoder: str, out: Path | None, cfg: EnhancerConfig,
                    resume: bool, split: str | None, progress: bool) -> EnhancerRun:
    train_steps, lr, batch_size, weight_decay = cfg.train_steps, cfg.lr, cfg.batch_size, cfg.weight_decay
    hidden, norm, objective, chain_steps = cfg.hidden, cfg.norm, cfg.objective, cfg.chain_steps
    seed, checkpoint_every = cfg.seed, cfg.checkpoint_every
    te = model.encoder(encoder)
    pairs = training_pairs(data, split)
    size = _image_size(model)
    enh = LayerEnhancer(f"{encoder}.blocks.{layer}.hook_resid_post", te.d_model, hidden, norm, seed).to(model.device)
    opt = torch.optim.AdamW(enh.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    start = 0
    ckpt = out / CHECKPOINT if out else None
    settings: dict[str, Any] = {}
    if ckpt is not None:
        settings = {"config": enh.config(), "seed": seed, "lr": lr, "weight_decay": weight_decay,
                    "batch_size": batch_size, "objective": objective,
                    "chain_steps": chain_steps if objective == "pixel" else None,
                    "inputs": _inputs_fingerprint(model, pairs, size)}
    if ckpt is not None and resume:
        if not ckpt.exists():
            refuse_legacy(out / LEGACY_CHECKPOINT)
        else:
            state = load_checkpoint(ckpt, CHECKPOINT_KIND)
            check_settings(state["settings"], settings, ckpt, "pass resume=False (train-enhancer --restart)")
            if state["step"] > train_steps:
                raise ResumeMismatchError(f"{ckpt}: checkpoint at step {state['step']} is past this run's "
                                          f"train_steps={train_steps}; give train_steps >= {state['step']}, or "
                                          "resume=False to start over")
            enh.load_state_dict(state["enhancer"])
            opt.load_state_dict(state["optimizer"])
            losses, start = state["losses"], state["step"]

    def save_ckpt(step: int) -> None:
        save_checkpoint(ckpt, {"enhancer": enh.state_dict(), "optimizer": opt.state_dict(), "losses": losses,
                               "step": step, "settings": settings}, CHECKPOINT_KIND)

    n = len(pairs)
    enh.train()
    with _frozen(model), interp.intervene(model, [enh]):
        bar = tqdm(range(start, train_steps), initial=start, total=train_steps, desc=f"enhancer @ {enh.site}", disable=not progress)
        for step in bar:
            epoch, pos = divmod(step * batch_size, n)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            idx = [order[(pos + j) % n] for j in range(batch_size)]
            prompts = [pairs[i][0] for i in idx]
            pixels = torch.stack([load_image(pairs[i][1], size) for i in idx]).to(model.device)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            cond = unet_conditioning(model, prompts)
            if objective == "denoise":
                loss = denoising_loss(model, to_model_space(model, pixels), cond, gen)
            else:
                loss = pixel_loss(model, pixels, cond, gen, chain_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == train_steps):
                save_ckpt(step + 1)
    enh.eval()
    path = None
    if out is not None:
        path = out / "enhancer.safetensors"
        enh.save(path)
        write_json(out / "enhancer.json", {"config": enh.config(), "steps": train_steps, "lr": lr, "batch_size": batch_size,
                                            "objective": objective, "seed": seed, "losses": losses})
    return EnhancerRun(enh, losses, path, train_steps)


def random_other_layer(n_layers: int, chosen: int, seed: int = 0) -> int:
    """The control layer: a seeded draw among the other layers."""
    others = [l for l in range(n_layers) if l != chosen]
    if not others:
        raise CultureLensError("random_other_layer: the encoder has only one layer")
    return random.Random(seed).choice(others)
