"""Training: planted-dictionary recovery, bit-for-bit resume, logs and checkpoints."""

import json

import pytest
import torch

from sae import ActivationStore, SAEError, TopKSAE, TrainConfig, evaluate, train
from sae.model import dead_tokens_for
from sae.synthetic import planted, recovery
from interp.checkpoint import load_checkpoint
from sae.train import CHECKPOINT, CHECKPOINT_KIND, make_optimizer


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    x, D = planted(8192, 32, 64, 3, noise=0.01, seed=0)
    path = tmp_path_factory.mktemp("planted")
    store = ActivationStore.from_batches(path, (x[i:i + 1000] for i in range(0, 8192, 1000)),
                                         {"site": "synthetic"}, shard_tokens=2048, progress=False)
    return store, x, D


def test_planted_dictionary_recovered(planted_store, tmp_path):
    store, x, D = planted_store
    sae = TopKSAE(32, 128, 4, dead_tokens=3000, seed=7)
    rows = train(sae, store, TrainConfig(batch_size=256, total_tokens=256 * 500, lr=4e-3, checkpoint_every=100),
                 checkpoint_dir=tmp_path, progress=False)
    frac, best = recovery(sae.W_dec.detach(), D, 0.9)
    assert frac >= 0.9, f"recovered {frac:.2f} of atoms; worst cosines {best.sort().values[:5]}"
    ev = evaluate(sae, x)
    assert ev["fvu"] < 0.1 and abs(ev["explained_variance"] + ev["fvu"] - 1) < 1e-12
    assert ev["l0"] <= 4
    # an untrained SAE does not pass the same bar (the check can fail)
    assert recovery(TopKSAE(32, 128, 4, seed=7).W_dec, D, 0.9)[0] < 0.2
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [r["step"] for r in rows] and log[-1]["step"] == 500
    assert {"loss", "fvu", "l0", "dead", "aux", "tokens"} <= set(log[0])
    assert log[-1]["fvu"] < log[0]["fvu"]


