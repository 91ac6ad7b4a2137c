"""Where in the image: per-word attribution maps (DAAM) and intervention effect maps.

`attribution(model, prompt, words)` follows DAAM (Tang et al., 2023, "What the DAAM: Interpreting
Stable Diffusion Using Cross Attention"; castorini/daam `trace.py` / `heatmap.py`):
  1. during one generation, read the cross-attention probabilities (softmax over text keys) of
     every cross-attention module, at every denoising step (or the chosen `steps`), on the
     conditional classifier-free-guidance branch only;
  2. per module and head, sum them over steps and keep the word's token columns;
  3. reshape the query axis to that module's feature map (h × w) and upsample each map bicubic
     to the image size, clamping the undershoot at 0 (as DAAM does);
  4. sum over heads, modules (all layers and resolutions) and the word's tokens;
  5. normalise to [0, 1] (min-max, DAAM's `expand_as`). The unnormalised sum is kept as `raw`.
Differences from DAAM's code, on purpose: DAAM skips the highest-resolution layers to save
memory and averages tokens where its paper sums; we use every layer and sum (after the
min-max normalisation, mean and sum give the same map).
Cross-attention modules: UNet `attn2` (and `attn1` in blocks built with `only_cross_attention`,
such as the CultureWorld organism's, where it also attends to text); MMDiT (SD3, FLUX): the
image-query × text-key block of each joint attention's pattern (the probabilities there are
normalised over the whole joint sequence, text and image keys together).

`effect_map(model, prompt, interventions)` goes beyond attention: where the interventions change
the denoiser's prediction. The prompt is run twice in one batch (same seed), the interventions
acting on the second row only; before every denoiser call the second row's input is reset to the
first row's, so at each step both predictions are made from the same (plain) latents and their
difference is the intervention's own effect at that step, not an accumulated drift. Per step:
|ε_edit − ε_plain| of the guided prediction, averaged over channels, upsampled bicubic to the
image size (clamped at 0); the aggregate is the mean over steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp.checks import index_list
from interp.errors import CultureLensError, SiteError
from interp.interventions import InterventionBase, OnRows
from interp.methods.generation import generate
from interp.methods.heatmaps import figure, grid, image_tensor, mass_share, overlay, upsample
from interp.methods.spans import SpanError, token_span
from interp.model.layout import get_path
from interp.model.sites import parse
from interp.result_io import load_result, save_result, with_heading


# -- result objects ----------------------------------------------------------------------------

# The shared heat-map helpers (also used by `sae.feature_maps`), under this module's old names.
_image_tensor, _overlay, _figure, _mass_share = image_tensor, overlay, figure, mass_share


@dataclass
class AttributionMaps:
    """Per-word DAAM heat maps of one generation. `maps` [W, H, W_img] in [0, 1] (min-max per word),
    `raw` the unnormalised sums, `image` [H, W_img, 3] uint8 (the image generated while tracing),
    `tokens[word]` the conditioning-sequence positions summed for that word."""

    prompt: str
    words: list[str]
    tokens: dict[str, list[int]]
    maps: Float[Tensor, "W H X"]
    raw: Float[Tensor, "W H X"]
    image: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, word: str) -> Tensor:
        if word not in self.words:
            raise CultureLensError(f"AttributionMaps: no map for {word!r}; words are {self.words}")
        return self.maps[self.words.index(word)]

    def to_markdown(self, heading: str | None = None) -> str:
        """Per word: its token positions, the map's peak, top-10% mass share and raw total;
        under `heading` when given."""
        lines = [f"DAAM maps for {self.prompt!r} ({self.meta.get('n_modules', '?')} cross-attention modules, "
                 f"{self.meta.get('n_steps_used', '?')} steps)", "",
                 "| word | token positions | peak (row, col) | top-10% mass share | raw total |", "|---|---|---|---|---|"]
        for i, w in enumerate(self.words):
            m = self.maps[i]
            r, c = divmod(int(m.flatten().argmax()), m.shape[1])
            lines.append(f"| {w} | {self.tokens[w]} | ({r}, {c}) | {_mass_share(self.raw[i]):.3f} | "
                         f"{float(self.raw[i].sum()):.4g} |")
        return with_heading("\n".join(lines), heading)

    def plot(self, path: str | Path | None = None) -> Any:
        """The image, then one overlay per word (jet, half transparent)."""
        return _figure([(self.image, "image")], list(zip(self.maps, self.words)), self.image, path)

    def save(self, folder: str | Path) -> Path:
        """`folder/attribution.json` + `folder/attribution.safetensors` (maps, raw, image)."""
        meta = {"prompt": self.prompt, "words": self.words, "tokens": self.tokens, "meta": self.meta}
        return save_result(folder, "attribution", meta, {"maps": self.maps, "raw": self.raw, "image": self.image})

    @classmethod
    def load(cls, folder: str | Path) -> "AttributionMaps":
        meta, t = load_result(folder, "attribution", "AttributionMaps.save")
        return cls(meta["prompt"], meta["words"], meta["tokens"], t["maps"], t["raw"], t["image"], meta["meta"])


@dataclass
class EffectMap:
    """Where interventions change the denoiser's prediction: `per_step` [T, H, W] mean |Δε| over
    channels (image resolution), `total` [H, W] its mean over steps, `image` the plain image and
    `edited` the image generated with the interventions (its own trajectory)."""

    prompt: str
    per_step: Float[Tensor, "T H W"]
    total: Float[Tensor, "H W"]
    image: Tensor
    edited: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self, heading: str | None = None) -> str:
        """Per step and for the mean map: mean and max |Δε|, top-10% mass share; under
        `heading` when given."""
        lines = [f"effect of {self.meta.get('interventions', '?')} on {self.prompt!r}", "",
                 "| step | mean |Δε| | max |Δε| | top-10% mass share |", "|---|---|---|---|"]
        rows = [(str(t), m) for t, m in enumerate(self.per_step)] + [("mean", self.total)]
        for name, m in rows:
            lines.append(f"| {name} | {float(m.mean()):.4g} | {float(m.max()):.4g} | {_mass_share(m):.3f} |")
        return with_heading("\n".join(lines), heading)

    def plot(self, path: str | Path | None = None, steps: Sequence[int] | None = None) -> Any:
        """Plain image, the aggregate map, and the per-step maps of `steps` (default: up to 4
        evenly spaced), each over the plain image; then the edited image."""
        T = self.per_step.shape[0]
        steps = list(steps) if steps is not None else sorted(set(np.linspace(0, T - 1, min(T, 4)).round().astype(int)))
        heats = [(self.total, "all steps")] + [(self.per_step[t], f"step {t}") for t in steps]
        vmax = float(torch.stack([h for h, _ in heats]).max())  # one colour scale: steps compare directly
        return _figure([(self.image, "plain"), (self.edited, "edited")], heats, self.image, path, vmax)

    def save(self, folder: str | Path) -> Path:
        """`folder/effect_map.json` + `folder/effect_map.safetensors` (per_step, total, images)."""
        return save_result(folder, "effect_map", {"prompt": self.prompt, "meta": self.meta},
                           {"per_step": self.per_step, "total": self.total, "image": self.image,
                            "edited": self.edited})

    @classmethod
    def load(cls, folder: str | Path) -> "EffectMap":
        meta, t = load_result(folder, "effect_map", "EffectMap.save")
        return cls(meta["prompt"], t["per_step"], t["total"], t["image"], t["edited"], meta["meta"])


# -- where the text and the image are ----------------------------------------------------------

def cross_attention_sites(model: Any) -> list[str]:
    """The pattern sites DAAM aggregates: UNet `attn2.hook_pattern` (plus `attn1.hook_pattern` in
    blocks with `only_cross_attention`), or every MMDiT joint-attention `hook_pattern`."""
    names = model.sites()
    if hasattr(model.pipe, "unet"):
        out = []
        for n in names:
            if n.endswith("attn2.hook_pattern"):
                out.append(n)
            elif n.endswith("attn1.hook_pattern"):
                block = get_path(model.denoiser, parse(model, n).module_path.rsplit(".", 1)[0])
                if getattr(block, "only_cross_attention", False):
                    out.append(n)
        return out
    return [n for n in names if n.startswith("transformer.") and n.endswith("attn.hook_pattern")]


def _segments(model: Any) -> list[tuple[list[str], int, int]]:
    """The text part of the denoiser's conditioning sequence as segments (encoders whose tokens
    sit there, offset, length). SDXL's two CLIPs share positions (features are concatenated)."""
    fam = model.family
    enc = model.encoders
    if fam == "sd3":
        clip = [p for p in ("text", "text_2") if p in enc]
        n_clip = enc["text"].max_length
        return [(clip, 0, n_clip), (["text_3"], n_clip, enc["text_3"].max_length)]
    if fam == "flux":
        return [(["text_2"], 0, enc["text_2"].max_length)]
    return [(list(enc), 0, enc["text"].max_length)]


