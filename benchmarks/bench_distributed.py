"""Scaling from 1 to 2 processes under torchrun (gloo, CPU), as ratios measured in one run:

1. Generation + judging (`circuits.evaluate.score`, the part of the analysis that is sharded):
   organism prompts (15 per noun, default 2 nouns), the organism's 20 DDIM steps, plain and
   with per-culture interventions; seconds inside the job (model loading excluded) and the
   launch's wall time. Results are checked identical between the two runs.
2. Top-K SAE training, data-parallel: ours (`sae.train`, DDP hooks of sae.distributed) and
   eai-sparsify's SparseCoder wrapped in torch DDP the way its Trainer wraps it (b_dec = first
   batch mean, unit decoder before each forward, parallel-gradient removal, fvu + α·auxk,
   gradients averaged by DDP, did-fire all-reduced with MAX), on the same activations
   (planted, d_in 768), SAE shape (4096 latents, k 32), global batch 1024 split across the
   ranks, Adam 4e-4, same steps. Tokens/s over the timed steps and held-out FVU at the end.

On this machine 2 processes share 2 CPU cores with other jobs, so ~2x is the ceiling and the
load from others moves every number; only the ratios within one run mean something.

Run: python benchmarks/bench_distributed.py [--quick]   (sparsify: the `bench` extra)"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
D_IN, D_SAE, K, BATCH, LR, AUX = 768, 4096, 32, 1024, 4e-4, 1 / 32


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, script: Path, args: list[str]) -> float:
    """Run `script args` in nproc processes (torchrun when > 1); returns wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    pre = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={_port()}"]
    t0 = time.perf_counter()
    p = subprocess.run([*pre, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{p.stderr[-4000:]}")
    return time.perf_counter() - t0


# ---- the SAE job (runs inside each process) -----------------------------------------------------
def _data(train_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sae.synthetic import planted

    x, _ = planted(BATCH * train_steps + 4096, D_IN, 4096, 32, noise=0.01, seed=0)
    return x[:BATCH * train_steps], x[BATCH * train_steps:]


def _fvu(x: torch.Tensor, xhat: torch.Tensor) -> float:
    return float((x - xhat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def sae_job(out: Path, train_steps: int) -> None:
    import torch.distributed as dist

    from interp import distributed
    from sae import ActivationStore, TopKSAE, TrainConfig, train
    from sae.model import dead_tokens_for

    torch.set_num_threads(1)
    distributed.init()
    xtr, xte = _data(train_steps)
    mine = distributed.shard_range(xtr.shape[0], "rows")
    store = ActivationStore.from_batches(out / "store", [xtr[mine.start:mine.stop]], {"data": f"planted-{train_steps}"},
                                         shard_tokens=8192, progress=False)
    dead_tokens = dead_tokens_for(BATCH * train_steps, BATCH)
    res = {"world_size": distributed.world_size()}

    # ours: sae.train (data-parallel through its DDP hooks when the store is shared)
    ours = TopKSAE(D_IN, D_SAE, K, dead_tokens=dead_tokens, seed=0)
    rows = train(ours, store, TrainConfig(batch_size=BATCH, total_tokens=BATCH * train_steps, lr=LR, aux_coef=AUX, seed=0,
                                          log_every=train_steps), progress=False)
    # the training steps only (the data-dependent init before them is excluded, as for sparsify)
    res["ours"] = {"seconds": rows[-1]["sec"]}
    with torch.no_grad():
        res["ours"]["fvu"] = _fvu(xte, ours(xte))

    # sparsify: SparseCoder under torch DDP, fed the same global batches
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sc = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K))
    model = torch.nn.parallel.DistributedDataParallel(sc) if distributed.is_distributed() else sc
    opt = torch.optim.Adam(sc.parameters(), lr=LR)
    since = torch.zeros(D_SAE, dtype=torch.long)
    data = store.batches(BATCH, seed=0)
    mine_rows = distributed.shard_range(BATCH, "rows of the global batch")
    distributed.barrier()
    t0 = time.perf_counter()
    for step in range(train_steps):
        xb = next(data)
        if step == 0:
            with torch.no_grad():
                sc.b_dec.copy_(xb.mean(0))
        xb = xb[mine_rows.start:mine_rows.stop]
        sc.set_decoder_norm_to_unit_norm()
        o = model(xb, dead_mask=since > dead_tokens)
        (o.fvu + AUX * o.auxk_loss).backward()
        sc.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        fired = torch.zeros(D_SAE, dtype=torch.int32)
        fired[o.latent_indices.flatten()] = 1
        if distributed.is_distributed():
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        since += BATCH
        since[fired.bool()] = 0
    distributed.barrier()
    res["sparsify"] = {"seconds": time.perf_counter() - t0}
    with torch.no_grad():
        sc.set_decoder_norm_to_unit_norm()
        res["sparsify"]["fvu"] = _fvu(xte, sc(xte).sae_out)
    for r in ("ours", "sparsify"):
        res[r]["tokens_per_s"] = BATCH * train_steps / res[r]["seconds"]
    if distributed.is_main():
        (out / "sae.json").write_text(json.dumps(res))
    distributed.shutdown()


# ---- the driver ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 noun, 5 denoising steps, 10 SAE steps")
    ap.add_argument("--sae-train-steps", type=int, default=None, help="SAE training steps (default 40; --quick: 10)")
    ap.add_argument("--worker", nargs=2, metavar=("OUT", "STEPS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        sae_job(Path(a.worker[0]), int(a.worker[1]))
        return 0
    nouns, den_steps = ("1", "5") if a.quick else ("2", "20")
    sae_train_steps = a.sae_train_steps or (10 if a.quick else 40)
    try:
        import sparsify  # noqa: F401
    except ImportError:
        print("eai-sparsify is not installed (pip install -e '.[bench]'); its column is required here", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    worker = ROOT / "tests" / "workers" / "distributed_worker.py"
    gen, sae = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            out = Path(tmp) / f"score{n}"
            wall = launch(n, worker, [str(out), f"score:{nouns},{den_steps}"])
            gen[n] = {"wall": wall, **json.loads((out / "score.json").read_text())}
            out = Path(tmp) / f"sae{n}"
            out.mkdir()
            wall = launch(n, Path(__file__), ["--worker", str(out), str(sae_train_steps)])
            sae[n] = {"wall": wall, **json.loads((out / "sae.json").read_text())}
    same = all(gen[1][c] == gen[2][c] for c in ("plain", "amplified"))
    n_img = 2 * len(gen[1]["plain"]["ids"])
    print(f"\n1. generate + judge ({n_img} images of {den_steps} steps, sharded by prompt); identical results: {same}")
    print("| processes | seconds in score | images/s | wall incl. start-up |\n|---|---|---|---|")
    for n in (1, 2):
        print(f"| {n} | {gen[n]['seconds']:.1f} | {n_img / gen[n]['seconds']:.2f} | {gen[n]['wall']:.1f} |")
    print(f"speed-up 2 vs 1: {gen[1]['seconds'] / gen[2]['seconds']:.2f}x (in score), "
          f"{gen[1]['wall'] / gen[2]['wall']:.2f}x (wall)")
    print(f"\n2. SAE training, d_in {D_IN}, {D_SAE} latents, k {K}, global batch {BATCH}, {sae_train_steps} steps "
          "(planted data, held-out FVU)")
    print("| trainer | processes | tokens/s | final FVU |\n|---|---|---|---|")
    for r in ("ours", "sparsify"):
        for n in (1, 2):
            print(f"| {r} | {n} | {sae[n][r]['tokens_per_s']:,.0f} | {sae[n][r]['fvu']:.4f} |")
    for n in (1, 2):
        print(f"ours / sparsify at {n} process(es): {sae[n]['ours']['tokens_per_s'] / sae[n]['sparsify']['tokens_per_s']:.2f}x tokens/s")
    for r in ("ours", "sparsify"):
        print(f"{r}: 2 vs 1 process {sae[2][r]['tokens_per_s'] / sae[1][r]['tokens_per_s']:.2f}x tokens/s, "
              f"FVU {sae[1][r]['fvu']:.4f} -> {sae[2][r]['fvu']:.4f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
