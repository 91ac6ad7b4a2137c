"""Reading a denoiser site during generation as SAE rows, one (prompt, seed, step, branch,
position) per row, without keeping the other steps, branches or positions.

`interp.capture_generation` keeps every call of a site ([T, C, B, ...]); at SDXL size that is
gigabytes per prompt. Here a read-only intervention (`_Reader`) sees each call, keeps only the
chosen steps, CFG branch and positions, already as [n, D] rows (`sae.layout`), and the
pipeline skips the VAE decode (`output_type="latent"`) since only the denoiser is read. The
values are the ones `capture_generation` records (same engine, same call order): the store
test checks it row by row."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

import interp
from interp.interventions import BRANCHES, InterventionBase, Where
from interp.model.sites import Site, parse, resolve_module
from sae.errors import SAEError
from sae.layout import as_rows, has_heads

#: Columns of a denoiser store's `index` tensor, one row per activation row.
INDEX_COLUMNS = ("prompt", "seed", "step", "branch", "position")
# The block input that `residual=True` subtracts: (positional index, keyword) per site kind.
_RESIDUAL_INPUT = {"tblock_out": (0, "hidden_states"), "resnet_out": (0, "input_tensor"),
                   "img_out": (None, "hidden_states"), "txt_out": (None, "encoder_hidden_states")}


@dataclass(frozen=True)
class DenoiserCapture:
    """Which calls, branches and positions of a denoiser site become rows."""

    steps: tuple[int, ...] | None = None
    """Denoising step indices to keep (0 = the first, noisiest step); None keeps every step."""
    num_steps: int | None = None
    """Denoising steps of each generation; None: the model's default (`model.defaults`)."""
    guidance: float | None = None
    """Classifier-free guidance scale; None: the model's default. ≤ 1 runs no unconditional branch."""
    branch: str = "cond"
    """CFG branch kept: "cond" (the prompt's rows, the default, as for interventions), "uncond" or "both"."""
    head: int | None = None
    """At sites with heads (q/k/v/z/pattern): one head's vector per row; None concatenates the heads."""
    residual: bool = False
    """Keep the block's residual update (output − input, as SDXL-unbox) instead of its output;
    for UNet transformer-block / resnet outputs and MMDiT stream outputs."""
    positions: tuple[int, ...] | None = None
    """Positions (pixels in raster order, tokens, patches) to keep; None keeps all."""
    sample_positions: int | None = None
    """Keep this many positions per (prompt, seed, step, branch), drawn with `sample_seed` (after
    `positions`); None keeps them all. The draw depends only on those four and the seed, so
    batching and sharding do not change which rows a store holds."""
    sample_seed: int = 0
    """Seed of the position draw."""
    height: int | None = None
    """Image height; None: the model's default."""
    width: int | None = None
    """Image width; None: the model's default."""

    def __post_init__(self) -> None:
        if self.branch not in ("cond", "uncond", "both"):
            raise SAEError(f"DenoiserCapture: branch={self.branch!r}; use 'cond', 'uncond' or 'both'")
        for name in ("steps", "positions"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(int(i) for i in v)
                if not v or any(i < 0 for i in v) or len(set(v)) != len(v):
                    raise SAEError(f"DenoiserCapture: {name}={list(v)} must be distinct non-negative indices")
                object.__setattr__(self, name, tuple(sorted(v)))
        if self.sample_positions is not None and self.sample_positions < 1:
            raise SAEError(f"DenoiserCapture: sample_positions={self.sample_positions} must be ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def check_site(model: Any, site: str, cap: DenoiserCapture) -> Site:
    """The parsed denoiser site, refusing options that do not apply to it (naming the site)."""
    s = parse(model, site)
    if not s.denoiser:
        raise SAEError(f"site {site}: not a denoiser site (unet./transformer.)")
    if cap.head is not None and not has_heads(s.name):
        raise SAEError(f"site {site}: head={cap.head}, but heads exist only at hook_q/k/v/z/pattern sites")
    if cap.head is not None and not 0 <= cap.head < s.dim:
        raise SAEError(f"site {site}: head {cap.head} out of range 0..{s.dim - 1}")
    if cap.residual and s.kind not in _RESIDUAL_INPUT:
        raise SAEError(f"site {site}: residual=True needs a block output (UNet attn.{{j}}.hook_out / "
                       f"resnet.{{j}}.hook_out, MMDiT hook_img_out / hook_txt_out), not a {s.kind} site")
    return s


def _sample(n_pos: int, k: int, seed: int, key: tuple[int, ...]) -> Tensor:
    """k of n_pos positions (sorted) from a generator seeded by the row's key alone."""
    h = hashlib.sha256(json.dumps([seed, *key]).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return torch.randperm(n_pos, generator=g)[:k].sort().values


class _Reader(InterventionBase):
    """Reads the site, leaves it unchanged, keeps the chosen rows: `rows` [n, D] and `index` [n, 5]
    (INDEX_COLUMNS) blocks, in call order. Per step and branch only the first call counts (as
    `capture_generation`: SD3's skip-layer guidance calls the denoiser again)."""

    branch = "both"  # sees every row; keeps the branch asked for itself
    reads_only = True  # returns act itself: the generation is the plain one

    def __init__(self, site: Site, cap: DenoiserCapture, prompt_ids: Sequence[int], seeds: Sequence[int]) -> None:
        # `site` is the name the hook engine reads; `parsed` the resolved site
        self.site, self.parsed, self.cap, self.name = site.name, site, cap, site.name
        self.steps = list(cap.steps) if cap.steps is not None else None
        self.prompt_ids, self.seeds = list(prompt_ids), list(seeds)
        self.rows: list[Tensor] = []
        self.index: list[Tensor] = []
        self.seen: set[tuple[int, int]] = set()
        self.block_input: Tensor | None = None  # set by the residual pre-hook at each call

    def apply_at(self, act: Tensor, where: Where) -> Tensor:
        if where.branches is None:
            raise SAEError(f"site {self.name}: cannot tell the CFG branch of the {act.shape[0]} rows at step "
                           f"{where.step}; use one image per prompt")
        branches = where.branches.to(act.device)
        want = (0, 1) if self.cap.branch == "both" else (BRANCHES[self.cap.branch],)
        B = len(self.prompt_ids)
        for b in want:
            sel = branches == b
            if (where.step, b) in self.seen or not bool(sel.any()):
                continue
            self.seen.add((where.step, b))
            x = act[sel]
            if x.shape[0] != B:
                raise SAEError(f"site {self.name}: {x.shape[0]} rows of branch {b} at step {where.step} for "
                               f"{B} prompts; use one image per prompt")
            if self.cap.residual:
                inp = self.block_input
                if inp is None or inp.shape != act.shape:
                    raise SAEError(f"site {self.name}: residual=True but the block input is "
                                   f"{None if inp is None else tuple(inp.shape)}, its output {tuple(act.shape)}; "
                                   "output − input needs equal shapes")
                x = x - inp[sel]
            self._keep(as_rows(self.name, x.detach(), self.cap.head), int(where.step), b)
        return act

    def _keep(self, rows: Float[Tensor, "B P D"], step: int, branch: int) -> None:
        P = rows.shape[1]
        pos = torch.arange(P)
        if self.cap.positions is not None:
            bad = [p for p in self.cap.positions if p >= P]
            if bad:
                raise SAEError(f"site {self.name}: positions {bad} out of range; the site has {P} positions")
            pos = torch.tensor(self.cap.positions)
        for i, (p, s) in enumerate(zip(self.prompt_ids, self.seeds)):
            keep = pos
            if self.cap.sample_positions is not None and self.cap.sample_positions < len(pos):
                keep = pos[_sample(len(pos), self.cap.sample_positions, self.cap.sample_seed, (p, s, step, branch))]
            # clone: a view would keep the whole step's activation alive until the shard is written
            self.rows.append(rows[i, keep.to(rows.device)].to("cpu", copy=True))
            idx = torch.empty(len(keep), len(INDEX_COLUMNS), dtype=torch.long)
            idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3] = p, s, step, branch
            idx[:, 4] = keep
            self.index.append(idx)

    def take(self) -> tuple[Float[Tensor, "n D"], Int[Tensor, "n 5"]]:
        """The rows kept so far, in (step, branch, prompt, position) order, and their index."""
        if not self.rows:
            raise SAEError(f"site {self.name}: no rows captured (steps {self.steps}, branch {self.cap.branch!r}; "
                           "branch='uncond' needs guidance > 1)")
        rows, index = torch.cat(self.rows), torch.cat(self.index)
        self.rows, self.index, self.seen = [], [], set()
        return rows, index


@contextmanager
def _block_input(model: Any, reader: _Reader) -> Iterator[None]:
    """While open, `reader.block_input` is the site's module input at each call (residual=True)."""
    if not reader.cap.residual:
        yield
        return
    module = resolve_module(model, reader.parsed)
    pos, key = _RESIDUAL_INPUT[reader.parsed.kind]

    def pre(mod: Any, args: tuple, kwargs: dict) -> None:
        reader.block_input = kwargs[key] if key in kwargs else args[pos] if pos is not None and len(args) > pos else None

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class Rows(NamedTuple):
    """What one generation gave: `rows` [n, D], their `index` [n, 5] (INDEX_COLUMNS) and the
    `interp.Generation` (latents only unless output_type="pil")."""

    rows: Float[Tensor, "n D"]
    index: Int[Tensor, "n 5"]
    generation: Any


def capture_rows(model: Any, site: str, prompts: Sequence[str], prompt_ids: Sequence[int], seed: int,
                 cap: DenoiserCapture, interventions: Sequence[Any] = (), output_type: str = "latent") -> Rows:
    """One generation of `prompts` (all with noise seed `seed`, as `interp.generate(model, [p],
    seed=seed)` gives each alone) with `interventions`, keeping the rows `cap` asks for;
    `prompt_ids` are the prompts' numbers in the index."""
    s = check_site(model, site, cap)
    reader = _Reader(s, cap, prompt_ids, [seed] * len(prompts))
    with _block_input(model, reader):
        gen = interp.generate(model, list(prompts), seed=[seed] * len(prompts), num_steps=cap.num_steps,
                              guidance=cap.guidance, interventions=[*interventions, reader],
                              height=cap.height, width=cap.width, output_type=output_type)
    rows, index = reader.take()
    return Rows(rows, index, gen)
