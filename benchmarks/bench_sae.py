"""SAE benchmarks (CPU, a few minutes):

1. Training throughput of `sae.train_step` (sparse encoder backward + embedding_bag decode)
   against a plain dense PyTorch Top-K SAE written below, same init, data, steps and seed, at
   d_in 768 and 1024, d_sae 4096, k 32; prints tokens/s, the speed ratio and the final FVU.
2. Planted-dictionary recovery at d_sae 4096 (1024 atoms in 64 dims, k 4, 800 steps).
3. Peak memory of the activation store while writing 1× and 10× its shard buffer.

Run: python benchmarks/bench_sae.py [--quick]"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time

import torch

from sae.model import TopKSAE
from sae.synthetic import planted, recovery
from sae.train import normalized_mse, train_step


class DenseTopKSAE(torch.nn.Module):
    """Reference: the textbook dense Top-K SAE (dense latent matrix, autograd everywhere)."""

    def __init__(self, init: TopKSAE):
        super().__init__()
        self.k, self.k_aux = init.k, init.cfg.k_aux
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(self, n, torch.nn.Parameter(getattr(init, n).detach().clone()))
        self.dead_tokens, self.thr = init.cfg.dead_tokens, init.cfg.dead_threshold
        self.register_buffer("since", torch.zeros(init.d_sae, dtype=torch.long))

    def step(self, opt, x, aux_coef):
        dead = self.since >= self.dead_tokens
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        top = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        recon = z @ self.W_dec + self.b_dec
        fvu = normalized_mse(recon, x)
        loss = fvu
        if dead.any() and aux_coef > 0:
            ka = min(self.k_aux, int(dead.sum()))
            a = torch.where(dead, pre, -torch.inf).topk(ka, dim=-1)
            za = torch.zeros_like(pre).scatter(-1, a.indices, a.values)
            loss = loss + aux_coef * normalized_mse(za @ self.W_dec, (x - recon).detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g, w = self.W_dec.grad, self.W_dec
            g -= (g * w).sum(1, keepdim=True) * w
        opt.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.since += x.shape[0]
            self.since[top.indices[top.values > self.thr]] = 0
        return fvu.item()


def throughput(d_in: int, train_steps: int, batch: int, seed: int = 0) -> dict:
    x, _ = planted(batch * train_steps, d_in, 8192, 24, noise=0.05, seed=seed)
    x = x * 3 + torch.randn(d_in, generator=torch.Generator().manual_seed(1))  # offset mean
    ours = TopKSAE(d_in, 4096, 32, dead_tokens=batch * 20, seed=seed + 100)
    ours.init_from_data(x[:4 * batch])
    dense = DenseTopKSAE(ours)
    models = {"dense": dense, "ours": ours}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=4e-4, weight_decay=0.0, fused=True)
            for n, m in models.items()}
    secs = {n: 0.0 for n in models}
    fvus = {n: [] for n in models}
    torch.manual_seed(seed)
    # Interleave the two runs step by step so load from other processes hits both alike;
    # the first 2 steps are warm-up and not timed.
    for s in range(train_steps):
        xb = x[s * batch:(s + 1) * batch]
        for name, model in models.items():
            t0 = time.perf_counter()
            if name == "ours":
                f = train_step(model, opts[name], xb, 1 / 32).fvu
            else:
                f = model.step(opts[name], xb, 1 / 32)
            if s >= 2:
                secs[name] += time.perf_counter() - t0
            fvus[name].append(f)
    res = {n: {"tokens_per_s": batch * (train_steps - 2) / secs[n],
               "final_fvu": sum(fvus[n][-5:]) / 5, "sec": secs[n]} for n in models}
    res["speed_ratio"] = res["ours"]["tokens_per_s"] / res["dense"]["tokens_per_s"]
    res["fvu_rel_diff"] = abs(res["ours"]["final_fvu"] / res["dense"]["final_fvu"] - 1)
    return res


def recovery_bench(train_steps: int, batch: int) -> dict:
    """1024 planted 4-sparse atoms in 64 dims, SAE d_sae 4096 k 4 (4× overcomplete)."""
    d_in, atoms, k = 64, 1024, 4
    x, D = planted(batch * 200, d_in, atoms, k, noise=0.01, seed=0)
    sae = TopKSAE(d_in, 4096, k, dead_tokens=batch * 25, seed=123)
    sae.init_from_data(x[:4096])
    opt = torch.optim.AdamW(sae.parameters(), lr=2e-3, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(train_steps):
        st = train_step(sae, opt, x[torch.randint(0, x.shape[0], (batch,), generator=g)], 1 / 32)
    frac, best = recovery(sae.W_dec.detach(), D, 0.9)
    return {"d_in": d_in, "atoms": atoms, "d_sae": 4096, "k": k, "steps": train_steps, "batch": batch,
            "fvu": st.fvu, "recovered_at_cos_0.9": frac, "median_best_cos": float(best.median()),
            "sec": time.perf_counter() - t0}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _store_child(n_batches: int, shard: int, q) -> None:
    import threading

    from sae.store import ActivationStore

    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def watch():  # sample resident memory; ru_maxrss would include import-time peaks
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        st = ActivationStore.from_batches(
            d, (torch.randn(1024, 768, generator=g) for _ in range(n_batches)), {},
            shard_tokens=shard, progress=False)
        done.set()
        q.put({"tokens": st.n_tokens, "shards": len(st.shards),
               "buffer_mb": shard * 768 * 4 / 2**20,
               "peak_rss_over_baseline_mb": max(peak[0], _rss_mb()) - base})


def store_memory(shard: int = 16384) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for mult in (1, 10):
        q = ctx.Queue()
        p = ctx.Process(target=_store_child, args=(mult * shard // 1024, shard, q))
        p.start()
        out[f"{mult}x_buffer"] = q.get()
        p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--train-steps", type=int, default=30, help="SAE training steps of each throughput run")
    ap.add_argument("--batch", type=int, default=1024)
    a = ap.parse_args()
    train_steps = 6 if a.quick else a.train_steps
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu", flush=True)
    report = {}
    for d_in in (768, 1024):
        r = throughput(d_in, train_steps, a.batch)
        report[f"throughput_d{d_in}"] = r
        print(f"d_in {d_in} d_sae 4096 k 32 batch {a.batch} steps {train_steps}: "
              f"dense {r['dense']['tokens_per_s']:.0f} tok/s (FVU {r['dense']['final_fvu']:.4f}), "
              f"ours {r['ours']['tokens_per_s']:.0f} tok/s (FVU {r['ours']['final_fvu']:.4f}); "
              f"speed ratio {r['speed_ratio']:.2f}x, FVU rel diff {100 * r['fvu_rel_diff']:.2f}%",
              flush=True)
    r = recovery_bench(30 if a.quick else 800, 512)
    report["planted_recovery"] = r
    print(f"planted recovery d_sae 4096: {100 * r['recovered_at_cos_0.9']:.1f}% of {r['atoms']} "
          f"atoms at cos>=0.9 (median best cos {r['median_best_cos']:.3f}), FVU {r['fvu']:.4f}, "
          f"{r['sec']:.0f}s", flush=True)
    m = store_memory()
    report["store_memory"] = m
    print(f"store peak RSS over baseline: 1x buffer {m['1x_buffer']['peak_rss_over_baseline_mb']:.0f} MB, "
          f"10x buffer {m['10x_buffer']['peak_rss_over_baseline_mb']:.0f} MB "
          f"(one shard buffer = {m['1x_buffer']['buffer_mb']:.0f} MB) "
          f"({m['10x_buffer']['shards']} shards)", flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
