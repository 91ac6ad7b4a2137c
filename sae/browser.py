"""A static feature browser for any SAE: per latent its top-activating examples (prompts with
the firing tokens highlighted, or images with the latent's map overlaid), activation histogram
and density, and optional steering previews; written as plain HTML files that open from disk
(file://, no server, no script from elsewhere) plus a JSON export with Neuronpedia's field
names where they exist.

The browser reads precomputed activations (`LatentActivations`: each example's top-k code at
each position), so it does not care how they were captured: `text_activations` captures a text
site of an `interp` model; a denoiser site's caller passes the code of each generation on the
site's grid with the images (`LatentActivations(grid=(h, w), images=...)`).

Layout of the folder:
    index.html, index-2.html, ...   latents in id order, `per_page` a page
    latents/<j>.html                one page per latent
    img/<j>-<rank>.png              image examples with the map overlaid (denoiser SAEs)
    img/<j>-steer-<i>.png           steering previews
    features/<j>.json               Neuronpedia-style feature record
    features.json                   run metadata and the per-latent statistics
    style.css

JSON fields follow Neuronpedia's feature records: `index`, `layer` (our site), `maxActApprox`,
`frac_nonzero`, `freq_hist_data_bar_values` / `freq_hist_data_bar_heights` (parallel arrays: bin
centres and counts of the non-zero activations), `activations` (one per top example: `tokens`,
`values`, `maxValue`, `minValue`, `maxValueTokenIndex`); what Neuronpedia has no field for sits
under `culturelens` (the example's label, image file, steering previews)."""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor
from tqdm.auto import tqdm

from interp.checks import renamed
from sae.errors import SAEError

# A preview: (label, image [H, W, 3] uint8), e.g. ("ablated", img) or ("×5", img).
Preview = tuple[str, np.ndarray]


@dataclass
class LatentActivations:
    """Each example's SAE code at each position: `values`, `indices` [n, p, k] (the top-k
    latents and their activations, as `TopKSAE.encode_sparse` gives them row by row),
    `valid` [n, p] which positions count (padding and dropped specials do not).

    Text SAEs: `tokens[i]` the token strings of example i (p of them, padded positions
    included). Denoiser SAEs: `grid` (h, w) with h·w = p, positions in raster order, and
    `images` [n, H, W, 3] uint8 (optional; without them a map is drawn alone). `labels[i]`
    names the example (its prompt, and seed for a generation)."""

    values: Float[Tensor, "n p k"]
    indices: Int[Tensor, "n p k"]
    d_sae: int
    valid: Bool[Tensor, "n p"] | None = None
    labels: list[str] = field(default_factory=list)
    tokens: list[list[str]] | None = None
    grid: tuple[int, int] | None = None
    images: UInt8[np.ndarray, "n H W 3"] | None = None

    def __post_init__(self) -> None:
        if self.values.shape != self.indices.shape or self.values.ndim != 3:
            raise SAEError(f"LatentActivations: values {tuple(self.values.shape)} and indices "
                           f"{tuple(self.indices.shape)} must both be [n, p, k]")
        n, p, _ = self.values.shape
        if self.valid is None:
            self.valid = torch.ones(n, p, dtype=torch.bool)
        if tuple(self.valid.shape) != (n, p):
            raise SAEError(f"LatentActivations: valid is {tuple(self.valid.shape)}, expected {(n, p)}")
        if not self.labels:
            self.labels = [f"example {i}" for i in range(n)]
        if len(self.labels) != n:
            raise SAEError(f"LatentActivations: {len(self.labels)} labels for {n} examples")
        if self.tokens is not None:
            bad = [i for i, t in enumerate(self.tokens) if len(t) != p]
            if len(self.tokens) != n or bad:
                raise SAEError(f"LatentActivations: tokens must be {n} lists of {p} strings "
                               f"(got {len(self.tokens)} lists; wrong length at {bad[:5]})")
        if self.grid is not None and self.grid[0] * self.grid[1] != p:
            raise SAEError(f"LatentActivations: grid {self.grid} has {self.grid[0] * self.grid[1]} "
                           f"cells for {p} positions")
        if self.images is not None:
            if self.grid is None:
                raise SAEError("LatentActivations: images need grid=(h, w) to place the positions")
            if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[3] != 3:
                raise SAEError(f"LatentActivations: images are {self.images.shape}, expected [{n}, H, W, 3]")
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.d_sae):
            raise SAEError(f"LatentActivations: latent indices outside 0..{self.d_sae - 1}")

    @property
    def n_examples(self) -> int:
        return self.values.shape[0]

    def latent_at(self, example: int, latent: int) -> Float[Tensor, " p"]:
        """Activation of `latent` at each position of `example` (0 where it is not in the top-k)."""
        hit = self.indices[example] == latent
        return (self.values[example] * hit).sum(-1)