def test_resume_is_bit_for_bit(planted_store, tmp_path):
    store, _, _ = planted_store
    cfg = TrainConfig(batch_size=128, total_tokens=128 * 60, lr=4e-3, seed=3, checkpoint_every=25, log_every=5)
    kw = dict(progress=False)
    full = TopKSAE(32, 96, 4, dead_tokens=500, seed=1)
    train(full, store, cfg, checkpoint_dir=tmp_path / "a", **kw)
    part = TopKSAE(32, 96, 4, dead_tokens=500, seed=1)
    train(part, store, cfg, checkpoint_dir=tmp_path / "b", stop_after=37, **kw)  # "crash" at 37
    ck = load_checkpoint(tmp_path / "b" / CHECKPOINT, CHECKPOINT_KIND)
    assert ck["step"] == 37
    resumed = TopKSAE(32, 96, 4, dead_tokens=500, seed=99)  # fresh object, other init
    train(resumed, store, cfg, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    for name, t in full.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    la = (tmp_path / "a" / "metrics.jsonl").read_text()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text()
    strip = lambda s: [{k: v for k, v in json.loads(l).items() if k != "sec"} for l in s.splitlines()]
    assert strip(la) == strip(lb)


def test_resume_refuses_other_settings(planted_store, tmp_path):
    store, _, _ = planted_store
    sae = TopKSAE(32, 64, 4, seed=0)
    with pytest.raises(SAEError, match="no checkpoint"):
        train(sae, store, TrainConfig(batch_size=64, total_tokens=640), checkpoint_dir=tmp_path, resume=True,
              progress=False)
    train(sae, store, TrainConfig(batch_size=64, total_tokens=640), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(SAEError, match="this run differs"):
        train(TopKSAE(32, 64, 4), store, TrainConfig(batch_size=32, total_tokens=640),
              checkpoint_dir=tmp_path, resume=True, progress=False)


def test_store_dimension_mismatch(planted_store):
    store, _, _ = planted_store
    with pytest.raises(SAEError, match="d_in=16"):
        train(TopKSAE(16, 64, 4), store, TrainConfig(batch_size=64, total_tokens=640), progress=False)


def _store(path, x, shard=2048):
    return ActivationStore.from_batches(path, (x[i:i + 1024] for i in range(0, x.shape[0], 1024)),
                                        {"site": "synthetic"}, shard_tokens=shard, progress=False)


def test_default_dead_threshold_scales_with_budget(planted_store):
    assert dead_tokens_for(1_000_000, 1024) == 100_000
    assert dead_tokens_for(10**9, 4096) == 10_000_000
    assert dead_tokens_for(5000, 1024) == 1024  # at least one batch
    store, _, _ = planted_store
    sae = TopKSAE(32, 64, 4, seed=0)
    with pytest.raises(SAEError, match="dead_tokens is None"):
        sae.dead_mask()
    train(sae, store, TrainConfig(batch_size=64, total_tokens=6400), progress=False)
    assert sae.cfg.dead_tokens == 640
    kept = TopKSAE(32, 64, 4, dead_tokens=123, seed=0)
    train(kept, store, TrainConfig(batch_size=64, total_tokens=640), progress=False)
    assert kept.cfg.dead_tokens == 123


def test_auxk_revives_latents_that_die(tmp_path):
    """At lr 3e-2 most latents die on this offset, anisotropic planted set without AuxK; with
    it (default threshold, budget/10) few ever stay dead (~6 % vs ~68 %)."""
    x, _ = planted(8192, 32, 1024, 4, noise=0.01, seed=0)
    x = x * torch.linspace(0.2, 3, 32) + 5
    store = _store(tmp_path / "s", x)
    dead, aux = {}, {}
    for coef in (1 / 32, 0.0):
        sae = TopKSAE(32, 512, 4, seed=0)
        rows = train(sae, store, TrainConfig(batch_size=256, total_tokens=256 * 400, lr=3e-2, aux_coef=coef, log_every=20),
                     progress=False)
        assert sae.cfg.dead_tokens == 256 * 40
        dead[coef] = float(sae.dead_mask().float().mean())
        aux[coef] = [r["aux"] for r in rows]
        assert max(r["dead"] for r in rows) > 0.02  # latents do die in both runs
    assert dead[0.0] > 0.4  # ~68 % without AuxK
    assert dead[1 / 32] < 0.25 * dead[0.0], dead  # ~6 % with it
    assert max(aux[1 / 32]) > 0 and max(aux[0.0]) == 0


def test_auxk_never_lowers_a_dead_latents_preactivation():
    """The AuxK gradient reaching dead latents' encoder is one-sided: where their aux
    reconstruction overshoots the residual (here: a huge encoder scale), a two-sided gradient
    would push b_enc down (bury them); the kept part only raises it, and the decoder rows still
    get their full gradient."""
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, 2, dead_tokens=10, seed=0)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[32:] = True
    with torch.no_grad():
        sae.W_enc[:, 32:] *= 50  # dead latents' aux code overshoots any residual
    x = torch.randn(128, 16)
    codes, aux_codes = sae.encode_sparse(x, dead)
    assert aux_codes.indices.numel() > 0 and bool(dead[aux_codes.indices].all())
    residual = (x - sae.decode_sparse(codes)).detach()
    two_sided = (sae.decode_sparse(aux_codes, bias=False) - residual).pow(2).sum()
    # what a two-sided gradient would do to the aux values: mostly lower them
    g_vals = torch.autograd.grad(two_sided, aux_codes.values, retain_graph=True)[0]
    assert (g_vals > 0).float().mean() > 0.5
    two_sided.backward()
    g_b = sae.b_enc.grad
    assert bool((g_b[32:] <= 0).all()), "AuxK pushed a dead latent's pre-activation down"
    assert bool((g_b[32:] < 0).any())  # ...while some are raised
    assert float(sae.W_dec.grad[32:].abs().sum()) > 0  # decoder rows of dead latents learn
    assert float(g_b[:32].abs().sum()) == 0  # live latents get nothing from this loss


def test_encoder_scale_and_b_dec_fitted_at_init(tmp_path):
    """train() starts from b_dec = geometric median and W_enc = s·W_decᵀ with s the least-squares
    scale of the first reconstruction (lr 0 keeps the initial weights)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 24, generator=g).pow(3) + 2.0  # skewed: median ≠ mean
    store = _store(tmp_path / "s", x)
    sae = TopKSAE(24, 256, 8, seed=3)
    w_dec0 = sae.W_dec.detach().clone()
    train(sae, store, TrainConfig(batch_size=256, total_tokens=256, lr=0.0), progress=False)
    sample = store.sample(4096, seed=1)
    b = sae.b_dec.detach()
    # geometric median: the unit vectors from b to the points sum to ~0, and b is not the mean
    u = (sample - b) / (sample - b).norm(dim=1, keepdim=True)
    assert u.sum(0).norm() < 1e-2 * sample.shape[0]
    assert (b - sample.mean(0)).norm() > 0.1
    # encoder = s · decoderᵀ with one s < 1, and s is the least-squares optimum: refitting is a no-op
    ratio = sae.W_enc.detach() / w_dec0.t()
    s = float(ratio.mean())
    torch.testing.assert_close(ratio, torch.full_like(ratio, s), rtol=1e-4, atol=1e-5)
    assert 0.05 < s < 0.9
    assert abs(sae.init_encoder_scale(sample[:4096]) - 1.0) < 1e-4
    # and it reconstructs better at step 0 than the unscaled transpose
    unit = TopKSAE(24, 256, 8, seed=3)
    unit.init_b_dec(sample)
    with torch.no_grad():
        assert evaluate(sae, sample)["fvu"] < evaluate(unit, sample)["fvu"]


def test_adam_settings():
    opt = make_optimizer(TopKSAE(8, 16, 2, seed=0))
    d = opt.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"]) == (4e-4, (0.9, 0.999), 1e-8, 0.0)


def test_plot_aux_and_dead(planted_store, tmp_path):
    from sae.plot import plot_auxk, plot_metrics

    store, _, _ = planted_store
    sae = TopKSAE(32, 64, 4, seed=0)
    rows = train(sae, store, TrainConfig(batch_size=64, total_tokens=64 * 30, log_every=5), progress=False)
    assert {"aux", "dead"} <= set(rows[0])
    for p in (plot_metrics(rows, tmp_path / "m.png", dead_tokens=sae.cfg.dead_tokens),
              plot_auxk(rows, tmp_path / "a.png", dead_tokens=sae.cfg.dead_tokens)):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SAEError, match="keys \\['nope'\\]"):
        plot_metrics(rows, tmp_path / "x.png", keys=("fvu", "nope"))


@pytest.mark.parametrize("seed", [0, 7])
def test_planted_atoms_are_not_the_sae_init(seed):
    """planted(seed=s) and TopKSAE(seed=s) of the same shape must not share a random stream: the
    untrained SAE would then "recover" every atom (it did, before the data stream was offset)."""
    _, D = planted(16, 48, 256, 4, seed=seed)
    frac, best = recovery(TopKSAE(48, 256, 4, seed=seed).W_dec.detach(), D, 0.9)
    assert frac == 0.0 and float(best.max()) < 0.8
