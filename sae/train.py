"""Training loop: AdamW, constant lr, loss = FVU + α·AuxK (both normalised as in Gao et al.
2024), atomic checkpoints, bit-for-bit resume, tqdm bar and a JSONL metrics log.

Choices compared step by step with eai-sparsify 1.3.3 (`benchmarks/bench_sae_peers.py`):
encoder scale fitted at init (`TopKSAE.init_encoder_scale`, the one that mattered), b_dec at
the geometric median, FVU loss over the batch, Adam β 0.9/0.999 ε 1e-8 at 4e-4, parallel
gradient removed before the step and rows renormalised after it, AuxK on latents dead for
min(10M, budget/10) tokens that can only raise their pre-activations (`sae.model._TopKEncode`). Each is commented where it is made."""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp import distributed
from interp.checks import moved
from interp.checkpoint import load_checkpoint, refuse_legacy, save_checkpoint, settings_diff
from interp.folder_lock import lock_folder
from sae.errors import SAEError
from sae.model import StepBuffers, TopKSAE, dead_tokens_for
from sae.distributed import StepReduce
from sae.store import ActivationStore, shared

CHECKPOINT = "last.safetensors"  # safetensors + JSON metadata (interp.checkpoint): never a pickle
LEGACY_CHECKPOINT = "last.pt"  # the old pickle format: refused, never loaded
CHECKPOINT_KIND = "sae-trainer"
LOG = "metrics.jsonl"


def normalized_mse(pred: Float[Tensor, "n d"], target: Float[Tensor, "n d"],
                   reduce: StepReduce | None = None) -> Tensor:
    """Σ‖pred − target‖² / Σ‖target − mean(target)‖² over the batch (pooled FVU).

    FVU rather than a per-element MSE makes the loss, hence the gradient scale Adam sees at
    the start, independent of the activations' scale (sparsify and Gao et al. do the same).

    DDP hook: with `reduce` the denominator is the global batch's, so summing the ranks'
    values gives the global FVU (and their gradients its gradient)."""
    var = (target - target.mean(0)).pow(2).sum() if reduce is None else reduce.variance_denominator(target)
    var = var.clamp_min(1e-12)
    return (pred - target).pow(2).sum() / var


@dataclass
class StepStats:
    loss: float
    fvu: float
    aux: float
    l0: float
    dead: float


def train_step(sae: TopKSAE, opt: torch.optim.Optimizer, x: Float[Tensor, "n d_in"],
               aux_coef: float, reduce: StepReduce | None = None) -> StepStats:
    """One optimiser step on batch x; updates the dead-latent counters. Under DDP x is this
    rank's slice of the global batch and `reduce` (sae.distributed) sums across ranks."""
    dead = sae.dead_mask()
    any_dead = bool(dead.any()) and aux_coef > 0 and sae.cfg.k_aux > 0
    # Wide SAEs: reuse this optimiser's step buffers and last step's gradient tensors
    # (sae.model docstring); the gradients of step t are overwritten during step t + 1.
    buffers = _STEP_BUFFERS.setdefault(opt, StepBuffers())
    for name in ("W_enc", "W_dec"):
        if getattr(sae, name).grad is not None:
            buffers.grads[name] = getattr(sae, name).grad
    codes, aux_codes = sae.encode_sparse(x, dead if any_dead else None, buffers)
    recon, aux_recon = sae.decode_pair(codes, aux_codes, buffers)
    fvu = normalized_mse(recon, x, reduce)
    loss = fvu
    aux = torch.zeros(())
    if any_dead:
        # Dead latents learn to explain what the live ones missed (target detached). Normalised
        # by the residual's variance as in Gao et al. (sparsify divides by the input's, which
        # makes the same α ~1/FVU times weaker late in training); only dead latents' encoder
        # columns (one-sided: sae.model._TopKEncode), their decoder rows and b_dec receive it.
        residual = (x - recon).detach()
        aux = normalized_mse(aux_recon, residual, reduce)
        loss = loss + aux_coef * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    buffers.grads.clear()  # a gradient the backward did not need is not kept alive
    if reduce is not None:  # DDP hook: the global gradient on every rank
        reduce.grads(sae)
    # The component along a unit-norm row only changes its norm, which the renormalisation
    # below undoes; left in, it would still feed Adam's moments (sparsify does the same).
    sae.remove_parallel_grad()
    opt.step()
    # Renormalise after the step, so every forward pass (and every saved SAE) has unit rows.
    sae.normalize_decoder()
    sae.update_dead(codes)
    l0 = (codes.values > 0).sum(1).float().mean()
    if reduce is None:
        return StepStats(loss.item(), fvu.item(), aux.item(), l0.item(), dead.float().mean().item())
    # DDP hook: global dead counters, and the global batch's statistics in the log
    reduce.dead(sae, x.shape[0])
    tot = reduce.sum(torch.stack([loss.detach(), fvu.detach(), aux.detach(), l0 * x.shape[0]]))
    return StepStats(tot[0].item(), tot[1].item(), tot[2].item(), (tot[3] / reduce.n_global).item(),
                     dead.float().mean().item())