def text_activations(model: Any, sae: Any, prompts: Sequence[str], site: str, batch_size: int = 16,
                     drop: str = "special", progress: bool = True) -> LatentActivations:
    """Capture text `site` for `prompts` (`interp.capture`), encode every position with `sae`,
    and keep the token strings; positions dropped as `ActivationStore.build` drops them
    (`drop`: "special", "padding" or "none") do not count."""
    import interp
    from sae.store import token_keep_mask

    if not prompts:
        raise SAEError(f"text_activations({site}): no prompts")
    encoder = site.split(".", 1)[0]
    tok = model.encoder(encoder).tokenizer
    vals, idxs, keeps, toks = [], [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="browse-encode"):
        chunk = list(prompts[start:start + batch_size])
        act = interp.capture(model, chunk, sites=[site])[site]
        if act.ndim != 3 or act.shape[-1] != sae.d_in:
            raise SAEError(f"text_activations({site}): activation {tuple(act.shape)}, expected "
                           f"[B, S, {sae.d_in}]")
        ids = model.tokenize(chunk, encoder=encoder)
        keeps.append(token_keep_mask(ids["input_ids"], ids["attention_mask"],
                                     tok.all_special_ids, drop).cpu())
        with torch.no_grad():
            codes, _ = sae.encode_sparse(act.reshape(-1, act.shape[-1]).to(sae.W_enc.device))
        vals.append(codes.values.reshape(*act.shape[:2], -1).float().cpu())
        idxs.append(codes.indices.reshape(*act.shape[:2], -1).cpu())
        toks += [[_token_text(t) for t in tok.convert_ids_to_tokens(row.tolist())]
                 for row in ids["input_ids"]]
    return LatentActivations(torch.cat(vals), torch.cat(idxs), sae.d_sae, torch.cat(keeps),
                             [str(p) for p in prompts], toks)


def _token_text(t: str) -> str:
    """A tokenizer's piece as it reads: CLIP's end-of-word '</w>' and SentencePiece's '▁' as spaces."""
    if t.endswith("</w>"):
        return t[:-4] + " "
    return t.replace("\u2581", " ").replace("\u0120", " ")


@renamed(steps="num_steps")
def steering_previews(model: Any, sae: Any, site: str, latents: Sequence[int], prompt: str,
                      seed: int = 0, lams: Sequence[float] = (1.0, 4.0), num_steps: int | None = None,
                      progress: bool = True, **generate_kwargs: Any) -> dict[int, list[Preview]]:
    """Per latent: the same seed and prompt generated plain, with the latent ablated (set to 0)
    and amplified ×(1 + λ) for each λ in `lams` (`sae.Steer`, error term kept). Costs
    1 + len(latents)·(1 + len(lams)) generations of `num_steps` denoising steps (None: the model's)."""
    import interp
    from sae.steer import Steer

    def one(interventions: Sequence[Any]) -> np.ndarray:
        gen = interp.generate(model, [prompt], seed=seed, num_steps=num_steps, interventions=interventions,
                              **generate_kwargs)
        return np.asarray(gen.images[0].convert("RGB") if hasattr(gen.images[0], "convert")
                          else gen.images[0], dtype=np.uint8)

    plain = one([])
    out: dict[int, list[Preview]] = {}
    for j in tqdm([int(j) for j in latents], disable=not progress, desc="browse-steer"):
        row = [("plain", plain), ("ablated", one([Steer(sae, site, [j], value=0.0)]))]
        row += [(f"×{1 + lam:g}", one([Steer(sae, site, [j], lam=float(lam))])) for lam in lams]
        out[j] = row
    return out


