"""The CultureWorld judge: interface, junk generator, and (when built) the shipped judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.organism.judge import JUDGE_STYLES, JUNK, CultureWorldJudge, JudgeNet, clean_accuracy, junk_batch, junk_rejection, train_judge
from circuits.organism.render import render
from circuits.organism.shipped import JUDGE
from circuits.data.culturebench import LABELS
from circuits.data.judges.base import JudgeError

SHIPPED = JUDGE


def test_judge_interface_folds_neutral_and_junk(tmp_path):
    torch.manual_seed(0)
    judge = CultureWorldJudge(JudgeNet(8))
    from PIL import Image

    ims = [Image.fromarray(render("box", s, np.random.default_rng(0))) for s in ("ja", "neutral")]
    probs = judge(ims)
    assert probs.shape == (2, len(LABELS)) and torch.allclose(probs.sum(1), torch.ones(2))
    full = judge.predict_full(ims)
    ps = full["style_probs"]
    assert ps.shape == (2, len(JUDGE_STYLES))
    assert torch.allclose(probs[:, -1], ps[:, JUDGE_STYLES.index("neutral")] + ps[:, JUDGE_STYLES.index(JUNK)])
    judge.save(tmp_path)
    again = CultureWorldJudge.load(tmp_path)
    assert torch.allclose(again(ims), probs)
    with pytest.raises(JudgeError, match="not a CultureWorld judge"):
        CultureWorldJudge.load(tmp_path / "missing")
    with pytest.raises(JudgeError, match="shape"):
        judge.predict_tensor(torch.zeros(2, 3, 16, 16))


def test_junk_is_seeded_in_range_and_not_a_clean_render():
    a, b = junk_batch(np.random.default_rng(0), 24), junk_batch(np.random.default_rng(0), 24)
    assert a.shape == (24, 3, 32, 32) and np.array_equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert len({x.tobytes() for x in a}) == 24


@pytest.mark.skipif(not SHIPPED.exists(), reason="the organism has not been built (culturelens organism-build)")
def test_shipped_judge_accuracy():
    judge = CultureWorldJudge.load(SHIPPED)
    acc = clean_accuracy(judge, per_cell=3, seed=99)
    assert acc["culture_acc"] >= 0.98 and acc["noun_acc"] >= 0.98 and acc["neutral_acc"] >= 0.95
    assert junk_rejection(judge, n=200, seed=5)["unrecognisable"] >= 0.8


def test_train_judge_progress_false_draws_no_bar(capfd):
    """progress=False silences every bar of the call, the pool's "judge data" bar included."""
    train_judge(train_steps=2, batch=8, pool=512, width=4, progress=False)
    assert capfd.readouterr().err == ""
    train_judge(train_steps=2, batch=8, pool=512, width=4)
    err = capfd.readouterr().err
    assert "judge data" in err and "judge" in err
