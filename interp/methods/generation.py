"""Seeded generation with interventions, and activation capture during generation.

Noise comes from one CPU `torch.Generator` per prompt seeded `seed + i` (or the i-th of a list of
seeds), so image i depends only on (prompt i, its seed) — not on the batch it shares or the device —
and the same seed is bit-identical on CPU.
Interventions on denoiser sites apply at every denoising step unless they name `steps` (the
step counter restarts at every pipeline call). By default (`branch="cond"`) an intervention edits
the prompt's side only: at text sites the prompt's encoding, not the negative prompt's; at
denoiser sites the conditional rows. `branch="uncond"` / `"both"` choose otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from interp.checks import describe, finite_number, is_int, positive_int, prompt_list, renamed
from interp.engine.session import HookSession
from interp.errors import CultureLensError, RenamedArgumentError, SiteError
from interp.interventions import OnRows, Replace, Where
from interp.methods.capture import envoy
from interp.methods.heatmaps import figure, image_tensor
from interp.model.sites import Site, parse
from interp.result_io import load_images, load_result, result_folder, save_images, save_result, with_heading

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Generation:
    """Images, final latents [B, C, h, w] and (from capture_generation) activations.

    `acts[site]`: denoiser sites -> [T, C, B, ...] (T denoising steps; C = 2 rows "uncond", "cond"
    under classifier-free guidance, else 1; where a step calls the denoiser more than once per
    branch, e.g. SD3's skip-layer guidance, the first call's rows); text sites -> [N, B, ...] over
    the N encoder calls in pipeline order (prompt first, then the negative prompt when the
    pipeline encodes one).

    `save(folder)`: PIL images as `image_{i}.png`, other images (arrays, e.g. `output_type="np"`)
    with the latents and activations in generation.safetensors, what is where in generation.json.
    """

    result_name: ClassVar[str] = "generation"

    images: list[Any]
    latents: Float[Tensor, "B C h w"]
    acts: dict[str, Tensor] = field(default_factory=dict)

    def to_markdown(self, heading: str | None = None) -> str:
        """The images (size, mode), the latents' shape and each captured site's shape; under
        `heading` (a Markdown heading line) when given."""
        lines = [f"{len(self.images)} images, final latents {list(self.latents.shape)}", "",
                 "| image | size | kind |", "|---|---|---|"]
        for i, img in enumerate(self.images):
            size, kind = ((f"{img.width}×{img.height}", f"PIL {img.mode}") if isinstance(img, Image.Image)
                          else (f"{list(np.shape(img))}", type(img).__name__))
            lines.append(f"| {i} | {size} | {kind} |")
        if self.acts:
            lines += ["", "| site | activations |", "|---|---|"]
            lines += [f"| `{name}` | {list(a.shape)} |" for name, a in self.acts.items()]
        return with_heading("\n".join(lines), heading)

    def plot(self, path: str | Path | None = None) -> Figure:
        """The images in a row (at most 8 per row), titled by index."""
        shown = [(image_tensor(img) if isinstance(img, Image.Image) else torch.as_tensor(np.asarray(img)), f"image {i}")
                 for i, img in enumerate(self.images)]
        if not shown:
            raise CultureLensError("Generation.plot: no images to draw")
        return figure(shown, [], shown[0][0], path, cols=min(8, len(shown)))

    def save(self, folder: str | Path) -> Path:
        """`folder/image_{i}.png` (PIL images), `folder/generation.json` + `generation.safetensors`
        (latents, `acts.<site>`, non-PIL images as `images.<i>`); returns the folder."""
        folder = result_folder(folder, self.result_name)
        entries, tensors = save_images(folder, self.images, "image", "images")
        tensors["latents"] = self.latents
        tensors.update({f"acts.{name}": a for name, a in self.acts.items()})
        meta = {"images": entries, "acts": list(self.acts)}
        return save_result(folder, self.result_name, meta, tensors)

    @classmethod
    def load(cls, folder: str | Path) -> Generation:
        """Read back what `save` wrote (PNG images as PIL images, array images as numpy arrays)."""
        folder = result_folder(folder, cls.result_name)
        meta, t = load_result(folder, cls.result_name, "Generation.save")
        images = load_images(folder, meta["images"], t, str(folder / "generation.json"))
        return cls(images=images, latents=t["latents"], acts={name: t[f"acts.{name}"] for name in meta["acts"]})


def prompt_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One noise seed per prompt: `seed + i`, or the given list (one per prompt)."""
    if not isinstance(seed, (Sequence, Tensor)):  # any integer, numpy's included
        if not is_int(seed):  # int(1.5) would silently be seed 1
            raise CultureLensError(f"generate: seed must be an integer or one integer per prompt, got {describe(seed)}")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, str) or (torch.is_tensor(seed) and seed.ndim == 0):
        raise CultureLensError(f"generate: seed must be an integer or one integer per prompt, got {describe(seed)}")
    bad = [i for i, s in enumerate(seed) if not is_int(s)]
    if bad:
        raise CultureLensError(f"generate: seed {bad[0]} of the list is {describe(list(seed)[bad[0]])}; seeds are integers")
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise CultureLensError(f"generate: {len(seeds)} seeds for {n} prompts; give one seed per prompt or an int")
    return seeds