# -- statistics ------------------------------------------------------------------------------

@dataclass
class LatentStats:
    """What a latent's page shows, computed for all latents at once (`latent_stats`)."""

    index: int
    frac_nonzero: float
    max_value: float
    hist_values: list[float]
    hist_heights: list[int]
    top: list[tuple[int, float]]  # (example, its max activation), best first


def latent_stats(acts: LatentActivations, top_k: int = 10, bins: int = 24) -> list[LatentStats]:
    """Density (fraction of valid positions where the latent is active), maximum, histogram of
    the non-zero activations and the `top_k` examples by their maximum, for every latent.
    One sort over the non-zero entries, not a pass per latent; ties go to the lower example."""
    n, p, k = acts.values.shape
    d = acts.d_sae
    v = acts.values.float().reshape(-1)
    j = acts.indices.reshape(-1).long()
    ex = torch.arange(n).repeat_interleave(p * k)
    keep = (v > 0) & acts.valid.reshape(-1).repeat_interleave(k)
    v, j, ex = v[keep], j[keep], ex[keep]
    n_valid = max(int(acts.valid.sum()), 1)
    counts = torch.bincount(j, minlength=d)
    # per (latent, example): the example's maximum
    key, inv = torch.unique(j * n + ex, return_inverse=True)
    best = torch.zeros(key.numel()).scatter_reduce_(0, inv, v, "amax", include_self=False)
    lat_of, ex_of = key // n, key % n
    # best first within each latent, stable so equal maxima keep the lower example first
    order = torch.argsort(-best, stable=True)
    order = order[torch.argsort(lat_of[order], stable=True)]
    lat_sorted = lat_of[order]
    starts = torch.searchsorted(lat_sorted, torch.arange(d))
    ends = torch.searchsorted(lat_sorted, torch.arange(d), right=True)
    vmax = torch.zeros(d).scatter_reduce_(0, j, v, "amax", include_self=False) if v.numel() else torch.zeros(d)
    # histogram per latent on [0, max]: one bincount over (latent, bin)
    scale = vmax[j].clamp_min(1e-12)
    b = (v / scale * bins).long().clamp_max(bins - 1)
    hist = torch.bincount(j * bins + b, minlength=d * bins).reshape(d, bins)
    out = []
    best_l, ex_l = best[order].tolist(), ex_of[order].tolist()
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        m = float(vmax[i])
        top = [(int(ex_l[t]), float(best_l[t])) for t in range(s, min(e, s + top_k))]
        out.append(LatentStats(i, float(counts[i]) / n_valid, m,
                               [round(m * (q + 0.5) / bins, 6) for q in range(bins)],
                               hist[i].tolist(), top))
    return out


# -- pictures --------------------------------------------------------------------------------

