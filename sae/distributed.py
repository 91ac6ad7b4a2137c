"""Data-parallel Top-K SAE training on torch.distributed (torchrun / accelerate launch).

Every rank reads the same seeded batch stream of the store and trains on its contiguous slice
of each global batch; the SAE starts identical on every rank (same seed, same b_dec sample).
One step then equals the one-process step on the global batch, up to float summation order:

- the loss is the global batch's: FVU's denominator Σ‖x − mean‖² is taken over the global
  batch (two all-reduces: the mean, then the sum of squares), so each rank's loss is its share
  of the global numerator and the gradients are summed, not averaged;
- the parameter update (parallel-gradient removal, AdamW, decoder normalisation) then sees the
  same summed gradient on every rank, so weights stay identical without broadcasting them;
- a latent is alive if it fired on any rank, and `tokens_since_fired` counts global tokens, so
  the dead set, hence whether and where AuxK runs, agrees on every rank;
- the logged loss, FVU, AuxK and L0 are global-batch values.

Rank 0 alone writes checkpoints and the metrics log; all ranks resume from the same file."""

from __future__ import annotations

import torch
from torch import Tensor

from interp import distributed


class StepReduce:
    """The cross-rank sums of one training step; `train_step(..., reduce=StepReduce(n))`."""

    def __init__(self, n_global: int):
        import torch.distributed as dist

        if not distributed.init():
            raise RuntimeError("StepReduce needs a process group (launch with torchrun)")
        self.dist = dist
        self.n_global = n_global

    def mine(self, batch: Tensor) -> Tensor:
        """This rank's contiguous rows of a global batch."""
        r = distributed.shard_range(batch.shape[0], "rows of the global batch")
        return batch[r.start:r.stop]

    def sum(self, t: Tensor) -> Tensor:
        """Σ over ranks of t (a new tensor; t is left alone)."""
        out = t.detach().clone().contiguous()
        self.dist.all_reduce(out)
        return out

    def variance_denominator(self, x: Tensor) -> Tensor:
        """Σ‖x − mean‖² over the global batch (x is this rank's [n, d] slice; no gradient)."""
        x = x.detach()
        mean = self.sum(x.sum(0)) / self.n_global
        return self.sum((x - mean).pow(2).sum())

    def grads(self, module: torch.nn.Module) -> None:
        """Sum every parameter's gradient over ranks, in place (one all-reduce)."""
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.dist.all_reduce(flat)
        i = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[i:i + n].view(p.grad.shape))
            i += n

    def dead(self, sae, n_local: int) -> None:
        """After `sae.update_dead(codes)` on this rank's tokens: a latent fired if it fired on
        any rank, and the counter advances by the global batch size."""
        t = sae.tokens_since_fired
        fired = (t == 0).to(torch.int32)  # n_local ≥ 1, so 0 means "fired here this step"
        self.dist.all_reduce(fired, op=self.dist.ReduceOp.MAX)
        t.add_(self.n_global - n_local)
        t[fired.bool()] = 0