def make_optimizer(sae: TopKSAE, lr: float = 4e-4, weight_decay: float = 0.0
                   ) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8: torch's and sparsify's Adam defaults), the fused
    kernel where torch has one for these tensors.

    lr 4e-4 is what sparsify's rule 2e-4/√(d_sae/16384) gives at 4096 latents; the rule is
    not applied to other widths (a smaller SAE is not obviously better off with a larger
    step), so the default does not change with d_sae."""
    try:
        return _AdamW(sae.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return _AdamW(sae.parameters(), lr=lr, weight_decay=weight_decay)


# Step buffers per optimiser: they live as long as the training run that owns the optimiser.
_STEP_BUFFERS: "weakref.WeakKeyDictionary[torch.optim.Optimizer, StepBuffers]" = \
    weakref.WeakKeyDictionary()


def _transpose_in_place(p: Tensor, state: dict) -> None:
    """p, p.grad and p's 2-d optimiser state viewed transposed (same storage, same values)."""
    g = p.grad
    p.grad = None
    p.data = p.data.t()
    p.grad = g.t()
    for key, v in state.items():
        if torch.is_tensor(v) and v.dim() == 2:
            # a moment loaded in another layout (e.g. contiguous from a checkpoint) is copied
            # once into p's, so the fused kernel never copies it again
            state[key] = v.t() if v.t().stride() == p.stride() else v.t().contiguous()


class _AdamW(torch.optim.AdamW):
    """torch's AdamW, stepping a transposed-contiguous parameter (W_enc: [d_in, d_sae] stored as
    [d_sae, d_in]) through its transposed view. torch's fused CPU kernel copies every
    non-contiguous tensor in and out (4.7x slower on W_enc at 65k latents); the update is
    elementwise, so the view gives bit-identical values."""

    @torch.no_grad()
    def step(self, closure=None):
        flip = [p for group in self.param_groups for p in group["params"]
                if p.grad is not None and p.dim() == 2 and not p.is_contiguous()
                and p.t().is_contiguous() and p.grad.stride() == p.stride()]
        for p in flip:
            _transpose_in_place(p, self.state[p])
        try:
            return super().step(closure)
        finally:
            for p in flip:
                _transpose_in_place(p, self.state[p])


