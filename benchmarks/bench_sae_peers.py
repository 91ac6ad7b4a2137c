"""Our Top-K SAE trainer against eai-sparsify (and SAELens when available) on the same data.

Both trainers see the same batches (same seeded draws from the same training rows), the same
SAE shape (d_sae 4096, k 32), batch 1024, Adam(W) lr 4e-4 constant (wd 0), AuxK 1/32 on
latents dead for `sae.model.dead_tokens_for(budget)` tokens, and are evaluated on the same
held-out rows. Steps are interleaved (one of ours, one of theirs) so load from other
processes hits both alike; only the training steps are timed (optimizer construction,
data-dependent init and evaluation are excluded for both).

Data sets:
- organism: `text.blocks.0.hook_resid_post` of the shipped CultureWorld organism (d_in 128),
  training rows from the probe + train nouns' prompts, held out: the test nouns' prompts
  (as `circuits/analysis/cultureworld.py` builds its SAE store);
- planted: `sae.synthetic.planted` (d_in 768, 4096 unit atoms, 32 per row, noise 0.01),
  65,536 training rows, 8,192 held out; planted recovery = atoms whose best decoder row has
  cosine >= 0.9.

Reported per budget (checkpoints of one run, so FVU vs tokens and vs wall time come from
the same curve): held-out FVU, seconds per 1M tokens, dead % (no activation in the last
`dead_tokens` training tokens, counted the same way for all), silent % (active on none of the
training rows with the weights at that checkpoint: a latent AuxK keeps reviving for a few
batches is not dead but may be silent), planted recovery; then ratios ours / each peer. SAELens: set CULTURELENS_SAELENS_PYTHON to an interpreter with sae-lens (it
cannot live in this venv: it pins transformer-lens 3.x); `saelens_runner.py` then trains its
TopKTrainingSAE on the same batches the way SAETrainer steps it (Adam, grad clip 1.0, its own
init and un-normalised MSE + α·AuxK) in that interpreter, saves it with SAELens's
`save_inference_model` at every checkpoint, and this process loads those folders with
`sae.load_saelens` and evaluates them like the others (its seconds are measured in its own
process, not interleaved). Without the variable the SAELens rows are skipped with a message.

Width sweep (`--widths 4096 16384 65536 --train-steps 12`): the planted rows (d_in 768), k 32,
batch 1024, one SAE per library per width, the same batches, steps interleaved (ours, then
sparsify, one step each); reports the median seconds per step, ours / sparsify, each library's
growth from the narrowest width against the growth in d_sae (at most linear: growth ≤ width
ratio), and held-out FVU after the steps (equal FVU: ratio ≈ 1). A latent counts as dead after
steps/2 batches without firing: the first half of the steps runs without AuxK, the second half
with it, and both halves' ratios are reported.

Run: python benchmarks/bench_sae_peers.py [--quick] [--big] [--data organism planted]
     --quick: 0.25M tokens only; default: 0.25M and 1M; --big: also 4M (long on shared CPUs).
     python benchmarks/bench_sae_peers.py --widths 4096 16384 65536 [--train-steps 12]
Needs the `bench` extra (eai-sparsify)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae.model import TopKSAE, dead_tokens_for
from sae.synthetic import planted, recovery
from sae.train import make_optimizer, train_step
from circuits.io import load_pipeline  # the shipped organism is trusted by fingerprint, not by opt-in

D_SAE, K, BATCH, LR, AUX = 4096, 32, 1024, 4e-4, 1 / 32
ACTIVE = 1e-3  # a latent above this in a batch is active there (our SAEConfig.dead_threshold)
SAELENS_ENV = "CULTURELENS_SAELENS_PYTHON"


def organism_data() -> tuple[torch.Tensor, torch.Tensor, None]:
    from circuits.analysis.cultureworld import PROBE_NOUNS, TEST_NOUNS, TRAIN_NOUNS
    from circuits.organism import prompts as op
    from circuits.organism.shipped import ORGANISM
    from sae.store import ActivationStore

    model = load_pipeline(ORGANISM / "pipeline")
    site = "text.blocks.0.hook_resid_post"
    train = sorted(set(op.training_corpus(PROBE_NOUNS + TRAIN_NOUNS)) - {""}) + [""]
    held = sorted(set(op.training_corpus(TEST_NOUNS)) - {""})
    with tempfile.TemporaryDirectory() as d:
        xs = [ActivationStore.build(model, p, site, Path(d) / n, drop="none", progress=False).all()
              for n, p in (("train", train), ("held", held))]
    return xs[0], xs[1], None


def planted_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, D = planted(65_536 + 8_192, 768, 4096, 32, noise=0.01, seed=0)
    return x[:65_536], x[65_536:], D


class SAEView:
    """Evaluation face of one of our `TopKSAE`s (trained here, or loaded from SAELens's files)."""

    def __init__(self, sae: TopKSAE):
        self.sae = sae

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae(x)

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, _ = self.sae.encode_sparse(x)
        return codes.values, codes.indices

    def decoder(self) -> torch.Tensor:
        return self.sae.W_dec.detach()


class Ours(SAEView):
    name = "culturelens"

    def __init__(self, xtr: torch.Tensor, dead_tokens: int, seed: int, d_sae: int = D_SAE):
        super().__init__(TopKSAE(xtr.shape[1], d_sae, K, dead_tokens=dead_tokens, seed=seed))
        self.sae.init_from_data(xtr[:16 * BATCH])  # what sae.train does before step 1
        self.opt = make_optimizer(self.sae, LR)

    def step(self, xb: torch.Tensor) -> torch.Tensor:
        train_step(self.sae, self.opt, xb, AUX)
        return self.sae.tokens_since_fired == 0  # fired in this batch


class Sparsify:
    """sparsify's SparseCoder driven the way its Trainer drives it (b_dec = first batch mean,
    unit decoder before each forward, parallel-gradient removal, fvu + α·auxk), at our
    constant lr instead of its warmup/decay schedule so the two runs share every setting."""

    name = "sparsify"

    def __init__(self, xtr: torch.Tensor, dead_tokens: int, seed: int, d_sae: int = D_SAE):
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(seed)
        self.d_sae = d_sae
        self.sc = SparseCoder(xtr.shape[1], SparseCoderConfig(num_latents=d_sae, k=K))
        self.opt = torch.optim.Adam(self.sc.parameters(), lr=LR)
        self.since = torch.zeros(d_sae, dtype=torch.long)
        self.dead_tokens, self.first = dead_tokens, True

    def step(self, xb: torch.Tensor) -> torch.Tensor:
        sc = self.sc
        if self.first:
            sc.b_dec.data = xb.mean(0)
            self.first = False
        sc.set_decoder_norm_to_unit_norm()
        out = sc(xb, dead_mask=self.since > self.dead_tokens)
        (out.fvu + AUX * out.auxk_loss).backward()
        sc.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        fired = torch.zeros(self.d_sae, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True  # sparsify's own did_fire rule
        self.since += xb.shape[0]
        self.since[fired] = 0
        act = torch.zeros(self.d_sae, dtype=torch.bool)
        act[out.latent_indices[out.latent_acts > ACTIVE]] = True  # our dead_threshold
        return act

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.sc.set_decoder_norm_to_unit_norm()
        return self.sc(x).sae_out

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.sc.set_decoder_norm_to_unit_norm()
        out = self.sc.encode(x)
        return out.top_acts, out.top_indices

    def decoder(self) -> torch.Tensor:
        self.sc.set_decoder_norm_to_unit_norm()
        return self.sc.W_dec.detach()


def held_out_fvu(model, x: torch.Tensor) -> float:
    sse = sum(float((model.reconstruct(x[i:i + 4096]) - x[i:i + 4096]).pow(2).sum())
              for i in range(0, x.shape[0], 4096))
    return sse / float((x - x.mean(0)).pow(2).sum())


def silent_fraction(model, x: torch.Tensor) -> float:
    """Latents that are active (> ACTIVE) on none of the rows x, with the weights as they are now.
    Unlike `dead` (no activation during the last dead_tokens of training), this does not count a
    latent that AuxK revived for a few batches as alive."""
    fired = torch.zeros(D_SAE, dtype=torch.bool)
    for i in range(0, x.shape[0], 4096):
        values, indices = model.code(x[i:i + 4096])
        fired[indices[values > ACTIVE]] = True
    return float((~fired).float().mean())


def evaluate(model, tokens: int, sec: float, since: torch.Tensor, dead_tokens: int,
             xtr: torch.Tensor, xte: torch.Tensor, atoms: torch.Tensor | None) -> dict:
    """One curve point, computed the same way for every library."""
    row = {"tokens": tokens, "sec": sec, "fvu": held_out_fvu(model, xte),
           "dead": float((since >= min(dead_tokens, tokens)).float().mean()),
           "silent": silent_fraction(model, xtr)}
    if atoms is not None:
        row["recovery"] = recovery(model.decoder(), atoms, 0.9)[0]
    return row


def saelens_curve(python: str, xtr: torch.Tensor, index: torch.Tensor, marks: list[int],
                  dead_tokens: int, seed: int, xte: torch.Tensor, atoms: torch.Tensor | None
                  ) -> tuple[list[dict], str]:
    """SAELens trained by `saelens_runner.py` under `python`, read back with our SAELens loader."""
    from sae.saelens import load_saelens

    runner = Path(__file__).with_name("saelens_runner.py")
    with tempfile.TemporaryDirectory() as d:
        job = Path(d) / "job.pt"
        torch.save({"x": xtr, "index": index, "marks": marks, "d_sae": D_SAE, "k": K, "lr": LR,
                    "aux": AUX, "dead_tokens": dead_tokens, "threshold": ACTIVE, "seed": seed}, job)
        done = subprocess.run([python, str(runner), str(job), d], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{SAELENS_ENV}={python}: {runner.name} failed "
                               f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
        res = torch.load(Path(d) / "result.pt")
        rows = [evaluate(SAEView(load_saelens(Path(d) / f"step_{r['step']}")), r["step"] * BATCH,
                         r["sec"], r["since"], dead_tokens, xtr, xte, atoms) for r in res["rows"]]
    return rows, res["version"]


def run(name: str, budgets: list[int], seed: int = 0) -> dict:
    xtr, xte, atoms = organism_data() if name == "organism" else planted_data()
    total = max(budgets)
    dead_tokens = dead_tokens_for(total, BATCH)
    trainers = [Ours(xtr, dead_tokens, seed), Sparsify(xtr, dead_tokens, seed)]
    secs = {t.name: 0.0 for t in trainers}
    since = {t.name: torch.zeros(D_SAE, dtype=torch.long) for t in trainers}
    curves = {t.name: [] for t in trainers}
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.stack([torch.randint(0, xtr.shape[0], (BATCH,), generator=g)
                         for _ in range(total // BATCH)])
    marks = sorted({b // BATCH for b in budgets} | {s * total // BATCH // 8 for s in range(1, 9)})
    for step in range(1, total // BATCH + 1):
        xb = xtr[index[step - 1]]
        for t in trainers:
            t0 = time.perf_counter()
            active = t.step(xb)
            secs[t.name] += time.perf_counter() - t0
            since[t.name] += BATCH
            since[t.name][active] = 0
        if step in marks:
            for t in trainers:
                curves[t.name].append(evaluate(t, step * BATCH, secs[t.name], since[t.name],
                                               dead_tokens, xtr, xte, atoms))
    versions = {}
    if os.environ.get(SAELENS_ENV):
        curves["sae-lens"], versions["sae-lens"] = saelens_curve(
            os.environ[SAELENS_ENV], xtr, index, marks, dead_tokens, seed, xte, atoms)
    return {"data": name, "d_in": xtr.shape[1], "train_rows": xtr.shape[0],
            "heldout_rows": xte.shape[0], "dead_tokens": dead_tokens, "curves": curves,
            "budgets": budgets, "versions": versions}


def saelens_note(results: list[dict]) -> str:
    py = os.environ.get(SAELENS_ENV)
    if not py:
        return (f"SAELens: skipped (set {SAELENS_ENV} to a Python with sae-lens installed; it "
                "cannot share this venv, sae-lens pins transformer-lens 3.x)")
    version = results[0]["versions"].get("sae-lens", "?")
    return (f"SAELens {version} ({py}): trained by benchmarks/saelens_runner.py in its own process "
            "(its seconds are not interleaved with the others'), saved by SAELens, loaded by "
            "sae.load_saelens and evaluated here")


def table(res: dict) -> str:
    out = [f"### {res['data']} (d_in {res['d_in']}, {res['train_rows']:,} training rows, "
           f"{res['heldout_rows']:,} held out; dead after {res['dead_tokens']:,} tokens)", "",
           "| tokens | library | held-out FVU | s per 1M tokens | dead % | silent on training rows % | planted recovered |",
           "|---|---|---|---|---|---|---|"]
    for b in res["budgets"]:
        for lib, rows in res["curves"].items():
            r = next(r for r in rows if r["tokens"] == b // BATCH * BATCH)
            rec = f"{100 * r['recovery']:.1f} %" if "recovery" in r else "–"
            out.append(f"| {b / 1e6:g}M | {lib} | {r['fvu']:.4f} | {r['sec'] / r['tokens'] * 1e6:.1f} | "
                       f"{100 * r['dead']:.1f} | {100 * r['silent']:.1f} | {rec} |")
        o = next(r for r in res["curves"]["culturelens"] if r["tokens"] == b // BATCH * BATCH)
        for peer in [lib for lib in res["curves"] if lib != "culturelens"]:
            p = next(r for r in res["curves"][peer] if r["tokens"] == b // BATCH * BATCH)
            out.append(f"| {b / 1e6:g}M | ratio ours/{peer} | {o['fvu'] / p['fvu']:.2f} | "
                       f"{o['sec'] / p['sec']:.2f} | | | |")
    out += ["", "FVU vs wall time (s): " + "; ".join(
        f"{lib}: " + ", ".join(f"{r['sec']:.0f}s→{r['fvu']:.4f}" for r in rows)
        for lib, rows in res["curves"].items())]
    return "\n".join(out)


def widths_sweep(widths: list[int], train_steps: int, seed: int = 0) -> list[dict]:
    """Seconds per step and held-out FVU per width, ours and sparsify's, steps interleaved.

    A latent is dead after train_steps/2 batches without firing, so the first half runs without AuxK
    and the second half with it (on the latents that stayed silent): both regimes of a run."""
    import statistics

    xtr, xte, _ = planted_data()
    half = max(2, train_steps // 2)
    dead_tokens = BATCH * half
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(0, xtr.shape[0], (train_steps, BATCH), generator=g)
    rows = []
    for w in widths:
        trainers = [Ours(xtr, dead_tokens, seed, w), Sparsify(xtr, dead_tokens, seed, w)]
        secs: dict[str, list[float]] = {t.name: [] for t in trainers}
        for step in range(train_steps):
            xb = xtr[index[step]]
            for t in trainers:
                t0 = time.perf_counter()
                t.step(xb)
                secs[t.name].append(time.perf_counter() - t0)
        row = {"d_sae": w, "steps": train_steps, "dead_tokens": dead_tokens}  # key as in earlier outputs
        for t in trainers:
            s_ = secs[t.name]
            # step 1 allocates the optimiser state: left out for both
            row[f"{t.name}_sec"] = statistics.median(s_[1:] or s_)
            row[f"{t.name}_sec_noaux"] = statistics.median(s_[1:half] or s_[:1])
            row[f"{t.name}_sec_aux"] = statistics.median(s_[half:] or s_[-1:])
            row[f"{t.name}_fvu"] = held_out_fvu(t, xte)
        rows.append(row)
        print(f"  d_sae {w:,}: ours {row['culturelens_sec']:.3f} s/step, sparsify "
              f"{row['sparsify_sec']:.3f} s/step, ratio {row['culturelens_sec'] / row['sparsify_sec']:.2f}",
              flush=True)
        del trainers
    return rows


def widths_table(rows: list[dict]) -> str:
    base = rows[0]
    out = ["| d_sae | ours s/step | sparsify s/step | ours/sparsify | ours/sparsify before AuxK | "
           "ours/sparsify with AuxK | width × | ours growth × | sparsify growth × | FVU ours | "
           "FVU sparsify | FVU ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, p = r["culturelens_sec"], r["sparsify_sec"]
        out.append(f"| {r['d_sae']:,} | {o:.3f} | {p:.3f} | {o / p:.2f} | "
                   f"{r['culturelens_sec_noaux'] / r['sparsify_sec_noaux']:.2f} | "
                   f"{r['culturelens_sec_aux'] / r['sparsify_sec_aux']:.2f} | "
                   f"{r['d_sae'] / base['d_sae']:g} | {o / base['culturelens_sec']:.2f} | "
                   f"{p / base['sparsify_sec']:.2f} | {r['culturelens_fvu']:.4f} | "
                   f"{r['sparsify_fvu']:.4f} | {r['culturelens_fvu'] / r['sparsify_fvu']:.2f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="0.25M tokens only")
    ap.add_argument("--big", action="store_true", help="also 4M tokens (long on shared CPUs)")
    ap.add_argument("--data", nargs="+", default=["organism", "planted"],
                    choices=["organism", "planted"])
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--widths", nargs="+", type=int,
                    help="width sweep instead of the budgets: seconds per step at these d_sae")
    ap.add_argument("--train-steps", type=int, default=12, help="training steps per width in the sweep")
    a = ap.parse_args()
    try:
        import sparsify
    except ImportError:
        print("eai-sparsify is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from importlib.metadata import version

    if a.widths:
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, eai-sparsify "
              f"{version('eai-sparsify')}; d_in 768, k {K}, batch {BATCH}, {a.train_steps} steps per "
              f"width (median of steps 2..{a.train_steps}), interleaved", flush=True)
        rows = widths_sweep(a.widths, a.train_steps)
        print(widths_table(rows))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return 0
    budgets = [250_000] if a.quick else [250_000, 1_000_000] + ([4_000_000] if a.big else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"eai-sparsify {version('eai-sparsify')} ({sparsify.__name__})", flush=True)
    results = []
    for name in a.data:
        res = run(name, budgets)
        results.append(res)
        print(table(res) + "\n", flush=True)
    print(saelens_note(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
