"""torch.distributed support (interp.distributed): launch environment, sharding, errors that
never hang, and 2-process runs (torchrun, gloo, CPU) that must equal one process exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interp import distributed
from interp.distributed import DistributedError
from interp.checkpoint import load_checkpoint
from sae.train import CHECKPOINT, CHECKPOINT_KIND

import launch
from launch import LAUNCH_ENV, ROOT, free_port, torchrun, worker_module


@pytest.fixture
def launch_env(monkeypatch):
    """Set a fake launch environment (no process group is created by the tests using it)."""
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)

    def set_env(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))
    return set_env


# ---- in-process ----------------------------------------------------------------------------
def test_single_process_is_identity(launch_env):
    assert distributed.world() == (0, 1) and distributed.is_main() and not distributed.is_distributed()
    assert distributed.init() is False
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.gather_shards([5, 6], 2) == [5, 6]
    assert distributed.output_dir("x") == Path("x")


def test_launch_environment_checked(launch_env):
    launch_env(RANK=0)
    with pytest.raises(DistributedError, match="sets both"):
        distributed.world()
    launch_env(RANK=2, WORLD_SIZE=2)
    with pytest.raises(DistributedError, match="0 <= RANK < WORLD_SIZE"):
        distributed.world()
    launch_env(RANK="one", WORLD_SIZE=2)
    with pytest.raises(DistributedError, match="RANK='one' is not an integer"):
        distributed.world()
    launch_env(RANK=1, WORLD_SIZE=2)
    with pytest.raises(DistributedError, match="MASTER_ADDR is not set"):
        distributed.init()


@pytest.mark.parametrize("n,w", [(7, 2), (7, 3), (4, 4), (10, 1)])
def test_shards_cover_in_order(launch_env, n, w):
    got = []
    for r in range(w):
        launch_env(RANK=r, WORLD_SIZE=w)
        got.append(distributed.shard(list(range(n))))
    assert [x for part in got for x in part] == list(range(n))  # contiguous, rank order = item order
    assert max(map(len, got)) - min(map(len, got)) <= 1


def test_more_ranks_than_prompts_is_an_error(launch_env):
    from circuits.evaluate import score
    from circuits.pairs import PromptPair

    launch_env(RANK=1, WORLD_SIZE=4)
    groups = {"ja": [PromptPair("a ja box", "a box", "ja", "box", "ja")] * 3}
    with pytest.raises(DistributedError, match="3 prompts cannot be split across 4 processes"):
        score(None, groups, judge=None)


def test_output_dir_private_on_other_ranks(launch_env, tmp_path):
    launch_env(RANK=1, WORLD_SIZE=2)
    d = distributed.output_dir(tmp_path / "report")
    assert d.exists() and d != tmp_path / "report" and not (tmp_path / "report").exists()


def test_missing_rendezvous_is_a_clear_error():
    """One process of a world of 2 whose peer never starts, as rank 0 (hosts the store, waits
    for the peer) and as rank 1 (finds no store): an error naming the address within the
    rendezvous timeout, not a hang."""
    code = "from interp import distributed; distributed.init()"
    procs = {}
    t0 = time.perf_counter()
    for rank in (0, 1):
        port = free_port()
        env = launch.env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   CULTURELENS_RENDEZVOUS_TIMEOUT="3")
        procs[port] = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for port, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode != 0
        assert "DistributedError" in err and f"no rendezvous with all peers at 127.0.0.1:{port} within 3 s" in err
    assert time.perf_counter() - t0 < 90


# ---- two processes under torchrun ----------------------------------------------------------
def _json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path):
    """One torchrun launch of 2 ranks against the same jobs in this process:
    - circuits.evaluate.score (organism prompts, plain and with per-culture interventions):
      every judgement and every generated image (hashes) equal;
    - ActivationStore.build: every stored row and every shuffled training batch equal;
    - ranks with different prompt lists for one store: an SAEError on every rank, no hang;
    - DDP SAE training (AuxK active) equals one process on the same global batch within 1e-5
      (float summation order; measured ~2e-6), with identical dead-latent counters."""
    import torch

    w = worker_module()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    w.job_score(one)
    w.job_store(one)
    w.job_sae(one)
    p = torchrun(two, "score", "store", "store:mismatch", "sae")
    assert p.returncode == 0, launch.failure(p)
    s1, s2 = _json(one, "score.json"), _json(two, "score.json")
    for cond in ("plain", "amplified"):
        assert s2[cond] == s1[cond]
    assert s1["plain"]["images"] != s1["amplified"]["images"]  # the interventions did something
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    a, b = _json(one, "store.json"), _json(two, "store.json")
    assert b["all"] == a["all"] and b["batches"] == a["batches"] and b["n_tokens"] == a["n_tokens"] == 180
    assert b["manifest"]["world_size"] == 2 and len(b["files"]) == 6 and len(a["files"]) == 5
    assert b["manifest"]["fingerprints"] == a["manifest"]["fingerprints"]
    for r in (0, 1):
        assert "ranks [1] build the store with other settings than rank 0" in (two / f"mismatch-rank{r}.txt").read_text()
    assert not (two / "store_mismatch" / "manifest.json").exists()
    t1, t2 = torch.load(one / "sae.pt"), torch.load(two / "sae.pt")
    assert t2["world_size"] == 2
    assert torch.equal(t1["state"]["tokens_since_fired"], t2["state"]["tokens_since_fired"])
    for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(t2["state"][k], t1["state"][k], rtol=0, atol=1e-5)
    assert max(r["aux"] for r in t1["rows"]) > 0  # AuxK ran
    for r1, r2 in zip(t1["rows"], t2["rows"]):  # logged global-batch statistics agree
        assert r1["dead"] == r2["dead"] and abs(r1["fvu"] - r2["fvu"]) < 1e-4 and abs(r1["l0"] - r2["l0"]) < 1e-4
    assert t1["rows"][-1]["fvu"] < 0.8 * t1["rows"][0]["fvu"]  # it learned something


@pytest.mark.slow
def test_crash_of_one_rank_resumes(tmp_path):
    """Kill rank 1 mid-run, restart, resume:
    - store: rank 1 dies mid-capture after rank 0 finished its share; the folder is no store
      (no manifest), one process refuses its parts (other world size), and a 2-rank restart
      reuses rank 0's files, redoes rank 1's and equals the one-process store;
    - SAE training: rank 1 dies at step 12 (rank 0 checkpointed step 10); a restart with
      resume=True ends with exactly the weights of an uninterrupted 2-rank run."""
    import torch

    import interp
    from sae import ActivationStore, SAEError

    w = worker_module()
    p = torchrun(tmp_path, "store:crash")
    assert p.returncode != 0
    folder = tmp_path / "store"
    assert not (folder / "manifest.json").exists() and (folder / "part-000-of-002.json").exists()
    with pytest.raises(SAEError, match="no manifest"):
        ActivationStore(folder)
    kept = {f.name: f.stat().st_mtime_ns for f in folder.glob("rank000-*")}
    with pytest.raises(SAEError, match="part-000-of-002.json: part of an interrupted store built with other "
                                       "settings .*world_size"):
        ActivationStore.build(interp.tiny("sd", seed=0), w.STORE_PROMPTS, "text.blocks.1.hook_resid_post", folder,
                              batch_size=4, shard_tokens=40, progress=False)
    p = torchrun(tmp_path, "store", "sae:kill")
    assert p.returncode != 0 and not (tmp_path / "sae.pt").exists()
    assert load_checkpoint(tmp_path / "ck" / CHECKPOINT, CHECKPOINT_KIND)["step"] == 10
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("rank000-*")} == kept  # rank 0 not redone
    assert not list(folder.glob("part-*"))
    one = tmp_path / "one"
    one.mkdir()
    w.job_store(one)
    a, b = _json(one, "store.json"), _json(tmp_path, "store.json")
    assert b["all"] == a["all"] and b["batches"] == a["batches"]
    p = torchrun(tmp_path, "sae:resume")
    assert p.returncode == 0, launch.failure(p)
    p = torchrun(tmp_path / "uninterrupted", "sae")
    assert p.returncode == 0, launch.failure(p)
    got, ref = torch.load(tmp_path / "sae.pt"), torch.load(tmp_path / "uninterrupted" / "sae.pt")
    for k, v in ref["state"].items():
        assert torch.equal(got["state"][k], v), k