def _trim_log(log: Path, upto_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if log is None or not log.exists():  # None: a DDP rank other than 0 keeps no log
        return
    keep = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= upto_step]
    log.write_text("".join(ln + "\n" for ln in keep))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How `sae.train` trains: what decides the trained weights (besides the SAE's own config and
    the store) and how often it logs and checkpoints; None means these defaults. A resume
    compares `batch_size`, `seed`, `lr`, `aux_coef`, `weight_decay` and `init_from_data` with the
    checkpoint's, under these names."""

    batch_size: int = 4096
    """Tokens per step (the global batch under torchrun)."""

    total_tokens: int = 10_000_000
    """Training budget in tokens: `total_tokens // batch_size` steps. A larger value continues a
    finished run (the lr is constant)."""

    lr: float = 4e-4
    """AdamW learning rate, constant (sparsify's 2e-4/√(d_sae/16384) at 4096 latents; not rescaled
    with d_sae)."""

    aux_coef: float = 1 / 32
    """α of the AuxK loss (dead latents explaining the residual); 0 switches it off."""

    weight_decay: float = 0.0
    """AdamW weight decay; 0, not torch's 0.01, which would shrink rarely-used latents' encoders
    towards death."""

    seed: int = 0
    """Seed of the init sample and of the store's batch order."""

    checkpoint_every: int = 500
    """With `checkpoint_dir`: steps between checkpoints (and one at the last step)."""

    init_from_data: bool = True
    """Set b_dec (geometric median) and the encoder scale from a data sample before step 1."""

    log_every: int = 10
    """Steps between logged metric rows (and the last step)."""


#: The keywords of `train` that moved into `TrainConfig` (culturelens 0.2.0).
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