def word_positions(model: Any, prompt: str, word: str) -> list[int]:
    """Positions of `word`'s tokens in the denoiser's text sequence (every encoder segment that
    keeps the word; SD3: the CLIP and the T5 segments)."""
    out: list[int] = []
    errors = []
    for prefixes, offset, length in _segments(model):
        spans = []
        for p in prefixes:
            try:
                spans.append(token_span(model.encoders[p].tokenizer, prompt, word,
                                        max_length=model.encoders[p].max_length, where=f"{p} encoder"))
            except SpanError as e:
                errors.append(str(e))
        if spans and any(s != spans[0] for s in spans):
            raise CultureLensError(f"attribution: {word!r} tokenises to different positions in {prefixes} "
                                   f"({spans}); their features share positions, so the map would mix tokens")
        if spans and len(spans) == len(prefixes):
            out += [offset + i for i in spans[0] if i < length]
    if not out:
        raise CultureLensError(f"attribution: no tokens for {word!r} in {prompt!r}: " + "; ".join(errors))
    return out


# -- attribution ------------------------------------------------------------------------------

class _Accumulate(InterventionBase):
    """Reads a cross-attention pattern, leaves it unchanged, sums the conditional rows' text-key
    columns over the steps it sees: `total` [B, H, Q_img, K_text]."""

    branch = "both"  # sees every row; keeps the conditional ones itself
    reads_only = True  # returns act itself: the traced image is the plain one, bit for bit

    def __init__(self, site: str, queries: Any, keys: Any, steps: Sequence[int] | None) -> None:
        self.site, self.queries, self.keys, self.steps = site, queries, keys, steps
        self.total: Tensor | None = None
        self.calls = 0

    def apply_at(self, act: Tensor, where: Any) -> Tensor:
        cond = act[where.branches.to(act.device) == 1]
        block = cond[:, :, self.queries][..., self.keys] if self.queries is not None else cond[..., self.keys]
        block = block.detach().double()
        self.total = block if self.total is None else self.total + block
        self.calls += 1
        return act