def overlay(image: UInt8[np.ndarray, "H W 3"] | None, heat: Float[np.ndarray, "h w"], vmax: float,
            size: int | None = None) -> UInt8[np.ndarray, "H W 3"]:
    """`heat` (≥ 0, scaled by `vmax`) upsampled to the image and blended over it in orange (at
    most 55 %, so the image stays visible where the latent is densest); on a
    grey square of side `size` (default 8·w) when there is no image."""
    from PIL import Image

    if image is None:
        side = size or max(64, 8 * heat.shape[1])
        image = np.full((max(1, side * heat.shape[0] // max(heat.shape[1], 1)), side, 3), 96, np.uint8)
    H, W = image.shape[:2]
    m = np.clip(np.asarray(heat, np.float32) / max(vmax, 1e-12), 0, 1)
    m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((W, H), Image.BILINEAR),
                   np.float32)[..., None] / 255
    tint = np.array([255, 110, 0], np.float32)
    # the image dimmed where the latent is silent, tinted where it fires
    out = image.astype(np.float32) * (1 - 0.55 * m) * (0.45 + 0.55 * m) + tint * 0.55 * m
    return np.clip(out, 0, 255).astype(np.uint8)


def _png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(path, optimize=False, compress_level=1)


# -- HTML ------------------------------------------------------------------------------------

def e(x: Any) -> str:
    """HTML-escape any value for text or an attribute."""
    return html.escape(str(x), quote=True)


CSS = """body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#23304a;color:#fff;padding:10px 20px}header a{color:#cfe0ff}header h1{font-size:18px;margin:0}
header .meta{font-size:12px;opacity:.85}main{padding:12px 20px;max-width:1200px}
table{border-collapse:collapse;min-width:70%;background:#fff}th,td{border-bottom:1px solid #e4e4e8;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f0f1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:9px;background:#4a78d0;vertical-align:middle}
nav.pages{margin:10px 0}nav.pages a,nav.pages span{display:inline-block;padding:2px 7px;margin:1px;border:1px solid #ccd;border-radius:3px;text-decoration:none}
nav.pages span.cur{background:#23304a;color:#fff}.ex{background:#fff;border:1px solid #e4e4e8;border-radius:4px;padding:6px 8px;margin:6px 0}
.ex .lab{font-size:12px;color:#555}.tok{white-space:pre-wrap;border-radius:2px;padding:0 1px}
.toks{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #e4e4e8;border-radius:4px;padding:4px;text-align:center}
figure img{display:block;image-rendering:pixelated}figcaption{font-size:12px;color:#444;max-width:200px;overflow-wrap:anywhere}
.stats{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-end}.stats div b{display:block;font-size:20px}
.snip{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#333}.muted{color:#888}
form.jump{display:inline;margin-left:12px}form.jump input{width:90px}
"""

_JUMP = """<script>
function culturelensJump(f){var n=parseInt(f.elements.latent.value,10);
if(n>=0&&n<%d){location.href='%s'+n+'.html';}return false;}
</script>"""


def _page(title: str, header: str, body: str, css: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{e(title)}</title>'
            f'<link rel="stylesheet" href="{css}"></head>\n<body><header>{header}</header>'
            f'<main>\n{body}\n</main></body></html>\n')


def _index_name(page: int) -> str:
    return "index.html" if page == 1 else f"index-{page}.html"


def _pager(page: int, n_pages: int, prefix: str = "") -> str:
    """Links to every page near this one, the first and the last (a window for thousands)."""
    near = {1, n_pages} | set(range(max(1, page - 4), min(n_pages, page + 4) + 1))
    parts, last = [], 0
    if page > 1:
        parts.append(f'<a href="{prefix}{_index_name(page - 1)}" rel="prev">‹ prev</a>')
    for q in sorted(near):
        if q - last > 1:
            parts.append('<span class="muted">…</span>')
        parts.append(f'<span class="cur">{q}</span>' if q == page
                     else f'<a href="{prefix}{_index_name(q)}">{q}</a>')
        last = q
    if page < n_pages:
        parts.append(f'<a href="{prefix}{_index_name(page + 1)}" rel="next">next ›</a>')
    return '<nav class="pages">' + "".join(parts) + "</nav>"


def _histogram_svg(values: Sequence[float], heights: Sequence[int], width: int = 420,
                   height: int = 120) -> str:
    """Bars of the non-zero activations' histogram as inline SVG (counts on a linear axis)."""
    if not any(heights):
        return '<span class="muted">no non-zero activation</span>'
    top = max(heights)
    bw = width / max(len(heights), 1)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 18 - (h / top) * (height - 34):.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(h / top) * (height - 34):.1f}" fill="#4a78d0"><title>{e(f"{v:.4g}")}: {e(h)}</title></rect>'
        for i, (v, h) in enumerate(zip(values, heights)))
    hi = values[-1] + (values[-1] - values[-2]) / 2 if len(values) > 1 else (values[0] * 2 if values else 0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="activation histogram">{bars}'
            f'<line x1="0" y1="{height - 18}" x2="{width}" y2="{height - 18}" stroke="#999"/>'
            f'<text x="0" y="{height - 4}" font-size="11">0</text>'
            f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{e(f"{hi:.3g}")}</text>'
            f'<text x="0" y="11" font-size="11">count (max {e(top)})</text></svg>')


