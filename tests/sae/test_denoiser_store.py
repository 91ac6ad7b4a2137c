"""Denoiser activation stores (rows = capture_generation values at their (prompt, seed, step,
position), resume after a kill) and SAE splice / steer at denoiser sites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import interp
import sae.denoiser
from circuits.data.judges.base import from_callable
from sae import (ActivationStore, DenoiserCapture, SAEError, Steer, TopKSAE, TrainConfig, evaluate, splice,
                 splice_fidelity, train)
from sae.layout import as_rows
import launch
from launch import free_port

PROMPTS = ["a cat", "a red box", "an old dog", "a blue hat", "a tall tea"]
XATTN = "unet.down.0.attn.0.attn2.hook_out"  # [B, Q, C]
TBLOCK = "unet.down.0.attn.0.hook_out"  # [B, C, h, w]
RESNET = "unet.down.0.resnet.0.hook_out"  # the transformer block's input in down block 0
HEADS = "unet.down.0.attn.0.attn1.hook_z"  # [B, Q, H, d]


def _build(path, model, site, cap=None, seeds=(0, 3), batch_size=2, prompts=PROMPTS, **kw):
    return ActivationStore.build(model, prompts, site, path, batch_size=batch_size, seeds=seeds, capture=cap,
                                 shard_tokens=kw.pop("shard_tokens", 100), progress=False, **kw)


def _reference(model, site, seeds, prompts=PROMPTS, batch_size=2):
    """capture_generation's [T, C, B, ...] per seed (each prompt with that seed), batched as the
    store batches (a batch of another size may round differently in the last bit)."""
    out = {}
    for s in seeds:
        parts = [interp.capture_generation(model, prompts[i:i + batch_size], [site],
                                           seed=[s] * len(prompts[i:i + batch_size])).acts[site]
                 for i in range(0, len(prompts), batch_size)]
        out[s] = torch.cat(parts, dim=2)
    return out


def _check_rows(store, ref, site, head=None, minus=None):
    rows, index = store.all(), store.index()
    assert index.shape == (rows.shape[0], 5) and store.manifest["meta"]["index_columns"] == [
        "prompt", "seed", "step", "branch", "position"]
    assert torch.unique(index, dim=0).shape[0] == index.shape[0]  # no row twice
    for r, (p, s, t, b, q) in zip(rows, index.tolist()):
        a = ref[s][t]
        c = b if a.shape[0] == 2 else 0
        want = as_rows(site, a[c], head)[p, q]
        if minus is not None:
            want = want - as_rows(site, minus[s][t][c], head)[p, q]
        assert torch.equal(r, want), (p, s, t, b, q)
    return index


@pytest.mark.parametrize("site,cap", [
    (XATTN, DenoiserCapture()),
    (TBLOCK, DenoiserCapture(steps=(1,), branch="both")),
    (RESNET, DenoiserCapture(branch="uncond", positions=(0, 7, 63))),
    (HEADS, DenoiserCapture(head=1, sample_positions=5)),
], ids=["xattn-all", "tblock-step1-both", "resnet-uncond-positions", "z-head-sampled"])
def test_rows_equal_capture_generation(tiny_sd, tmp_path, site, cap):
    store = _build(tmp_path, tiny_sd, site, cap)
    index = _check_rows(store, _reference(tiny_sd, site, (0, 3)), site, cap.head)
    T = tiny_sd.defaults["steps"]
    steps = cap.steps or range(T)
    branches = {"cond": [1], "uncond": [0], "both": [0, 1]}[cap.branch]
    n_pos = len(cap.positions) if cap.positions else cap.sample_positions or 64
    # every (prompt, seed, step, branch, position) asked for is there
    assert store.n_tokens == len(PROMPTS) * 2 * len(steps) * len(branches) * n_pos
    assert set(index[:, 2].tolist()) == set(steps) and set(index[:, 3].tolist()) == set(branches)
    if cap.positions:
        assert set(index[:, 4].tolist()) == set(cap.positions)
    # written shard by shard: shards of ≥ 100 rows ending on generations, at most a shard plus
    # one generation (2 prompts × 2 steps × 64 pixels) buffered
    assert all(sh.n >= 100 for sh in store.shards[:-1]) and store.manifest["max_buffered_tokens"] < 100 + 256


def test_sampled_positions_do_not_depend_on_batching(tiny_sd, tmp_path):
    cap = DenoiserCapture(sample_positions=4, sample_seed=7)
    a = _build(tmp_path / "a", tiny_sd, XATTN, cap, batch_size=2)
    b = _build(tmp_path / "b", tiny_sd, XATTN, cap, batch_size=5)
    def key(st):
        return sorted(map(tuple, st.index().tolist()))
    assert key(a) == key(b)
    order_a, order_b = a.index().tolist(), b.index().tolist()
    rows_b = {tuple(i): r for i, r in zip(order_b, b.all())}
    # same rows up to the last-bit rounding of another batch size
    torch.testing.assert_close(a.all(), torch.stack([rows_b[tuple(i)] for i in order_a]), rtol=1e-5, atol=1e-6)


def test_residual_update_is_output_minus_input(tiny_sd, tmp_path):
    # in a UNet down block the transformer block's input is the resnet before it
    store = _build(tmp_path, tiny_sd, TBLOCK, DenoiserCapture(residual=True), seeds=(1,))
    _check_rows(store, _reference(tiny_sd, TBLOCK, (1,)), TBLOCK, minus=_reference(tiny_sd, RESNET, (1,)))
    assert json.loads((tmp_path / "manifest.json").read_text())["meta"]["capture"]["residual"] is True
    with pytest.raises(SAEError, match="residual=True needs a block output"):
        _build(tmp_path / "x", tiny_sd, XATTN, DenoiserCapture(residual=True))


def test_mmdit_image_and_text_streams(tiny_sd3, tmp_path):
    blocks = [s for s in tiny_sd3.sites() if s.endswith("hook_img_out")]
    img1, img0 = blocks[1], blocks[0]
    store = _build(tmp_path / "img", tiny_sd3, img1, DenoiserCapture(residual=True), seeds=(0,))
    _check_rows(store, _reference(tiny_sd3, img1, (0,)), img1, minus=_reference(tiny_sd3, img0, (0,)))
    txt = [s for s in tiny_sd3.sites() if s.endswith("hook_txt_out")][0]
    store = _build(tmp_path / "txt", tiny_sd3, txt, DenoiserCapture(steps=(0,)), seeds=(2,))
    _check_rows(store, _reference(tiny_sd3, txt, (2,)), txt)


def test_kill_and_resume_leaves_the_same_rows(tiny_sd, tmp_path, monkeypatch):
    clean = _build(tmp_path / "clean", tiny_sd, XATTN, shard_tokens=200)
    real = sae.denoiser.capture_rows
    calls = []

    def dies_after_two(*a, **k):
        if len(calls) == 2:  # 256 rows per generation, shard_tokens 200: one shard per generation
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sae.denoiser, "capture_rows", dies_after_two)
    path = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _build(path, tiny_sd, XATTN, shard_tokens=200)
    assert not (path / "manifest.json").exists()
    progress = json.loads((path / "progress-000-of-001.json").read_text())
    assert progress["next"] == 2 and len(progress["shards"]) == 2
    calls.clear()
    monkeypatch.setattr(sae.denoiser, "capture_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = _build(path, tiny_sd, XATTN, shard_tokens=200)
    assert len(calls) == 6 - 2  # 3 prompt batches × 2 seeds, the first two reused
    assert torch.equal(resumed.index(), clean.index()) and torch.equal(resumed.all(), clean.all())
    assert not list(path.glob("progress-*")) and not list(path.glob("*.tmp"))
    # the same folder with other settings is refused, naming what differs
    other = tmp_path / "other"
    monkeypatch.setattr(sae.denoiser, "capture_rows", dies_after_two)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        _build(other, tiny_sd, XATTN, shard_tokens=200)
    with pytest.raises(SAEError, match="other settings"):
        _build(other, tiny_sd, XATTN, DenoiserCapture(steps=(0,)), shard_tokens=200)


def test_heldout_fvu_by_prompt(tiny_sd, tmp_path):
    """Same trainer; FVU on the rows of prompts it never saw."""
    store = _build(tmp_path / "all", tiny_sd, XATTN, shard_tokens=256)
    x, index = store.select([4])
    assert set(index[:, 0].tolist()) == {4} and x.shape[0] == 2 * 2 * 64  # seeds × steps × pixels
    with pytest.raises(SAEError, match="no rows of prompts"):
        store.select([99])
    # the tiny model's activations at this site cluster by prompt, so generalising to unseen
    # prompts needs many training prompts: 12 here, 3 held out
    many = [f"a {c} {n}" for c in ("red", "old", "big", "blue", "tall") for n in ("cat", "dog", "box")]
    both = _build(tmp_path / "many", tiny_sd, XATTN, prompts=many, seeds=(0,), batch_size=5, shard_tokens=512)
    train_store = _build(tmp_path / "train", tiny_sd, XATTN, prompts=many[:10], seeds=(0,), batch_size=5,
                         shard_tokens=512)
    held_x, _ = both.select(range(10, 15))
    model = TopKSAE(16, 32, 8, seed=0, dead_tokens=2 * train_store.n_tokens)
    train(model, train_store, TrainConfig(batch_size=128, total_tokens=128 * 300, lr=3e-3), progress=False)
    seen, held = evaluate(model, train_store.all()), evaluate(model, held_x)
    assert seen["fvu"] < held["fvu"] < evaluate(TopKSAE(16, 32, 8, seed=1), held_x)["fvu"]
    assert held["n_tokens"] == 5 * 2 * 64


# -- splice and steer at denoiser sites -------------------------------------------------------

@pytest.fixture(scope="module")
def xattn_sae():
    return TopKSAE(16, 32, 4, seed=0)


def _acts(model, site, ivs, seed=0):
    return interp.capture_generation(model, ["a cat"], [site], seed=seed, interventions=ivs).acts[site]


def test_splice_with_error_is_identity_and_without_is_not(tiny_sd, xattn_sae):
    plain = interp.generate(tiny_sd, ["a cat"], seed=0).latents
    same = interp.generate(tiny_sd, ["a cat"], seed=0, interventions=[splice(xattn_sae, XATTN, keep_error=True)])
    assert torch.equal(same.latents, plain)
    spliced = interp.generate(tiny_sd, ["a cat"], seed=0, interventions=[splice(xattn_sae, XATTN)]).latents
    assert not torch.equal(spliced, plain)


def test_steer_steps_branch_positions(tiny_sd, xattn_sae):
    plain = _acts(tiny_sd, XATTN, [])
    # steps=[1], conditional branch only: step 0 untouched, step 1 uncond rows untouched
    out = _acts(tiny_sd, XATTN, [Steer(xattn_sae, XATTN, [3], add=5.0, steps=[1])])
    assert torch.equal(out[0], plain[0]) and torch.equal(out[1, 0], plain[1, 0])
    torch.testing.assert_close(out[1, 1] - plain[1, 1], (5.0 * xattn_sae.W_dec[3]).expand_as(plain[1, 1]).detach())
    out = _acts(tiny_sd, XATTN, [Steer(xattn_sae, XATTN, [3], add=5.0, steps=[0], branch="uncond")])
    assert torch.equal(out[0, 1], plain[0, 1]) and not torch.equal(out[0, 0], plain[0, 0])
    # spatial positions at a [B, C, h, w] feature map: only those pixels change
    fmap = TopKSAE(16, 32, 4, seed=1)
    pos = [0, 9, 63]
    base = _acts(tiny_sd, RESNET, [])
    out = _acts(tiny_sd, RESNET, [Steer(fmap, RESNET, [2], add=3.0, positions=pos, steps=[0])])
    diff = (as_rows(RESNET, out[0, 1]) - as_rows(RESNET, base[0, 1])).abs().sum(-1)[0]
    assert diff.nonzero().flatten().tolist() == pos
    # a per-head SAE edits its head only
    hsae = TopKSAE(2, 8, 2, seed=0)
    zb = _acts(tiny_sd, HEADS, [])
    zo = _acts(tiny_sd, HEADS, [Steer(hsae, HEADS, [1], add=2.0, head=1, steps=[0])])
    changed = (zo[0, 1] - zb[0, 1]).abs().sum((0, 1, 3))
    assert changed.nonzero().flatten().tolist() == [1]
    with pytest.raises(SAEError, match="last dim 16"):
        interp.generate(tiny_sd, ["a cat"], interventions=[Steer(hsae, HEADS, [1], 1.0)])
    with pytest.raises(SAEError, match="use add="):
        Steer(fmap, TBLOCK, [1], 1.0, residual=True)


def test_splice_fidelity(tiny_sd, xattn_sae):
    fixed = torch.zeros(2, 16)
    fixed[:, 3] = 1.0
    judge = from_callable(lambda ims: fixed[:len(ims)], name="fixed")
    r = splice_fidelity(tiny_sd, xattn_sae, XATTN, ["a cat", "a dog"], seed=0, judge=judge)
    assert r.ssim.shape == (2,) and -1 <= r.mean_ssim < 1 and r.judge_agreement == 1.0
    same = splice_fidelity(tiny_sd, xattn_sae, XATTN, ["a cat"], steps=[0], positions=[])
    assert same.mean_ssim == pytest.approx(1.0) and same.judge_agreement is None


# -- two ranks under torchrun --------------------------------------------------------------------

WORKER = '''
import sys, torch, interp
from sae import ActivationStore
torch.set_num_threads(1)
model = interp.tiny("sd", seed=0)
ActivationStore.build(model, PROMPTS, SITE, sys.argv[1], batch_size=1, seeds=(0, 3), shard_tokens=100,
                      progress=False)
'''


def test_two_ranks_build_the_one_process_store(tiny_sd, tmp_path):
    """Ranks naming one folder each capture a contiguous share of the prompts; the merged store
    holds the rows of the one-process store, in the same global order."""
    script = tmp_path / "worker.py"
    script.write_text(f"PROMPTS = {PROMPTS!r}\nSITE = {XATTN!r}\n" + WORKER)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), str(tmp_path / "two")]
    env = launch.env(PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, launch.failure(p)
    two = ActivationStore(tmp_path / "two")
    one = _build(tmp_path / "one", tiny_sd, XATTN, batch_size=1)
    assert two.manifest["world_size"] == 2 and any(s.file.startswith("rank001-") for s in two.shards)
    # rank 0 has prompts 0-2, rank 1 prompts 3-4; one prompt per generation, so the same
    # generations as one process, hence the same rows bit for bit, in the same order
    assert torch.equal(two.index(), one.index()) and torch.equal(two.all(), one.all())