def _grid(n_queries: int, height: int, width: int, where: str) -> tuple[int, int]:
    """The feature-map shape (h, w) of `n_queries` positions for an image of height × width."""
    return grid(n_queries, height, width, f"attribution: {where}")


_upsample = upsample


def attribution(model: Any, prompt: str, words: str | Sequence[str], seed: int = 0, steps: Sequence[int] | None = None,
                *, num_steps: int | None = None, guidance: float | None = None, truncate: bool = False,
                interventions: Sequence[Any] = ()) -> AttributionMaps:
    """DAAM heat maps of `words` (substrings of `prompt`) at image resolution, from one seeded
    generation (see the module docstring for the exact aggregation). `steps`: the denoising steps
    to aggregate (default all); `interventions` act during that generation.

    Prompt length: UNet pipelines in diffusers encode one chunk (the text encoder's window) and
    say so with PromptTooLongError; SD3 keeps T5's longer window, so with truncate=True a word
    beyond CLIP's window is still attributed through its T5 tokens."""
    words = [words] if isinstance(words, str) else list(words)
    if not words:
        raise CultureLensError("attribution: no words given")
    if not isinstance(prompt, str):
        raise CultureLensError("attribution: one prompt (a str) per call")
    model.check_prompts([prompt], truncate=truncate)
    sites = cross_attention_sites(model)
    if not sites:
        raise SiteError(f"attribution: this {model.family} model names no cross-attention pattern sites")
    T = int(num_steps if num_steps is not None else model.defaults["steps"])
    if steps is not None:
        steps = index_list(steps, "attribution: steps (denoising-step indices; the count is num_steps)")
        bad = [s for s in steps if not 0 <= s < T]
        if bad or not steps:
            raise CultureLensError(f"attribution: steps {bad or steps} out of range; this run has {T} steps (0..{T - 1})")
    tokens = {w: word_positions(model, prompt, w) for w in words}
    keys = sorted({p for ps in tokens.values() for p in ps})
    text_q, img_q = _joint_split(model)
    accs = [_Accumulate(s, img_q, [text_q[k] for k in keys] if text_q is not None else keys, steps) for s in sites]
    gen = generate(model, [prompt], seed=seed, num_steps=T, guidance=guidance, interventions=[*interventions, *accs],
                   truncate=truncate)
    image = _image_tensor(gen.images[0])
    H, W = image.shape[:2]
    raw = torch.zeros(len(words), H, W, dtype=torch.float64)
    col = {k: i for i, k in enumerate(keys)}
    for acc in accs:
        if acc.total is None:
            raise CultureLensError(f"attribution: {acc.site} was never called; is it on the denoising path?")
        tot = acc.total[0]  # [H_heads, Q, K_sel]
        h, w = _grid(tot.shape[1], H, W, acc.site)
        for i, wd in enumerate(words):
            sel = tot[..., [col[p] for p in tokens[wd]]]  # [heads, Q, n_tok]
            maps = sel.permute(0, 2, 1).reshape(-1, h, w)  # one map per (head, token)
            raw[i] += _upsample(maps, (H, W)).double().sum(0)
    lo = raw.flatten(1).min(1).values[:, None, None]
    hi = raw.flatten(1).max(1).values[:, None, None]
    maps = ((raw - lo) / (hi - lo + 1e-8)).float()
    meta = {"family": model.family, "seed": seed, "num_steps": T, "steps": steps, "n_steps_used": accs[0].calls,
            "n_modules": len(sites), "sites": sites, "guidance": guidance if guidance is not None
            else model.defaults["guidance"]}
    return AttributionMaps(prompt, words, tokens, maps, raw.float(), image, meta)