@functools.lru_cache(maxsize=65_536)
def _e_token(t: str) -> str:
    return html.escape(t, quote=True)  # tokens repeat across thousands of pages


def _tokens_html(tokens: Sequence[str], values: Sequence[float], vmax: float) -> str:
    spans = []
    for t, v in zip(tokens, values):
        a = min(max(v / vmax, 0.0), 1.0) if vmax > 0 else 0.0
        style = f' style="background:rgba(255,120,0,{a:.2f})"' if a > 0 else ""
        # a number's text needs no escaping: f"{v:.4g}" is digits, sign, '.', 'e', 'inf' or 'nan'
        spans.append(f'<span class="tok"{style} title="{v:.4g}">{_e_token(t)}</span>')
    return '<div class="toks">' + "".join(spans) + "</div>"


def _img_tag(src: str, img: np.ndarray, alt: str, side: int = 176) -> str:
    """<img> shown at least `side` pixels wide (small generations are upscaled, pixelated)."""
    h, w = img.shape[:2]
    scale = max(1.0, side / max(w, 1))
    return (f'<img src="{e(src)}" width="{round(w * scale)}" height="{round(h * scale)}" '
            f'alt="{e(alt)}">')


def _density(frac: float) -> str:
    return f"{100 * frac:.3g} %" if frac > 0 else "0"


@dataclass
class BrowserSite:
    """What `build_browser` wrote: the folder, its pages and files."""

    root: Path
    index_pages: list[Path]
    latent_pages: list[Path]
    features_json: Path

    @property
    def index(self) -> Path:
        return self.index_pages[0]


