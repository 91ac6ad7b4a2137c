"""Where SAE latents fire in the image: per denoising step and over all steps, at image
resolution, for an SAE at a spatial denoiser site (UNet feature maps, attention outputs and
q/k/v/z over pixels; MMDiT image-stream outputs and the image part of joint attention).

One seeded generation of the prompt reads the site on the conditional branch (`sae.denoiser`,
the store's reader, so a map's values are the store's rows); each step's rows are encoded,
the chosen latents' activations laid on the site's grid (h × w pixels of that resolution, or
the MMDiT patch grid), upsampled bicubic to the image and clamped at 0, as
`interp.attribution`'s maps (`interp.methods.heatmaps`). `total` is the mean over the steps read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from interp.methods import heatmaps
from interp.result_io import load_result, save_result, with_heading
from sae import denoiser
from sae.denoiser import DenoiserCapture
from sae.errors import SAEError
from sae.model import TopKSAE

_JOINT_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern")


@dataclass
class FeatureMaps:
    """Latent maps of one generation. `per_step` [T, L, H, W] the activation of each latent
    (after the SAE's top-k) at image resolution for each step in `steps`; `total` [L, H, W] their
    mean over steps; `raw` [T, L, h, w] the same on the site's own grid; `image` [H, W, 3] uint8
    (the image generated while reading)."""

    prompt: str
    site: str
    latents: list[int]
    steps: list[int]
    per_step: Float[Tensor, "T L H W"]
    total: Float[Tensor, "L H W"]
    raw: Float[Tensor, "T L h w"]
    image: UInt8[Tensor, "H W 3"]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, latent: int) -> Float[Tensor, "H W"]:
        """The aggregate map of one latent."""
        if latent not in self.latents:
            raise SAEError(f"FeatureMaps: no map for latent {latent}; latents are {self.latents}")
        return self.total[self.latents.index(latent)]

    def to_markdown(self, heading: str | None = None) -> str:
        """Per latent: the peak of its aggregate map, max, mean, top-10% mass share and the
        steps it fires at; under `heading` when given."""
        lines = [f"SAE latent maps at `{self.site}` for {self.prompt!r} (seed {self.meta.get('seed')}, "
                 f"steps {self.steps})", "",
                 "| latent | peak (row, col) | max | mean | top-10% mass share | steps firing |",
                 "|---|---|---|---|---|---|"]
        for i, j in enumerate(self.latents):
            m = self.total[i]
            r, c = divmod(int(m.flatten().argmax()), m.shape[1])
            firing = [t for t, per in zip(self.steps, self.raw[:, i]) if float(per.max()) > 0]
            lines.append(f"| {j} | ({r}, {c}) | {float(self.raw[:, i].max()):.4g} | {float(m.mean()):.4g} | "
                         f"{heatmaps.mass_share(m):.3f} | {firing} |")
        return with_heading("\n".join(lines), heading)

    def plot(self, path: str | Path | None = None, steps: Sequence[int] | None = None) -> Any:
        """The image, each latent's aggregate map, then (for `steps`, e.g. [0, 1]) its per-step
        maps, all over the image on one colour scale so latents and steps compare directly."""
        heats: list[Any] = [(self.total[i], f"latent {j}") for i, j in enumerate(self.latents)]
        for t in steps or ():
            if t not in self.steps:
                raise SAEError(f"FeatureMaps.plot: step {t} was not read; steps are {self.steps}")
            k = self.steps.index(t)
            # one row per step, under the aggregate row (its first cell, under the image, empty)
            heats += [None] + [(self.per_step[k, i], f"latent {j}, step {t}") for i, j in enumerate(self.latents)]
        vmax = float(torch.stack([h[0] for h in heats if h is not None]).max())
        return heatmaps.figure([(self.image, "image")], heats, self.image, path, vmax, cols=1 + len(self.latents))

    def save(self, folder: str | Path) -> Path:
        """`folder/feature_maps.json` + `folder/feature_maps.safetensors`."""
        meta = {"prompt": self.prompt, "site": self.site, "latents": self.latents, "steps": self.steps,
                "meta": self.meta}
        return save_result(folder, "feature_maps", meta, {"per_step": self.per_step, "total": self.total,
                                                          "raw": self.raw, "image": self.image})

    @classmethod
    def load(cls, folder: str | Path) -> FeatureMaps:
        meta, t = load_result(folder, "feature_maps", "FeatureMaps.save")
        return cls(meta["prompt"], meta["site"], meta["latents"], meta["steps"], t["per_step"], t["total"],
                   t["raw"], t["image"], meta["meta"])


def _image_positions(model: Any, site: str, n_pos: int, height: int, width: int) -> Tensor | None:
    """MMDiT joint-attention sites: the image part of the joint sequence (else None: all)."""
    if site.startswith("transformer.") and site.rsplit(".", 1)[-1] in _JOINT_HOOKS:
        img = model.joint_positions(height, width)["image"]
        return torch.arange(img.start, img.stop)
    return None


@torch.no_grad()
def feature_maps(model: Any, sae: TopKSAE, site: str, prompt: str, latents: Sequence[int], seed: int = 0,
                 steps: Sequence[int] | None = None, *, num_steps: int | None = None,
                 guidance: float | None = None, head: int | None = None, residual: bool = False,
                 interventions: Sequence[Any] = ()) -> FeatureMaps:
    """Where each of `latents` fires in the image of `prompt` (noise `seed`), per step of
    `steps` (default all) and averaged, at image resolution (module docstring). `head` /
    `residual` as the SAE's store was built (`DenoiserCapture`); `interventions` act during the
    generation (a planted direction, a steering vector)."""
    if not isinstance(prompt, str):
        raise SAEError("feature_maps: one prompt (a str) per call")
    lat = [int(j) for j in latents]
    bad = [j for j in lat if not 0 <= j < sae.d_sae]
    if not lat or bad:
        raise SAEError(f"feature_maps({site}): latents {bad or lat} must be a non-empty list in 0..{sae.d_sae - 1}")
    hook = site.rsplit(".", 1)[-1]
    if hook == "hook_txt_out" or (site.startswith("unet.") and ".attn2." in site and hook in ("hook_k", "hook_v")):
        raise SAEError(f"feature_maps: site {site}: its positions are text tokens, not image positions")
    cap = DenoiserCapture(steps=steps, num_steps=num_steps, guidance=guidance, head=head, residual=residual)
    rows, index, gen = denoiser.capture_rows(model, site, [prompt], [0], seed, cap, interventions, output_type="pil")
    if rows.shape[1] != sae.d_in:
        raise SAEError(f"feature_maps({site}): rows of width {rows.shape[1]} (head={head}) != SAE d_in {sae.d_in}")
    image = heatmaps.image_tensor(gen.images[0])
    H, W = image.shape[:2]
    read = sorted({int(t) for t in index[:, 2]})
    raw, up = [], []
    for t in read:
        at = index[:, 2] == t
        r, pos = rows[at], index[at, 4]
        keep = _image_positions(model, site, r.shape[0], H, W)
        if keep is not None:
            sel = torch.isin(pos, keep)
            r, pos = r[sel], pos[sel]
        z = sae.encode(r.to(sae.W_dec.dtype))[:, lat].float()  # [P, L], positions in raster order
        h, w = heatmaps.grid(z.shape[0], H, W, f"feature_maps: site {site}")
        m = z.T.reshape(len(lat), h, w)
        raw.append(m)
        up.append(heatmaps.upsample(m, (H, W)))
    per_step = torch.stack(up)
    meta = {"family": model.family, "seed": seed, "num_steps": int(num_steps or model.defaults["steps"]),
            "guidance": guidance if guidance is not None else model.defaults["guidance"], "head": head,
            "residual": residual, "grid": [h, w], "interventions": [repr(iv) for iv in interventions]}
    return FeatureMaps(prompt, site, lat, read, per_step, per_step.mean(0), torch.stack(raw), image, meta)
