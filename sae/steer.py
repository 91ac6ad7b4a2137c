"""SAE interventions for `interp`: splice the SAE into a site, or steer chosen latents, at text
or denoiser sites; and what splicing does to the image (`splice_fidelity`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

import interp
from interp.checks import finite_number, index_list
from interp.fidelity import ssim
from interp.interventions import check_branch
from interp.methods import heatmaps
from interp.result_io import (load_images, load_result, record, require_keys, restore_nonfinite, result_folder,
                              save_images, save_result, with_heading)
from sae.errors import SAEError
from sae.layout import as_rows, from_rows
from sae.model import TopKSAE

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _finite(x: float | Sequence[float] | Tensor | None, what: str) -> float | Sequence[float] | Tensor | None:
    """`x` unchanged when it is None or all finite; NaN/inf would turn every steered value into NaN."""
    if x is None:
        return None
    t = torch.as_tensor(x, dtype=torch.float32) if not torch.is_tensor(x) else x
    if not torch.isfinite(t).all():
        raise SAEError(f"{what}: must be finite, got {x if t.numel() <= 8 else 'a tensor with NaN or inf'}")
    return x


class Steer:
    """An `interp` intervention on `site`: encode the activation, scale latents by (1+λ)
    (or set them to `value`), decode; or, with `add`, add add·W_dec[j] without encoding
    (SDXL-unbox's steering; the only form for SAEs trained on a residual update).

    keep_error=True returns act + (steered − plain reconstruction): the SAE's error is kept
    and λ = 0 is exactly the identity (the two decodes are the same float ops). With
    keep_error=False the activation is replaced by the (steered) reconstruction; with no
    latents that is the plain splice decode(encode(x)).

    Where, as interp's interventions: `steps` (denoising steps; None = all), `branch` ("cond",
    the default, "uncond" or "both"), `positions` (tokens, pixels of a UNet feature map in
    raster order, MMDiT patches: the SAE rows of `sae.layout`), `head` (the head an SAE at a
    q/k/v/z site was trained on)."""

    def __init__(self, sae: TopKSAE, site: str, latents: Sequence[int] = (), lam: float = 0.0,
                 keep_error: bool = True, value: float | Sequence[float] | Tensor | None = None,
                 positions: Sequence[int] | None = None, steps: Sequence[int] | None = None, *,
                 add: float | Sequence[float] | Tensor | None = None, branch: str = "cond",
                 head: int | None = None, residual: bool = False):
        where = f"Steer({site})"
        lam = finite_number(lam, f"{where}: lam")
        value, add = _finite(value, f"{where}: value"), _finite(add, f"{where}: add")
        self.sae, self.site, self.lam, self.keep_error, self.value = sae, site, lam, keep_error, value
        self.add, self.head, self.branch = add, head, branch
        self.steps = None if steps is None else index_list(steps, f"{where}: steps")
        check_branch(self)
        # Positions are applied here, on the SAE's rows, not by the engine (which has no
        # position axis at UNet feature maps and reads a pattern's positions as keys); so this
        # object exposes no `positions` attribute to it.
        rows = None if positions is None else index_list(positions, f"{where}: positions")
        if rows is not None and any(p < 0 for p in rows):
            # a negative position would wrap around to the end (counted from the last row)
            raise SAEError(f"{where}: positions {[p for p in rows if p < 0]} are negative; give row indices ≥ 0")
        self.rows_at = None if rows is None else torch.tensor(rows, dtype=torch.long)
        lat = index_list(latents, f"{where}: latents")
        bad = [j for j in lat if not 0 <= j < sae.d_sae]
        if bad:
            raise SAEError(f"{where}: latents {bad} outside 0..{sae.d_sae - 1}")
        if len(set(lat)) != len(lat):
            raise SAEError(f"{where}: latents repeat {sorted({j for j in lat if lat.count(j) > 1})}")
        self.latents = torch.tensor(lat, dtype=torch.long)
        if add is not None and value is not None:
            raise SAEError(f"Steer({site}): give value= (set latents) or add= (add decoder rows), not both")
        if add is not None and len(self.latents) == 0:
            raise SAEError(f"Steer({site}): add= needs latents")
        if residual and add is None:
            raise SAEError(f"Steer({site}): an SAE on a residual update (output − input) encodes the update, "
                           "which an output hook does not see; use add= (adds value × W_dec[j] to the output)")

    def __repr__(self) -> str:
        how = f"add={self.add}" if self.add is not None else f"value={self.value}" if self.value is not None \
            else f"lam={self.lam}"
        return f"Steer({self.site!r}, latents={self.latents.tolist()}, {how})"

    def delta(self, x: Float[Tensor, "n d_in"]) -> tuple[Tensor, Float[Tensor, "n d_in"]]:
        """(plain reconstruction, change of reconstruction from editing the latents)."""
        codes, _ = self.sae.encode_sparse(x)
        recon = self.sae.decode_sparse(codes)
        if len(self.latents) == 0:
            return recon, torch.zeros_like(recon)
        lat = self.latents.to(x.device)
        # z restricted to the chosen latents: 0 where a latent is not among the row's top-k.
        hit = codes.indices[:, :, None] == lat[None, None, :]
        z = (codes.values[:, :, None] * hit).sum(1)
        if self.value is None:
            new = z * (1 + self.lam)
        else:  # one value for all chosen latents, or one per latent (e.g. each latent's typical activation)
            new = torch.as_tensor(self.value, dtype=z.dtype, device=z.device).expand_as(z)
        return recon, (new - z) @ self.sae.W_dec[lat]

    def _edit(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
        if self.add is not None:
            lat = self.latents.to(x.device)
            coef = torch.as_tensor(self.add, dtype=x.dtype, device=x.device).expand(len(lat))
            return x + coef @ self.sae.W_dec[lat]
        recon, delta = self.delta(x)
        return x + delta if self.keep_error else recon + delta

    @torch.no_grad()
    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        """The edited activation, same shape, dtype and device as `act`."""
        if self.sae.W_dec.device != act.device:
            self.sae.to(act.device)
        rows = as_rows(self.site, act, self.head)
        if rows.shape[-1] != self.sae.d_in:
            raise SAEError(f"Steer({self.site}): activation last dim {rows.shape[-1]} (the rows of an activation "
                           f"{tuple(act.shape)}, head={self.head}; see sae.layout) != SAE d_in {self.sae.d_in}")
        if self.rows_at is not None:
            bad = [int(p) for p in self.rows_at if not 0 <= p < rows.shape[-2]]
            if bad:
                raise SAEError(f"Steer({self.site}): positions {bad} out of range 0..{rows.shape[-2] - 1}")
        sel = rows if self.rows_at is None else rows[..., self.rows_at.to(act.device), :]
        x = sel.reshape(-1, sel.shape[-1]).to(self.sae.W_dec.dtype)
        new = self._edit(x).reshape(sel.shape).to(act.dtype)
        if self.rows_at is not None:
            full = rows.clone()
            full[..., self.rows_at.to(act.device), :] = new
            new = full
        return from_rows(self.site, new, act, self.head)


def splice(sae: TopKSAE, site: str, keep_error: bool = False, *, steps: Sequence[int] | None = None,
           branch: str = "cond", positions: Sequence[int] | None = None, head: int | None = None) -> Steer:
    """Intervention replacing the site's activation by decode(encode(x)) (+ error if asked),
    at the chosen `steps`, `branch`, `positions` and `head` (see `Steer`)."""
    return Steer(sae, site, (), 0.0, keep_error=keep_error, positions=positions, steps=steps, branch=branch,
                 head=head)


@dataclass(frozen=True)
class SpliceFidelity:
    """What splicing the SAE in (no error term) does to the images: `ssim` [n] of each spliced
    image with the plain one (same prompt and seed); `judge_agreement` the share of images whose
    judge label is unchanged (None without a judge); the labels and images themselves.

    `save(folder)`: PIL images as `plain_{i}.png` / `spliced_{i}.png`, `ssim` and other images
    (arrays) in splice_fidelity.safetensors, the rest in splice_fidelity.json."""

    result_name: ClassVar[str] = "splice_fidelity"

    ssim: Float[Tensor, "n"]
    mean_ssim: float
    judge_agreement: float | None
    labels_plain: list[str] | None
    labels_spliced: list[str] | None
    images_plain: list[Any]
    images_spliced: list[Any]

    def to_markdown(self, heading: str | None = None) -> str:
        """The mean SSIM and judge agreement, then one row per image: its SSIM and (with a
        judge) the plain and spliced labels; under `heading` (a Markdown heading line) when given."""
        judged = self.labels_plain is not None and self.labels_spliced is not None
        agree = "no judge" if self.judge_agreement is None else f"judge agreement {self.judge_agreement:.3f}"
        n = len(self.ssim)
        lines = [f"SAE spliced in (no error term): mean SSIM with the plain image {self.mean_ssim:.4f} over "
                 f"{n} image{'' if n == 1 else 's'}; {agree}", "",
                 "| image | SSIM |" + (" judge, plain | judge, spliced |" if judged else ""),
                 "|---|---|" + ("---|---|" if judged else "")]
        for i, v in enumerate(self.ssim.tolist()):
            lines.append(f"| {i} | {v:.4f} |" + (f" {self.labels_plain[i]} | {self.labels_spliced[i]} |" if judged else ""))
        return with_heading("\n".join(lines), heading)

    def plot(self, path: str | Path | None = None) -> Figure:
        """The plain images in the top row, the spliced ones (titled with their SSIM) below."""
        n = len(self.images_plain)
        if n == 0:
            raise SAEError("SpliceFidelity.plot: no images to draw")
        ssims = self.ssim.tolist()
        shown = ([(_shown(im), f"plain {i}") for i, im in enumerate(self.images_plain)]
                 + [(_shown(im), f"spliced {i} (SSIM {ssims[i]:.3f})") for i, im in enumerate(self.images_spliced)])
        return heatmaps.figure(shown, [], shown[0][0], path, cols=n)

    def save(self, folder: str | Path) -> Path:
        """`folder/plain_{i}.png`, `folder/spliced_{i}.png` (PIL images), `folder/splice_fidelity.json`
        + `splice_fidelity.safetensors` (ssim, non-PIL images); returns the folder."""
        folder = result_folder(folder, self.result_name)
        plain, t_plain = save_images(folder, self.images_plain, "plain", "images_plain")
        spliced, t_spliced = save_images(folder, self.images_spliced, "spliced", "images_spliced")
        fields = {"mean_ssim": self.mean_ssim, "judge_agreement": self.judge_agreement,
                  "labels_plain": self.labels_plain, "labels_spliced": self.labels_spliced}
        meta = {**record(fields), "images_plain": plain, "images_spliced": spliced}
        return save_result(folder, self.result_name, meta, {"ssim": self.ssim, **t_plain, **t_spliced})

    @classmethod
    def load(cls, folder: str | Path) -> SpliceFidelity:
        """Read back what `save` wrote (PNG images as PIL images, array images as numpy arrays)."""
        folder = result_folder(folder, cls.result_name)
        where = str(folder / f"{cls.result_name}.json")
        meta, t = load_result(folder, cls.result_name, "SpliceFidelity.save")
        require_keys(meta, ("mean_ssim", "judge_agreement", "labels_plain", "labels_spliced", "images_plain",
                            "images_spliced"), where, cls.__name__)
        require_keys(t, ("ssim",), str(folder / f"{cls.result_name}.safetensors"), cls.__name__)
        meta = restore_nonfinite(meta, where)
        return cls(t["ssim"], meta["mean_ssim"], meta["judge_agreement"], meta["labels_plain"], meta["labels_spliced"],
                   load_images(folder, meta["images_plain"], t, where), load_images(folder, meta["images_spliced"], t, where))


def _shown(image: Any) -> Tensor:
    """An image as the [H, W, 3] tensor `heatmaps.figure` draws (PIL images converted, arrays as they are)."""
    from PIL import Image

    return heatmaps.image_tensor(image) if isinstance(image, Image.Image) else torch.as_tensor(np.asarray(image))


def splice_fidelity(model: Any, sae: TopKSAE, site: str, prompts: Sequence[str], seed: int = 0, *,
                    judge: Any = None, steps: Sequence[int] | None = None, branch: str = "cond",
                    positions: Sequence[int] | None = None, head: int | None = None,
                    num_steps: int | None = None, guidance: float | None = None) -> SpliceFidelity:
    """Generate `prompts` plain and with `splice(sae, site)` (no error term) at `steps` /
    `branch` / `positions`; compare the images by SSIM (`interp.fidelity.ssim`) and, with a
    `judge` (an `circuits.data.judges` judge), by whether its label agrees."""
    prompts = list(prompts)
    kw = dict(seed=seed, num_steps=num_steps, guidance=guidance)
    plain = interp.generate(model, prompts, **kw).images
    spliced = interp.generate(model, prompts, interventions=[splice(sae, site, steps=steps, branch=branch,
                                                                    positions=positions, head=head)], **kw).images
    s = ssim(spliced, plain)
    lp = ls = agree = None
    if judge is not None:
        lp, ls = judge.predict(plain), judge.predict(spliced)
        agree = sum(a == b for a, b in zip(lp, ls)) / len(lp)
    return SpliceFidelity(s, float(s.mean()), agree, lp, ls, list(plain), list(spliced))