def build_browser(acts: LatentActivations, out: str | Path, *, title: str = "SAE feature browser",
                  site: str | None = None, meta: Mapping[str, Any] | None = None, latents: Sequence[int] | None = None,
                  top_k: int = 10, bins: int = 24, per_page: int = 256,
                  steering: Mapping[int, Sequence[Preview]] | None = None,
                  heatmap: Callable[[int, int], np.ndarray] | None = None,
                  progress: bool = True) -> BrowserSite:
    """Write the browser for `acts` into folder `out` (see the module docstring for the layout).

    `latents`: which latents get pages (default all, in id order). `steering`: previews per
    latent (`steering_previews`). `heatmap(example, latent)` overrides the map drawn over an
    image example (default: the latent's activations on `acts.grid`, e.g. a `sae.feature_maps`
    map at image resolution). `site` and `meta` are shown in the header and stored in the JSON."""
    if top_k < 1 or bins < 1 or per_page < 1:
        raise SAEError(f"build_browser: top_k={top_k}, bins={bins}, per_page={per_page} must be ≥ 1")
    root = Path(out)
    for sub in ("latents", "features", "img"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "style.css").write_text(CSS, encoding="utf-8")
    ids = list(range(acts.d_sae)) if latents is None else sorted({int(j) for j in latents})
    bad = [j for j in ids if not 0 <= j < acts.d_sae]
    if bad:
        raise SAEError(f"build_browser: latents {bad[:5]} outside 0..{acts.d_sae - 1}")
    steering = {int(k): list(v) for k, v in (steering or {}).items()}
    stats = latent_stats(acts, top_k, bins)
    arrays = (acts.values.float().numpy(), acts.indices.numpy(), acts.valid.numpy())
    meta = dict(meta or {})
    n_pages = max(1, math.ceil(len(ids) / per_page))
    page_of = {j: 1 + i // per_page for i, j in enumerate(ids)}
    is_image = acts.grid is not None
    head_meta = " · ".join(e(f"{k}: {v}") for k, v in [("site", site), ("d_sae", acts.d_sae),
                                                        ("examples", acts.n_examples), *meta.items()]
                           if v is not None)
    summary: list[dict[str, Any]] = []
    latent_pages: list[Path] = []
    snippets: dict[int, str] = {}
    for pos, j in enumerate(tqdm(ids, disable=not progress, desc="browse-pages", unit="latent")):
        st = stats[j]
        record, body, snip = _latent(acts, arrays, st, j, root, steering.get(j, []), heatmap, site)
        snippets[j] = snip
        prev_link = f'<a href="{ids[pos - 1]}.html">‹ latent {ids[pos - 1]}</a>' if pos > 0 else ""
        next_link = f'<a href="{ids[pos + 1]}.html">latent {ids[pos + 1]} ›</a>' if pos + 1 < len(ids) else ""
        header = (f'<h1>Latent {j}</h1><div class="meta"><a href="../{_index_name(page_of[j])}">index</a> · '
                  f'{prev_link}{" · " if prev_link and next_link else ""}{next_link} · {head_meta}</div>')
        page = root / "latents" / f"{j}.html"
        page.write_text(_page(f"{title}: latent {j}", header, body, "../style.css"), encoding="utf-8")
        latent_pages.append(page)
        (root / "features" / f"{j}.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        summary.append({"index": j, "maxActApprox": record["maxActApprox"],
                        "frac_nonzero": record["frac_nonzero"]})
    index_pages = []
    jump = _JUMP % (acts.d_sae, "latents/")
    dmax = max((stats[j].frac_nonzero for j in ids), default=0) or 1  # density bars' full width
    dead = sum(1 for j in ids if stats[j].frac_nonzero == 0)
    for page in range(1, n_pages + 1):
        chunk = ids[(page - 1) * per_page: page * per_page]
        rows = "".join(
            f'<tr><td><a href="latents/{j}.html">{j}</a></td>'
            f'<td class="num">{e(_density(stats[j].frac_nonzero))}</td>'
            f'<td><span class="bar" style="width:{max(1, round(80 * stats[j].frac_nonzero / dmax)) if stats[j].frac_nonzero else 0}px"></span></td>'
            f'<td class="num">{e(f"{stats[j].max_value:.4g}")}</td><td>{snippets[j]}</td></tr>'
            for j in chunk)
        header = (f'<h1>{e(title)}</h1><div class="meta">{head_meta} · {len(ids)} latents, '
                  f'{dead} never active here · page {page} of {n_pages}'
                  f'<form class="jump" onsubmit="return culturelensJump(this)"><input name="latent" type="number" '
                  f'min="0" max="{acts.d_sae - 1}" placeholder="latent id"> <button>go</button></form></div>')
        body = (_pager(page, n_pages) +
                '<table><thead><tr><th>latent</th><th>density</th><th></th><th>max act.</th>'
                f'<th>{"top example" if is_image else "top tokens"}</th></tr></thead><tbody>{rows}</tbody></table>'
                + _pager(page, n_pages))
        path = root / _index_name(page)
        path.write_text(_page(f"{title} ({page}/{n_pages})", header, body + jump, "style.css"), encoding="utf-8")
        index_pages.append(path)
    fj = root / "features.json"
    fj.write_text(json.dumps({"title": title, "layer": site, "d_sae": acts.d_sae, "n_examples": acts.n_examples,
                              "meta": meta, "features": summary}, ensure_ascii=False, indent=1), encoding="utf-8")
    return BrowserSite(root, index_pages, latent_pages, fj)


