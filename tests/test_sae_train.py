"""Training: planted-dictionary recovery, bit-for-bit resume, logs and checkpoints."""

import json

import pytest
import torch

from sae import ActivationStore, SAEError, TopKSAE, evaluate, train
from sae.synthetic import planted, recovery


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
    rows = train(sae, store, batch_size=256, total_tokens=256 * 500, lr=4e-3,
                 checkpoint_dir=tmp_path, checkpoint_every=100, progress=False)
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
    kw = dict(batch_size=128, total_tokens=128 * 60, lr=4e-3, seed=3, checkpoint_every=25,
              progress=False, log_every=5)
    full = TopKSAE(32, 96, 4, dead_tokens=500, seed=1)
    train(full, store, checkpoint_dir=tmp_path / "a", **kw)
    part = TopKSAE(32, 96, 4, dead_tokens=500, seed=1)
    train(part, store, checkpoint_dir=tmp_path / "b", stop_after=37, **kw)  # "crash" at 37
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert ck["step"] == 37
    resumed = TopKSAE(32, 96, 4, dead_tokens=500, seed=99)  # fresh object, other init
    train(resumed, store, checkpoint_dir=tmp_path / "b", resume=True, **kw)
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
        train(sae, store, batch_size=64, total_tokens=640, checkpoint_dir=tmp_path, resume=True,
              progress=False)
    train(sae, store, batch_size=64, total_tokens=640, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(SAEError, match="this run differs"):
        train(TopKSAE(32, 64, 4), store, batch_size=32, total_tokens=640,
              checkpoint_dir=tmp_path, resume=True, progress=False)


def test_store_dimension_mismatch(planted_store):
    store, _, _ = planted_store
    with pytest.raises(SAEError, match="d_in=16"):
        train(TopKSAE(16, 64, 4), store, batch_size=64, total_tokens=640, progress=False)