def _joint_split(model: Any) -> tuple[list[int] | None, list[int] | None]:
    """MMDiT: (joint positions of the text tokens in order, joint positions of the image patches
    in raster order); UNet: (None, None) — queries are pixels, keys are tokens."""
    if hasattr(model.pipe, "unet"):
        return None, None
    jp = model.joint_positions()
    return list(jp["text"]), list(jp["image"])


# -- effect maps ------------------------------------------------------------------------------

def effect_map(model: Any, prompt: str, *, interventions: Sequence[Any], seed: int = 0,
               num_steps: int | None = None, guidance: float | None = None,
               truncate: bool = False) -> EffectMap:
    """Where in the image `interventions` change the denoiser's prediction, per step and over all
    steps (see the module docstring): |ε_edit − ε_plain| of the guided prediction, both made from
    the plain trajectory's latents, averaged over channels, upsampled to the image size."""
    if not isinstance(prompt, str):
        raise CultureLensError("effect_map: one prompt (a str) per call")
    if not interventions:
        raise CultureLensError("effect_map: no interventions given (the map of nothing is zero)")
    g = float(guidance if guidance is not None else model.defaults["guidance"])
    T = int(num_steps if num_steps is not None else model.defaults["steps"])
    den = model.denoiser
    preds: list[Tensor] = []

    def same_input(mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # the edit row (odd rows: [plain, edit] per CFG block) sees the plain row's latents
        if args:
            x, where = args[0], "arg"
        else:
            key = "sample" if "sample" in kwargs else "hidden_states"
            x, where = kwargs[key], key
        y = x.clone()
        y[1::2] = x[0::2]
        if where == "arg":
            return (y,) + tuple(args[1:]), kwargs
        return args, {**kwargs, where: y}

    def keep(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
        o = out if isinstance(out, Tensor) else out[0]
        preds.append(o.detach().float())

    ivs = [OnRows(iv, [False, True]) for iv in interventions]
    handles = [den.register_forward_pre_hook(same_input, with_kwargs=True),
               den.register_forward_hook(keep, with_kwargs=True)]
    try:
        gen = generate(model, [prompt, prompt], seed=[seed, seed], num_steps=T, guidance=g, interventions=ivs,
                       truncate=truncate)
    finally:
        for h in handles:
            h.remove()
    edited = generate(model, [prompt], seed=seed, num_steps=T, guidance=g, interventions=interventions,
                      truncate=truncate).images[0]
    image = _image_tensor(gen.images[0])
    H, W = image.shape[:2]
    per_step = []
    for o in preds:
        if o.shape[0] == 4:  # [u_plain, u_edit, c_plain, c_edit]: the guided prediction
            u, c = o[:2], o[2:]
            o = u + g * (c - u)
        d = (o[1] - o[0]).abs()
        d = _unpack(model, d, H, W)
        per_step.append(_upsample(d[None], (H, W))[0])
    stack = torch.stack(per_step)
    meta = {"family": model.family, "seed": seed, "num_steps": T, "guidance": g, "calls": len(preds),
            "interventions": ", ".join(repr(iv) for iv in interventions)}
    return EffectMap(prompt, stack, stack.mean(0), image, _image_tensor(edited), meta)


def _unpack(model: Any, d: Tensor, H: int, W: int) -> Tensor:
    """A per-sample prediction difference -> [h, w] averaged over channels. UNet/SD3: [C, h, w];
    FLUX: packed [N, C·4] tokens of 2×2 latent patches -> the patch grid."""
    if d.ndim == 3:
        return d.mean(0)
    if d.ndim == 2:
        h, w = _grid(d.shape[0], H, W, "denoiser output")
        return d.mean(-1).reshape(h, w)
    raise CultureLensError(f"effect_map: unexpected denoiser output shape {tuple(d.shape)}")