def _latent(acts: LatentActivations, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], st: LatentStats,
            j: int, root: Path, previews: Sequence[Preview], heatmap: Callable[[int, int], np.ndarray] | None,
            site: str | None) -> tuple[dict, str, str]:
    """(Neuronpedia-style record, page body, index snippet) of latent j; writes its PNGs.
    `arrays`: acts' values, indices and valid mask as numpy (per-example reads in numpy are
    ~10x cheaper than tensor ops at this size)."""
    V, I, M = arrays
    examples, blocks, snip = [], [], '<span class="muted">never active</span>'
    for rank, (ex, mx) in enumerate(st.top):
        vals = (V[ex] * (I[ex] == j)).sum(-1) * M[ex]  # [p], 0 at positions that do not count
        valid = M[ex]
        shown = vals.tolist()
        arg = int(np.argmax(vals))
        rec = {"tokens": None, "values": np.round(vals, 5).tolist(), "maxValue": round(mx, 6),
               "minValue": round(float(vals.min()), 6), "maxValueTokenIndex": arg,
               "culturelens": {"example": ex, "label": acts.labels[ex]}}
        if acts.grid is not None:
            h, w = acts.grid
            heat = heatmap(ex, j) if heatmap is not None else np.asarray(vals, np.float32).reshape(h, w)
            img = overlay(None if acts.images is None else acts.images[ex], heat, st.max_value)
            name = f"img/{j}-{rank}.png"
            _png(root / name, img)
            rec["culturelens"]["image"] = name
            blocks.append(f'<figure>{_img_tag("../" + name, img, acts.labels[ex])}<figcaption>#{rank + 1} · '
                          f'{e(acts.labels[ex])}<br>max {e(f"{mx:.4g}")}</figcaption></figure>')
            if rank == 0:
                snip = _img_tag(name, img, acts.labels[ex], side=48)
        else:
            toks = acts.tokens[ex] if acts.tokens is not None else [f"[{i}]" for i in range(len(shown))]
            keep = np.flatnonzero(valid).tolist()
            t_kept, v_kept = [toks[i] for i in keep], [shown[i] for i in keep]
            rec["tokens"], rec["values"] = t_kept, np.round(vals[keep], 5).tolist()
            rec["maxValueTokenIndex"] = int(np.argmax(v_kept)) if v_kept else 0
            rec["minValue"] = round(min(v_kept), 6) if v_kept else 0.0
            blocks.append(f'<div class="ex"><div class="lab">#{rank + 1} · max {e(f"{mx:.4g}")} · '
                          f'{e(acts.labels[ex])}</div>{_tokens_html(t_kept, v_kept, st.max_value)}</div>')
            if rank == 0 and v_kept:
                a = rec["maxValueTokenIndex"]
                snip = ('<span class="snip">' + e("".join(t_kept[max(0, a - 3):a])) + "<b>"
                        + e(t_kept[a]) + "</b>" + e("".join(t_kept[a + 1:a + 3])) + "</span>")
        examples.append(rec)
    steer_recs, steer_html = [], []
    for i, (label, img) in enumerate(previews):
        name = f"img/{j}-steer-{i}.png"
        _png(root / name, np.asarray(img, np.uint8))
        steer_recs.append({"label": label, "image": name})
        steer_html.append(f'<figure>{_img_tag("../" + name, np.asarray(img), label)}'
                          f'<figcaption>{e(label)}</figcaption></figure>')
    record = {"index": j, "layer": site, "maxActApprox": round(st.max_value, 6),
              "frac_nonzero": st.frac_nonzero, "freq_hist_data_bar_values": st.hist_values,
              "freq_hist_data_bar_heights": st.hist_heights, "activations": examples,
              "culturelens": {"steering": steer_recs}}
    log_d = f"{math.log10(st.frac_nonzero):.2f}" if st.frac_nonzero > 0 else "−∞"
    kind = "images with the latent's map" if acts.grid is not None else "prompts, firing tokens highlighted"
    body = (f'<section class="stats"><div><b>{e(_density(st.frac_nonzero))}</b>density (active positions)</div>'
            f'<div><b>{e(log_d)}</b>log₁₀ density</div><div><b>{e(f"{st.max_value:.4g}")}</b>max activation</div>'
            f'<div>{_histogram_svg(st.hist_values, st.hist_heights)}<br>non-zero activations</div></section>'
            f'<h2>Top examples ({e(kind)})</h2>')
    if not blocks:
        body += '<p class="muted">This latent is active on none of these examples.</p>'
    elif acts.grid is not None:
        body += '<div class="grid">' + "".join(blocks) + "</div>"
    else:
        body += "".join(blocks)
    if steer_html:
        body += '<h2>Steering previews (same seed)</h2><div class="grid">' + "".join(steer_html) + "</div>"
    return record, body, snip