@moved(TrainConfig, *TRAIN_FIELDS, param="cfg", where="sae.train")
def train(sae: TopKSAE, store: ActivationStore, cfg: TrainConfig | None = None, *,
          checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> list[dict]:
    """Train `sae` in place on `store` with `cfg` (a `TrainConfig`; None: its defaults); returns
    the logged metric rows.

    `resume=True` loads `checkpoint_dir/last.safetensors`
    (model, optimiser, RNG, data position; no pickle) and ends with the same weights as an
    uninterrupted run; it refuses a checkpoint made with other settings (SAE config, batch
    size, seed, lr, AuxK coefficient, weight decay, store fingerprints), naming the fields.
    A larger `cfg.total_tokens` continues the run (the lr is constant, so that equals a longer
    uninterrupted run); one that ends before the checkpoint is refused. `resume=False`
    starts over. The checkpoint folder is locked (`interp.folder_lock`) while training.
    `stop_after` ends early after that many steps (to simulate an interruption).

    If `sae.cfg.dead_tokens` is None it is set here to `dead_tokens_for(total_tokens,
    batch_size)` = min(10M, total_tokens/10), so AuxK acts within any budget; the value used
    stays in `sae.cfg.dead_tokens`. Every logged row carries `aux` (the AuxK loss, 0 while no
    latent is dead) and `dead` (fraction of latents dead at that step); `sae.plot.plot_metrics`
    draws both. `cfg.init_from_data` sets b_dec and the encoder scale from a data sample.

    Under torchrun (WORLD_SIZE > 1) this is data-parallel (sae.distributed): each rank trains
    on its slice of every `batch_size` global batch, weights stay identical across ranks and
    equal one-process training up to float summation order; rank 0 writes checkpoints and log.
    That happens when all ranks name the same store folder (`sae.store.shared`)."""
    cfg = TrainConfig() if cfg is None else cfg
    batch_size, total_tokens = cfg.batch_size, cfg.total_tokens
    if store.d != sae.d_in:
        raise SAEError(f"store {store.path} has d={store.d}, SAE expects d_in={sae.d_in}")
    if batch_size <= 0:
        raise SAEError(f"batch_size={batch_size}: must be a positive number of tokens")
    train_steps = total_tokens // batch_size
    if train_steps <= 0:
        raise SAEError(f"total_tokens={total_tokens} < batch_size={batch_size}: no step to run")
    if sae.cfg.dead_tokens is None:
        sae.cfg.dead_tokens = dead_tokens_for(total_tokens, batch_size)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # DDP hook: data-parallel when all ranks train from one store folder; then rank 0 alone
    # writes checkpoints and the log (ranks with stores of their own train independently)
    reduce = StepReduce(batch_size) if shared(store.path) else None
    writer = reduce is None or distributed.is_main()
    # One writer per checkpoint folder: a second job on it fails at once (names the holder's pid).
    with lock_folder(ckdir, "checkpoint folder") if ckdir and writer else contextlib.nullcontext():
        return _train(sae, store, cfg, train_steps, ckdir, resume, progress, stop_after, reduce, writer)


def _settings(sae: TopKSAE, store: ActivationStore, batch_size: int, lr: float, aux_coef: float,
              weight_decay: float, seed: int, init_from_data: bool) -> dict[str, Any]:
    """What determines the trained weights (besides the step count): compared on resume."""
    return {"cfg": sae.cfg.to_dict(), "batch_size": batch_size, "seed": seed, "lr": lr, "aux_coef": aux_coef,
            "weight_decay": weight_decay, "init_from_data": init_from_data, "store": dict(store.fingerprints)}


def _train(sae: TopKSAE, store: ActivationStore, cfg: TrainConfig, train_steps: int, ckdir: Path | None,
           resume: bool, progress: bool, stop_after: int | None, reduce: StepReduce | None,
           writer: bool) -> list[dict]:
    batch_size, lr, aux_coef, weight_decay, seed = cfg.batch_size, cfg.lr, cfg.aux_coef, cfg.weight_decay, cfg.seed
    checkpoint_every, init_from_data, log_every = cfg.checkpoint_every, cfg.init_from_data, cfg.log_every
    opt = make_optimizer(sae, lr, weight_decay)
    log = ckdir / LOG if ckdir and writer else None
    settings = _settings(sae, store, batch_size, lr, aux_coef, weight_decay, seed, init_from_data)
    start, rows = 0, []
    if resume:
        if ckdir is None or not (ckdir / CHECKPOINT).exists():
            if ckdir is not None:
                refuse_legacy(ckdir / LEGACY_CHECKPOINT)
            raise SAEError(f"resume=True but no checkpoint at {ckdir}/{CHECKPOINT}")
        ck = load_checkpoint(ckdir / CHECKPOINT, CHECKPOINT_KIND)
        diff = settings_diff(ck["settings"], settings)
        if diff:
            raise SAEError(f"{ckdir / CHECKPOINT}: cannot resume, this run differs from the checkpoint in "
                           f"{'; '.join(diff)}; resume with the checkpoint's settings, or start over "
                           f"(resume=False: sae-train without --resume)")
        if ck["step"] > train_steps:
            raise SAEError(f"{ckdir / CHECKPOINT}: checkpoint at step {ck['step']} is past this run's end at step "
                           f"{train_steps} (total_tokens // batch_size); give at least {ck['step'] * batch_size} tokens")
        sae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        start = ck["step"]
        _trim_log(log, start)
    else:
        torch.manual_seed(seed)
        if log is not None and log.exists():
            log.unlink()
        if init_from_data:
            sae.init_from_data(store.sample(min(store.n_tokens, 16 * batch_size), seed=seed + 1))

    data = store.batches(batch_size, seed=seed, start=start * batch_size)
    bar = tqdm(total=train_steps, initial=start, desc="sae-train", unit="step", disable=not progress)
    t0 = time.perf_counter()
    end = train_steps if stop_after is None else min(train_steps, start + stop_after)
    for step in range(start + 1, end + 1):
        x = next(data) if reduce is None else reduce.mine(next(data))  # DDP hook: this rank's rows
        st = train_step(sae, opt, x.to(sae.W_enc.dtype), aux_coef, reduce)
        if step % log_every == 0 or step == train_steps:
            row = {"step": step, "tokens": step * batch_size, **st.__dict__,
                   "sec": round(time.perf_counter() - t0, 3)}
            rows.append(row)
            bar.set_postfix(loss=f"{st.loss:.4f}", fvu=f"{st.fvu:.4f}", l0=f"{st.l0:.1f}",
                            dead=f"{100 * st.dead:.1f}%")
            if log is not None:
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        bar.update(1)
        if ckdir is not None and writer and (step % checkpoint_every == 0 or step == end):
            save_checkpoint(ckdir / CHECKPOINT, {"model": sae.state_dict(), "opt": opt.state_dict(),
                                                 "rng": torch.get_rng_state(), "step": step,
                                                 "settings": settings}, CHECKPOINT_KIND)
    bar.close()
    if reduce is not None:  # DDP hook: the last checkpoint exists before any rank moves on
        distributed.barrier()
    return rows