@renamed(steps="num_steps")
def pipeline_kwargs(model: Any, prompts: list[str], seed: int | Sequence[int], num_steps: int | None,
                    guidance: float | None, height: int | None = None, width: int | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The exact keyword arguments `generate` passes to the pipeline (also for reference runs);
    `num_steps` is the number of denoising steps (None: `model.defaults["steps"]`)."""
    if "num_inference_steps" in extra:  # the pipeline's own name would silently override num_steps
        raise RenamedArgumentError("generate: pass the number of denoising steps as num_steps=, not the pipeline's "
                                   f"num_inference_steps={describe(extra['num_inference_steps'])}")
    d = model.defaults  # the on-disk key of the count stays "steps" (culturelens.json, model.defaults)
    # A count (how many denoising steps), unlike an intervention's `steps=` (which step
    # indices): 0 would divide by zero inside the scheduler, -1 index out of range.
    n_steps = positive_int(num_steps if num_steps is not None else d["steps"],
                           "generate: num_steps (the number of denoising steps)")
    scale = finite_number(guidance if guidance is not None else d["guidance"], "generate: guidance")
    h = positive_int(height if height is not None else d["height"], "generate: height (pixels)")
    w = positive_int(width if width is not None else d["width"], "generate: width (pixels)")
    kw: dict[str, Any] = dict(
        prompt=prompts,
        num_inference_steps=n_steps,
        guidance_scale=scale,
        height=h, width=w,
        generator=[torch.Generator("cpu").manual_seed(s) for s in prompt_seeds(seed, len(prompts))],
    )
    if model.family == "sd3":
        kw["max_sequence_length"] = model.encoders["text_3"].max_length
    if model.family == "flux":
        kw["max_sequence_length"] = model.encoders["text_2"].max_length
    kw.update(extra)
    return kw


@renamed(steps="num_steps")
def generate(model: Any, prompts: str | Sequence[str], seed: int | Sequence[int] = 0, num_steps: int | None = None,
             guidance: float | None = None, *, interventions: Sequence[Any] = (), height: int | None = None,
             width: int | None = None, truncate: bool = False, record: Sequence[str] = (),
             batch_size: int | None = None, **pipe_kwargs: Any) -> Generation:
    """Generate images for `prompts` with `interventions` active; defaults from `model.defaults`.
    `num_steps`: how many denoising steps (step indices go on interventions: `Mask(u, steps=[0])`).
    `seed`: prompt i gets `seed + i`, or pass one seed per prompt. `record` names sites to capture
    on the way (see `Generation.acts`). `negative_prompt` may be one string (for every prompt) or
    one per prompt. `batch_size`: at most this many prompts per pipeline call (None: all in one);
    each prompt keeps its own seed, so the result is that of one call on the same prompts and
    seeds up to float rounding (batched matmuls may round differently for another batch size).
    With chunks, `OnRows` row masks are split with the prompts; a `Replace` whose value has one
    entry per prompt cannot be split and is refused."""
    prompts = prompt_list(prompts, "generate")
    if not prompts:
        raise CultureLensError("generate: no prompts given")
    model.check_prompts(prompts, truncate=truncate)
    neg = pipe_kwargs.get("negative_prompt")
    if neg is not None:
        neg = [neg] * len(prompts) if isinstance(neg, str) else prompt_list(neg, "generate: negative_prompt")
        if len(neg) != len(prompts):
            raise CultureLensError(f"generate: {len(neg)} negative prompts for {len(prompts)} prompts; give one "
                                   "string or one per prompt")
        model.check_prompts(neg, truncate=truncate)
        pipe_kwargs["negative_prompt"] = neg
    if batch_size is not None:
        batch_size = positive_int(batch_size, "generate: batch_size (prompts per pipeline call)")
        if len(prompts) > batch_size:
            return _generate_chunked(model, prompts, prompt_seeds(seed, len(prompts)), num_steps, guidance,
                                     interventions, batch_size, height=height, width=width, truncate=truncate,
                                     record=record, **pipe_kwargs)
    final: list[Tensor] = []

    def keep_latents(pipe: Any, i: int, t: Any, kw: dict) -> dict:
        final[:] = [kw["latents"]]
        return {}

    raw: dict[str, list[tuple[Where, Tensor]]] = defaultdict(list)

    def recorder(site: Site, act: Tensor, where: Where) -> None:
        raw[site.name].append((where, act.detach().clone()))

    kw = pipeline_kwargs(model, prompts, seed, num_steps, guidance, height, width, **pipe_kwargs)
    kw.update(callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"])
    with torch.no_grad(), HookSession(model, interventions, record=record, recorder=recorder):
        out = model.pipe(**kw)
    acts = {name: _stack_rows(name, items) if parse(model, name).denoiser else torch.stack([a for _, a in items])
            for name, items in raw.items()}
    return Generation(images=list(out.images), latents=final[0], acts=acts)


def _chunk_intervention(iv: Any, sl: slice, n: int) -> Any:
    """`iv` for the prompts `sl` of `n` (None: it acts on none of them)."""
    if isinstance(iv, OnRows):
        if iv.rows.numel() != n:
            return iv  # not one flag per prompt: OnRows itself will say so
        rows = iv.rows[sl]
        return OnRows(iv.intervention, rows) if bool(rows.any()) else None
    if isinstance(iv, Replace):
        v = iv.value
        if v.ndim >= 1 and v.shape[0] == n or v.ndim >= 3 and v.shape[2] == n:
            raise CultureLensError(f"generate: batch_size= splits the {n} prompts, but {iv!r} holds a value of shape "
                                   f"{tuple(v.shape)} that may have one entry per prompt; pass batch_size=None")
    return iv


def _generate_chunked(model: Any, prompts: list[str], seeds: list[int], num_steps: int | None, guidance: float | None,
                      interventions: Sequence[Any], batch_size: int, **kwargs: Any) -> Generation:
    """`generate` in chunks of `batch_size` prompts, each with its own seeds, joined in order:
    images and latents along the batch, activations along their prompt axis (denoiser
    [T, C, B, ...]: axis 2; text [N, B, ...]: axis 1)."""
    n = len(prompts)
    neg = kwargs.pop("negative_prompt", None)
    parts: list[Generation] = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        ivs = [c for c in (_chunk_intervention(iv, sl, n) for iv in interventions) if c is not None]
        extra = {} if neg is None else {"negative_prompt": neg[sl]}
        parts.append(generate(model, prompts[sl], seed=seeds[sl], num_steps=num_steps, guidance=guidance, interventions=ivs,
                              **extra, **kwargs))
    acts = {}
    for name in parts[0].acts:
        axis = 2 if parse(model, name).denoiser else 1
        acts[name] = torch.cat([p.acts[name] for p in parts], dim=axis)
    return Generation(images=[im for p in parts for im in p.images], latents=torch.cat([p.latents for p in parts]),
                      acts=acts)


def _stack_rows(name: str, items: list[tuple[Where, Tensor]]) -> Tensor:
    """Denoiser records (one per call) -> [T, C, B, ...]: per step, each branch's rows from the
    first call that has that branch; C = 2 ([uncond, cond]) when any call had unconditional rows."""
    steps: dict[int, dict[int, Tensor]] = {}
    for where, act in items:
        if where.branches is None:
            raise CultureLensError(f"capture at {name!r}: cannot tell the CFG branch of the rows at step "
                                   f"{where.step} ({act.shape[0]} rows)")
        slot = steps.setdefault(int(where.step), {})
        for b in (0, 1):
            rows = where.branches.to(act.device) == b
            if b not in slot and bool(rows.any()):
                slot[b] = act[rows]
    branches = [0, 1] if any(0 in v for v in steps.values()) else [1]
    out = []
    for t in sorted(steps):
        missing = [b for b in branches if b not in steps[t]]
        if missing:
            raise CultureLensError(f"capture at {name!r}: step {t} has no {'uncond' if 0 in missing else 'cond'} rows")
        out.append(torch.stack([steps[t][b] for b in branches]))
    return torch.stack(out)


def _stack(name: str, items: list[tuple[int, Tensor]], batch: int) -> Tensor:
    """nnsight engine: per-step [rows, ...] with rows = [uncond; cond] under CFG -> [T, C, B, ...]."""
    acts = torch.stack([a for _, a in items])
    rows = acts.shape[1] // batch  # 2 under classifier-free guidance (uncond rows first), else 1
    return acts.reshape(acts.shape[0], rows, batch, *acts.shape[2:])


@renamed(steps="num_steps")
def capture_generation(model: Any, prompts: str | Sequence[str], sites: Sequence[str], seed: int | Sequence[int] = 0,
                       num_steps: int | None = None, guidance: float | None = None, *,
                       interventions: Sequence[Any] = (), engine: str = "hooks", **kwargs: Any) -> Generation:
    """Generate and capture `sites` (denoiser and/or text sites) at every call; see
    `Generation.acts` for the shapes ([T, C, B, ...] at denoiser sites); `num_steps` denoising steps.

    engine="hooks" (default) records any site with the hook engine; engine="nnsight" traces the
    whole pipeline with nnsight (`tracer.iter` over denoising steps) — UNet `attn2.hook_out` sites
    only, no interventions — the form a remote nnsight engine can run for models too large here.
    """
    if not sites:
        raise CultureLensError("capture_generation: no sites given")
    if engine == "nnsight":
        if interventions:
            raise CultureLensError("capture_generation(engine='nnsight') takes no interventions; use engine='hooks'")
        return _capture_nnsight(model, prompts, sites, seed, num_steps, guidance, **kwargs)
    if engine != "hooks":
        raise CultureLensError(f"capture_generation: engine {engine!r}; use 'hooks' or 'nnsight'")
    return generate(model, prompts, seed, num_steps, guidance, interventions=interventions, record=sites, **kwargs)


def _capture_nnsight(model: Any, prompts: str | Sequence[str], sites: Sequence[str], seed: int | Sequence[int],
                     num_steps: int | None, guidance: float | None, **kwargs: Any) -> Generation:
    import nnsight
    # The one private name of another package used here: nnsight 0.8 has no public wrapper for a
    # pipeline already in memory (`DiffusionModel` loads from a repo id or folder), so its
    # `_PipelineModule` (an nn.Module view whose forward runs the pipeline) is used directly.
    # nnsight is pinned to <0.9 in pyproject.toml; tests/system/test_import_graph.py allows this one use.
    from nnsight.modeling.diffusion import _PipelineModule

    prompts = prompt_list(prompts, "capture_generation")
    model.check_prompts(prompts, truncate=kwargs.pop("truncate", False))
    parsed = sorted((parse(model, s) for s in sites), key=lambda s: s.order)
    bad = [s.name for s in parsed if s.kind != "xattn_out"]
    if bad:
        raise SiteError(f"capture_generation(engine='nnsight') reads UNet attn2.hook_out sites only, not {bad}")
    cache = model.engine.nnsight
    if "pipeline" not in cache:
        cache["pipeline"] = nnsight.NNsight(_PipelineModule(model.pipe))
    nm = cache["pipeline"]
    kw = pipeline_kwargs(model, prompts, seed, num_steps, guidance, **kwargs)
    final: list[Tensor] = []

    def keep_latents(pipe: Any, i: int, t: Any, cb: dict) -> dict:
        final[:] = [cb["latents"]]
        return {}

    kw.update(callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"])
    saved: dict[str, list[Any]] = {s.name: [] for s in parsed}
    result: list[Any] = []
    with torch.no_grad(), nm.trace(**kw) as tracer:
        for _ in tracer.iter[: kw["num_inference_steps"]]:
            for s in parsed:
                saved[s.name].append(envoy(nm.unet, s.module_path).output.save())
        result.append(nm.output.save())
    acts = {n: _stack(n, [(t, a) for t, a in enumerate(v)], len(prompts)) for n, v in saved.items()}
    return Generation(images=list(result[0].images), latents=final[0], acts=acts)
