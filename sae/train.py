"""Training loop: AdamW, constant lr, loss = FVU + α·AuxK (both normalised as in Gao et al.
2024), atomic checkpoints, bit-for-bit resume, tqdm bar and a JSONL metrics log.

Choices compared step by step with eai-sparsify 1.3.3 (`benchmarks/bench_sae_peers.py`):
encoder scale fitted at init (`TopKSAE.init_encoder_scale`, the one that mattered), b_dec at
the geometric median, FVU loss over the batch, Adam β 0.9/0.999 ε 1e-8 at 4e-4, parallel
gradient removed before the step and rows renormalised after it, AuxK on latents dead for
min(10M, budget/10) tokens that can only raise their pre-activations (`sae.model._TopKEncode`). Each is commented where it is made."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sae.errors import SAEError
from sae.model import TopKSAE, dead_tokens_for
from sae.distributed import StepReduce
from sae.store import ActivationStore, shared

CHECKPOINT = "last.pt"
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
    codes, aux_codes = sae.encode_sparse(x, dead if any_dead else None)
    recon = sae.decode_sparse(codes)
    fvu = normalized_mse(recon, x, reduce)
    loss = fvu
    aux = torch.zeros(())
    if any_dead:
        # Dead latents learn to explain what the live ones missed (target detached). Normalised
        # by the residual's variance as in Gao et al. (sparsify divides by the input's, which
        # makes the same α ~1/FVU times weaker late in training); only dead latents' encoder
        # columns (one-sided: sae.model._TopKEncode), their decoder rows and b_dec receive it.
        residual = (x - recon).detach()
        aux = normalized_mse(sae.decode_sparse(aux_codes, bias=False), residual, reduce)
        loss = loss + aux_coef * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
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
        return torch.optim.AdamW(sae.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(sae.parameters(), lr=lr, weight_decay=weight_decay)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _trim_log(log: Path, upto_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if log is None or not log.exists():  # None: a DDP rank other than 0 keeps no log
        return
    keep = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= upto_step]
    log.write_text("".join(ln + "\n" for ln in keep))


def train(sae: TopKSAE, store: ActivationStore, batch_size: int = 4096,
          total_tokens: int = 10_000_000, lr: float = 4e-4, aux_coef: float = 1 / 32,
          weight_decay: float = 0.0, seed: int = 0, checkpoint_dir: str | Path | None = None,
          checkpoint_every: int = 500, resume: bool = False, init_from_data: bool = True,
          log_every: int = 10, progress: bool = True, stop_after: int | None = None
          ) -> list[dict]:
    """Train `sae` in place on `store`; returns the logged metric rows.

    Weight decay defaults to 0 (torch's AdamW uses 0.01; decay would shrink the encoder of
    rarely-used latents towards death). `resume=True` loads `checkpoint_dir/last.pt` (model,
    optimiser, RNG, data position) and ends with the same weights as an uninterrupted run.
    `stop_after` ends early after that many steps (to simulate an interruption).

    If `sae.cfg.dead_tokens` is None it is set here to `dead_tokens_for(total_tokens,
    batch_size)` = min(10M, total_tokens/10), so AuxK acts within any budget; the value used
    stays in `sae.cfg.dead_tokens`. Every logged row carries `aux` (the AuxK loss, 0 while no
    latent is dead) and `dead` (fraction of latents dead at that step); `sae.plot.plot_metrics`
    draws both. `init_from_data` sets b_dec and the encoder scale from a data sample.

    Under torchrun (WORLD_SIZE > 1) this is data-parallel (sae.distributed): each rank trains
    on its slice of every `batch_size` global batch, weights stay identical across ranks and
    equal one-process training up to float summation order; rank 0 writes checkpoints and log.
    That happens when all ranks name the same store folder (`sae.store.shared`)."""
    from interp import distributed
    if store.d != sae.d_in:
        raise SAEError(f"store {store.path} has d={store.d}, SAE expects d_in={sae.d_in}")
    steps = total_tokens // batch_size
    if steps <= 0:
        raise SAEError(f"total_tokens={total_tokens} < batch_size={batch_size}: no step to run")
    if sae.cfg.dead_tokens is None:
        sae.cfg.dead_tokens = dead_tokens_for(total_tokens, batch_size)
    opt = make_optimizer(sae, lr, weight_decay)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # DDP hook: data-parallel when all ranks train from one store folder; then rank 0 alone
    # writes checkpoints and the log (ranks with stores of their own train independently)
    reduce = StepReduce(batch_size) if shared(store.path) else None
    writer = reduce is None or distributed.is_main()
    log = ckdir / LOG if ckdir and writer else None
    if ckdir and writer:
        ckdir.mkdir(parents=True, exist_ok=True)
    start, rows = 0, []
    if resume:
        if ckdir is None or not (ckdir / CHECKPOINT).exists():
            raise SAEError(f"resume=True but no checkpoint at {ckdir}/{CHECKPOINT}")
        ck = torch.load(ckdir / CHECKPOINT, weights_only=False)
        if (ck["cfg"] != sae.cfg.to_dict() or ck["batch_size"] != batch_size
                or ck["seed"] != seed or ck["store"] != store.fingerprints):
            raise SAEError(f"{ckdir / CHECKPOINT}: checkpoint was made with cfg {ck['cfg']}, "
                           f"batch {ck['batch_size']}, seed {ck['seed']}, store {ck['store']}; "
                           f"this run differs")
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
    bar = tqdm(total=steps, initial=start, desc="sae-train", unit="step", disable=not progress)
    t0 = time.perf_counter()
    end = steps if stop_after is None else min(steps, start + stop_after)
    for step in range(start + 1, end + 1):
        x = next(data) if reduce is None else reduce.mine(next(data))  # DDP hook: this rank's rows
        st = train_step(sae, opt, x.to(sae.W_enc.dtype), aux_coef, reduce)
        if step % log_every == 0 or step == steps:
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
            _atomic_save({"model": sae.state_dict(), "opt": opt.state_dict(),
                          "rng": torch.get_rng_state(), "step": step, "seed": seed,
                          "batch_size": batch_size, "cfg": sae.cfg.to_dict(),
                          "store": store.fingerprints},
                         ckdir / CHECKPOINT)
    bar.close()
    if reduce is not None:  # DDP hook: the last checkpoint exists before any rank moves on
        distributed.barrier()
    return rows
