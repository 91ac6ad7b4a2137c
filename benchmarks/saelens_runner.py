"""Train a SAELens TopK SAE on given batches, the way SAELens's own SAETrainer steps it, and save
it with SAELens's `save_inference_model` at given steps. Run by `bench_sae_peers.py` under the
interpreter named by CULTURELENS_SAELENS_PYTHON (sae-lens pins transformer-lens 3.x, so it
lives in its own virtualenv); imports only torch and sae_lens, never culturelens.

    python saelens_runner.py JOB.pt OUT_DIR

JOB.pt holds: x [n, d_in] training rows, index [steps, batch] (the rows of each step, shared
with the other trainers), marks (steps at which to save), d_sae, k, lr, aux, dead_tokens,
threshold (the activation above which a latent counts as active, for the dead fraction the
benchmark reports), seed. OUT_DIR gets step_{s}/ (cfg.json + sae_weights.safetensors) per mark
and result.pt with the training seconds, and the tokens since each latent was last active,
at every mark."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


def main(job_path: str, out: str) -> None:
    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    job = torch.load(job_path)
    x, index = job["x"], job["index"]
    batch = index.shape[1]
    torch.manual_seed(job["seed"])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=x.shape[1], d_sae=job["d_sae"], k=job["k"], aux_loss_coefficient=job["aux"],
        dtype="float32", device="cpu"))
    # SAETrainer: Adam (β 0.9/0.999), constant lr by default, grad-norm clip 1.0, a latent is
    # dead after dead_feature_window steps without firing.
    opt = torch.optim.Adam(sae.parameters(), lr=job["lr"], betas=(0.9, 0.999))
    window = job["dead_tokens"] // batch
    passes_since_fired = torch.zeros(job["d_sae"])
    since = torch.zeros(job["d_sae"], dtype=torch.long)  # the benchmark's own dead accounting
    marks, rows, sec = set(job["marks"]), [], 0.0
    for step in range(1, index.shape[0] + 1):
        xb = x[index[step - 1]]
        t0 = time.perf_counter()
        sae.train()
        res = sae.training_forward_pass(TrainStepInput(
            sae_in=xb, coefficients={}, dead_neuron_mask=(passes_since_fired > window).bool(),
            n_training_steps=step - 1, is_logging_step=False))
        with torch.no_grad():
            acts = res.feature_acts.to_dense() if res.feature_acts.is_sparse else res.feature_acts
            passes_since_fired += 1
            passes_since_fired[acts.bool().any(0)] = 0
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sec += time.perf_counter() - t0
        since += batch
        since[(acts > job["threshold"]).any(0)] = 0
        if step in marks:
            sae.save_inference_model(Path(out) / f"step_{step}")
            rows.append({"step": step, "sec": sec, "since": since.clone()})
    torch.save({"rows": rows, "version": sae_lens.__version__}, Path(out) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
