"""circuits.stats against hand-computed cases and simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from circuits import stats
from circuits.data.culturebench import LABELS


def test_mcnemar_exact_on_known_table():
    # b = 10 (a right, b wrong), c = 5: p = 2 * P(X <= 5), X ~ Bin(15, 1/2) = 2 * 4944 / 32768
    a = [1] * 10 + [0] * 5 + [1] * 7 + [0] * 3
    b = [0] * 10 + [1] * 5 + [1] * 7 + [0] * 3
    r = stats.mcnemar(a, b)
    assert r.method == "mcnemar-exact" and r.detail == {"b": 10, "c": 5}
    assert r.p_value == pytest.approx(2 * 4944 / 32768)


def test_mcnemar_chi2_with_continuity_correction():
    a = [1] * 30 + [0] * 12 + [1] * 50
    b = [0] * 30 + [1] * 12 + [1] * 50
    r = stats.mcnemar(a, b)
    stat = (abs(30 - 12) - 1) ** 2 / 42
    assert r.method == "mcnemar-chi2" and r.statistic == pytest.approx(stat)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)))  # chi2(1) survival
    assert stats.mcnemar([1, 0], [1, 0]).p_value == 1.0


def test_accuracy_confusion_per_culture_by_hand():
    target = ["ja", "ja", "ja", "ar", "ar", "th"]
    pred = ["ja", "zh", "ja", "ar", "unrecognisable", "th"]
    acc = stats.accuracy(pred, target, groups=None, n_boot=200)
    assert acc.estimate == pytest.approx(4 / 6)
    per = stats.per_culture_accuracy(pred, target, groups=None, n_boot=200)
    assert list(per) == ["ar", "ja", "th"]
    assert per["ja"].estimate == pytest.approx(2 / 3) and per["ar"].estimate == 0.5 and per["th"].estimate == 1
    cm = stats.confusion_matrix(pred, target)
    ja, zh, ar, un = (LABELS.index(x) for x in ("ja", "zh", "ar", "unrecognisable"))
    assert cm[ja, ja] == 2 and cm[ja, zh] == 1 and cm[ar, un] == 1 and cm.sum() == 6
    # indices work like labels
    assert (stats.confusion_matrix([LABELS.index(p) for p in pred], [LABELS.index(t) for t in target]) == cm).all()


def test_bad_inputs_are_named():
    with pytest.raises(stats.StatsError, match=r"pred\[1\] = 'xx' is not one of"):
        stats.correct(["ja", "xx"], ["ja", "ja"])
    with pytest.raises(stats.StatsError, match="differ in length"):
        stats.mcnemar([1, 0], [1])
    with pytest.raises(stats.StatsError, match=r"target\[0\] = 16 is not a label index 0..15"):
        stats.correct(np.array([0]), np.array([16]))


def test_bootstrap_ci_covers_truth_at_stated_rate():
    rng = np.random.default_rng(0)
    truth, n, sims = 0.3, 120, 300
    hits = 0
    for s in range(sims):
        x = rng.random(n) < truth
        ci = stats.bootstrap_ci(x, groups=None, n_boot=400, alpha=0.1, seed=s)
        hits += ci.low <= truth <= ci.high
    # 90 % nominal; 300 simulations give a standard error of ~1.7 points.
    assert 0.84 <= hits / sims <= 0.95


def test_bootstrap_resamples_prompts_not_seeds():
    rng = np.random.default_rng(1)
    per_prompt = (rng.random(50) < 0.6).astype(float)
    seeds = np.repeat(per_prompt, 4)  # 4 seeds per prompt, perfectly correlated
    groups = np.repeat(np.arange(50), 4)
    grouped = stats.bootstrap_ci(seeds, groups=groups, n_boot=2000, seed=3)
    prompt_level = stats.bootstrap_ci(per_prompt, groups=None, n_boot=2000, seed=3)
    assert (grouped.low, grouped.high) == pytest.approx((prompt_level.low, prompt_level.high))
    naive = stats.bootstrap_ci(seeds, groups=None, n_boot=2000, seed=3)
    assert naive.high - naive.low < 0.7 * (grouped.high - grouped.low)


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    b = rng.random(200)
    r = stats.paired_bootstrap(b + 0.2 + 0.05 * rng.standard_normal(200), b, groups=None, n_boot=2000)
    ci = r.detail["ci"]
    assert ci.low < 0.2 < ci.high and r.p_value < 0.01
    same = stats.paired_bootstrap(b, b, groups=None, n_boot=500)
    assert same.statistic == 0 and same.p_value == 1.0


def test_random_controls_by_hand():
    s = stats.random_controls(0.8, [0.1, 0.2, 0.3, 0.9])
    assert s.mean == pytest.approx(0.375) and s.k == 4
    assert s.sd == pytest.approx(np.std([0.1, 0.2, 0.3, 0.9], ddof=1))
    assert s.p_value == pytest.approx((1 + 1) / 5)
    assert stats.random_controls(0.05, [0.1, 0.2], higher_is_better=False).p_value == pytest.approx(1 / 3)
    assert s.p_floor == pytest.approx(1 / 5)


def test_grouping_must_be_stated():
    with pytest.raises(TypeError, match="groups"):
        stats.bootstrap_ci([0.0, 1.0], n_boot=10)
    with pytest.raises(TypeError, match="groups"):
        stats.paired_bootstrap([0.0, 1.0], [1.0, 1.0], n_boot=10)


def test_paired_prompt_test_by_hand_and_grouped():
    # 12 prompts, all better under a: the exact two-sided Wilcoxon p is 2 / 2^12, far below the
    # 1/11 floor of an empirical p from 10 random draws.
    a, b = np.ones(12), np.zeros(12)
    r = stats.paired_prompt_test(a, b, groups=None)
    assert r.p_value == pytest.approx(2 / 2 ** 12) and r.detail["n_prompts"] == 12
    # The same 12 prompts with 2 seeds each: grouped, still 12 prompts (not 24 samples).
    g = stats.paired_prompt_test(np.repeat(a, 2), np.repeat(b, 2), groups=np.repeat(np.arange(12), 2))
    assert g.p_value == pytest.approx(r.p_value) and g.detail["n_prompts"] == 12
    naive = stats.paired_prompt_test(np.repeat(a, 2), np.repeat(b, 2), groups=None)
    assert naive.p_value < g.p_value / 100
    # A prompt whose seeds disagree averages to its mean difference; no difference at all gives p = 1.
    assert stats.group_means([1.0, 0.0, 1.0, 1.0], ["p", "p", "q", "q"]).tolist() == [0.5, 1.0]
    assert stats.paired_prompt_test(a, a, groups=None).p_value == 1.0


def test_plot_confusion_writes_png(tmp_path):
    cm = stats.confusion_matrix(["ja", "zh"], ["ja", "ja"])
    stats.plot_confusion(cm, path=tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000
