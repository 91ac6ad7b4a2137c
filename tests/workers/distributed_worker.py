"""Jobs run under `torchrun` (or as one plain process) by tests/interp/test_distributed.py and
benchmarks/bench_distributed.py. Not a test file: `python tests/workers/distributed_worker.py OUT JOB[:ARG] ...`.

Every job writes what it computed to OUT (rank 0 only), so the caller compares a 1-process
run with a 2-process run of the same job."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def job_score(out: Path, n_nouns: str = "1", num_steps: str = "5") -> None:
    """circuits.evaluate.score on organism prompts (15 per noun), plain and under per-culture
    Amplify: judged results plus a hash of every generated image (gathered in prompt order)."""
    import interp
    from circuits.analysis.cultureworld import TEST_NOUNS, organism_pairs
    from circuits.evaluate import ScoreSettings, score
    from circuits.organism.judge import CultureWorldJudge
    from circuits.organism.shipped import JUDGE, PIPELINE
    from circuits.pairs import by_concept
    from interp import distributed

    model = interp.load(PIPELINE, trust_remote_code=True)
    judge = CultureWorldJudge.load(JUDGE)
    hashes: list[str] = []

    def recording_judge(images):
        hashes.extend(hashlib.sha256(im.tobytes()).hexdigest()[:16] for im in images)
        return judge(images)

    groups = by_concept(organism_pairs(TEST_NOUNS[: int(n_nouns)]))
    units = {c: [interp.Amplify(interp.Units("text.blocks.0.mlp.hook_post", [i, 3 * i + 1]), lam=4.0)]
             for i, c in enumerate(groups)}
    t0 = time.perf_counter()
    res = {}
    for name, ivs in (("plain", None), ("amplified", lambda c: units[c])):
        hashes.clear()
        s = score(model, groups, recording_judge, ivs, "noun",
                  settings=ScoreSettings(seed=3, num_steps=int(num_steps), batch_size=8))
        res[name] = {"ids": s.ids, "correct": s.correct.tolist(), "predicted": s.predicted,
                     "images": distributed.gather_shards(list(hashes), len(s.ids))}
    res["seconds"] = time.perf_counter() - t0
    res["world_size"] = distributed.world_size()
    if distributed.is_main():
        (out / "score.json").write_text(json.dumps(res, indent=1))


STORE_PROMPTS = [f"{a} {n}{i}" for i in range(5) for a in ("red", "small", "old")
                 for n in ("box", "hat")]


def job_store(out: Path, mode: str = "") -> None:
    """ActivationStore.build of a tiny encoder's site over 30 prompts, 40-row shards (so rank
    boundaries fall inside chunks). mode "crash": rank 1 dies after its first captured batch,
    once rank 0's part is on disk (a crash that leaves one finished rank); "mismatch": rank 1
    has another prompt list, and each rank records the error it gets in mismatch-rank{r}.txt."""
    from sae import SAEError
    import os

    import interp
    from interp import distributed
    from sae import ActivationStore

    model = interp.tiny("sd", seed=0)
    prompts = STORE_PROMPTS[::-1] if mode == "mismatch" and distributed.rank() == 1 else STORE_PROMPTS
    if mode == "crash" and distributed.rank() == 1:
        real, calls = interp.capture, []

        def dying_capture(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                part0 = out / "store" / "part-000-of-002.json"
                while not part0.exists():
                    time.sleep(0.1)
                os._exit(17)
            return real(*a, **k)

        interp.capture = dying_capture
    try:
        st = ActivationStore.build(model, prompts, "text.blocks.1.hook_resid_post",
                                   out / ("store_mismatch" if mode == "mismatch" else "store"),
                                   batch_size=4, shard_tokens=40, progress=False)
    except SAEError as e:
        if mode != "mismatch":
            raise
        (out / f"mismatch-rank{distributed.rank()}.txt").write_text(str(e))
        return
    got = {"n_tokens": st.n_tokens, "all": st.all().tolist(),
           "batches": [b.tolist() for b, _ in zip(st.batches(48, seed=5), range(9))],
           "files": [s.file for s in st.shards], "manifest": st.manifest}
    if distributed.is_main():
        (out / "store.json").write_text(json.dumps(got))


def job_sae(out: Path, mode: str = "", train_steps: str = "40") -> None:
    """Top-K SAE training (d_in 32, 256 latents, k 8, global batch 64, ~18 % dead so AuxK runs) on a
    planted-dictionary store written by every rank's share. mode "kill": rank 1 dies at the
    start of step 12 (rank 0 has checkpointed step 10); "resume": continue from the checkpoint.
    Rank 0 saves the final weights and the log to sae.pt."""
    import os

    from interp import distributed
    from sae import ActivationStore, TopKSAE, TrainConfig, train
    from sae.synthetic import planted

    x, _ = planted(64 * 25, 32, 96, 4, noise=0.05, seed=0)
    mine = distributed.shard_range(x.shape[0], "rows")
    store = ActivationStore.from_batches(out / "sae_store", [x[mine.start:mine.stop]], {"data": "planted-0"},
                                         shard_tokens=300, progress=False)
    if mode == "kill" and distributed.rank() == 1:
        real = ActivationStore.batches

        def dying(self, *a, **k):
            for i, b in enumerate(real(self, *a, **k)):
                if i == 11:  # the 12th batch: step 11 (and rank 0's step-10 checkpoint) is done
                    os._exit(17)
                yield b

        ActivationStore.batches = dying
    sae = TopKSAE(32, 256, 8, dead_tokens=64, seed=0)
    t0 = time.perf_counter()
    cfg = TrainConfig(batch_size=64, total_tokens=64 * int(train_steps), lr=5e-3, seed=0, checkpoint_every=5, log_every=1)
    rows = train(sae, store, cfg, checkpoint_dir=out / "ck", resume=mode == "resume", progress=False)
    secs = time.perf_counter() - t0
    if distributed.is_main():
        torch.save({"state": sae.state_dict(), "rows": rows, "seconds": secs,
                    "world_size": distributed.world_size()}, out / "sae.pt")


JOBS = {"score": job_score, "store": job_store, "sae": job_sae}

if __name__ == "__main__":
    from interp import distributed

    out, jobs = Path(sys.argv[1]), sys.argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    distributed.init()
    ok = False
    try:
        for spec in jobs:  # JOB or JOB:ARG[,ARG...], run in turn in the same processes
            name, _, args = spec.partition(":")
            JOBS[name](out, *(args.split(",") if args else []))
            # A trail in stderr, so a failed launch says which job each rank had finished.
            print(f"[worker rank {distributed.rank()}] {spec} done", file=sys.stderr, flush=True)
        ok = True
    finally:
        distributed.shutdown(wait=ok)
    print(f"[worker rank {distributed.rank()}] process group closed", file=sys.stderr, flush=True)