def synthetic_activations(n: int, p: int, k: int, d_sae: int, seed: int = 0,
                          grid: tuple[int, int] | None = None, image_size: int = 32) -> LatentActivations:
    """Random codes for tests and benchmarks: n examples × p positions, k latents each drawn
    with Zipf-like frequencies (some latents common, many rare, some never), exponential
    values; text tokens "w<i>", or with `grid`, random images of side `image_size`."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, d_sae + 1, dtype=torch.float64)
    weights[-max(1, d_sae // 16):] = 0  # the last sixteenth never fires
    idx = torch.multinomial(weights.expand(n * p, d_sae), k, replacement=False, generator=g)
    # a fixed permutation so common latents are not simply the low ids
    perm = torch.randperm(d_sae, generator=g)
    idx = perm[idx].reshape(n, p, k)
    vals = torch.empty(n, p, k).exponential_(generator=g)
    vals[torch.rand(n, p, k, generator=g) < 0.2] = 0.0  # some top-k entries clamped at 0 by the ReLU
    valid = torch.ones(n, p, dtype=torch.bool)
    if grid is None:
        lengths = torch.randint(max(1, p // 2), p + 1, (n,), generator=g)
        valid = torch.arange(p)[None, :] < lengths[:, None]
        words = [[f"w{int(t)} " for t in torch.randint(0, 500, (p,), generator=g)] for _ in range(n)]
        return LatentActivations(vals, idx, d_sae, valid, [f"prompt {i}" for i in range(n)], words)
    imgs = torch.randint(0, 256, (n, image_size, image_size, 3), generator=g, dtype=torch.uint8).numpy()
    return LatentActivations(vals, idx, d_sae, valid, [f"prompt {i}, seed {i % 3}" for i in range(n)],
                             grid=grid, images=imgs)


def denoiser_activations(model: Any, sae: Any, site: str, prompts: Sequence[str], seed: int = 0,
                         num_steps: int | None = None, progress: bool = True) -> LatentActivations:
    """One seeded generation per prompt read at denoiser `site` by `sae.feature_maps` (all
    latents); each position's code is the top-k (the SAE's k) of its activations averaged over
    the steps read, on the site's grid, with the generated image as the example's picture."""
    from sae.feature_maps import feature_maps

    if not prompts:
        raise SAEError(f"denoiser_activations({site}): no prompts")
    vals, idxs, imgs, grid = [], [], [], None
    for prompt in tqdm(list(prompts), disable=not progress, desc="browse-generate"):
        fm = feature_maps(model, sae, site, str(prompt), range(sae.d_sae), seed=seed, num_steps=num_steps)
        m = fm.raw.float().mean(0)  # [L, h, w]
        grid = (int(m.shape[1]), int(m.shape[2]))
        z = m.reshape(m.shape[0], -1).T  # [p, L]
        top = z.topk(min(sae.k, z.shape[1]), dim=1)
        vals.append(top.values.clamp_min(0))
        idxs.append(top.indices)
        imgs.append(np.asarray(fm.image, dtype=np.uint8))
    return LatentActivations(torch.stack(vals), torch.stack(idxs), sae.d_sae,
                             labels=[f"{p} (seed {seed})" for p in prompts], grid=grid,
                             images=np.stack(imgs))
