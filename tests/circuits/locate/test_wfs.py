"""circuits.locate.wfs / elbow / noun filter / CA math against direct NumPy computations."""

import numpy as np
import pytest
import torch

from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import circuits
from circuits.locate import ca as cam
from circuits.locate.wfs import elbow, elbow_k, noun_filter, select_units, specificity
from interp.errors import CultureLensError


def np_wfs(z, eps, beta):
    n, m = z.shape
    out = np.zeros(m)
    for j in range(m):
        fired = [z[i, j] for i in range(n) if z[i, j] > eps]
        f = len(fired) / n
        mu = sum(fired) / (len(fired) + beta) if (len(fired) + beta) > 0 else 0.0
        out[j] = f * mu
    return out


@settings(max_examples=60, deadline=None)
@given(
    z=arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 9)),
             elements=st.one_of(st.just(0.0), st.floats(-3, 5, allow_nan=False))),
    eps=st.sampled_from([0.0, 0.1, 1.0]),
    beta=st.sampled_from([0.0, 1e-6, 0.5]),
)
def test_wfs_matches_numpy(z, eps, beta):
    got = circuits.wfs(torch.tensor(z), eps=eps, beta=beta).numpy()
    np.testing.assert_allclose(got, np_wfs(z, eps, beta), rtol=1e-10, atol=1e-12)


def test_units_that_never_fire_score_zero_and_beta_role():
    z = torch.tensor([[0.0, 2.0, -1.0], [0.0, 4.0, -2.0]])
    w = circuits.wfs(z, beta=1e-6)
    assert w[0] == 0 and w[2] == 0                     # never fire: 0, not NaN
    assert torch.isfinite(circuits.wfs(z, beta=0.0)).all()
    # beta shrinks the magnitude of rarely firing units: mu = 6 / (2 + beta)
    assert circuits.wfs(z, beta=1.0)[1].item() == pytest.approx(1.0 * 6 / 3)
    assert circuits.wfs(z, beta=0.0)[1].item() == pytest.approx(3.0)


def test_wfs_bad_input():
    with pytest.raises(CultureLensError, match="N, M"):
        circuits.wfs(torch.zeros(3))
    with pytest.raises(CultureLensError, match="row 1, unit 0"):
        circuits.wfs(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))


def realistic_curve(rng, n_peaks, n_tail, n_zero, tail_top=0.25):
    """A sorted WFS curve as an SAE gives it: a few planted peaks (heights 3-10), a long positive
    tail below `tail_top` x the lowest peak decaying over orders of magnitude, many exact zeros."""
    peaks = rng.uniform(3.0, 10.0, n_peaks)
    tail = tail_top * peaks.min() * np.exp(-rng.uniform(0, 7, n_tail)) * rng.uniform(0.5, 1.0, n_tail)
    return np.sort(np.concatenate([peaks, tail, np.zeros(n_zero)]))[::-1].copy()


def chord_elbow(s):
    """The rule decision 6 first named: the point farthest from the chord between the first and
    last points (K = its index below the chord). Kept here only to show why it was replaced."""
    x = np.arange(len(s)) / (len(s) - 1)
    d = x + (s - s[-1]) / (s[0] - s[-1]) - 1
    i = int(np.argmax(np.abs(d)))
    return i + 1 if d[i] > 0 else i


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(100, 800), st.integers(0, 4000), st.integers(0, 2**31 - 1))
def test_elbow_finds_planted_peaks(n_peaks, n_tail, n_zero, seed):
    s = realistic_curve(np.random.default_rng(seed), n_peaks, n_tail, n_zero)
    e = elbow_k(torch.tensor(s), k_min=1, k_max=64)
    assert (e.k, e.source, e.raw) == (n_peaks, "elbow", n_peaks), (e, s[: n_peaks + 3])
    assert e.n_positive == n_peaks + n_tail and e.drop >= 4 * 0.999
    # The zeros do not move it: the same curve without them gives the same K.
    assert elbow(torch.tensor(s[s > 0])) == n_peaks


def test_chord_rules_fail_on_such_curves():
    """Why not the chord: over the whole curve its farthest point sits where the curve reaches
    zero; over the positive part it finds the tail's own bend. Measured on 200 curves."""
    rng = np.random.default_rng(0)
    whole = positive = ours = 0
    for _ in range(200):
        n = int(rng.integers(1, 13))
        s = realistic_curve(rng, n, int(rng.integers(100, 800)), int(rng.integers(1000, 4000)))
        whole += chord_elbow(s) == n
        positive += chord_elbow(s[s > 0]) == n
        ours += elbow(torch.tensor(s)) == n
    assert ours == 200 and whole < 20 and positive < 100, (whole, positive)


def test_elbow_k_sources():
    rng = np.random.default_rng(1)
    many = realistic_curve(rng, 90, 400, 1000)          # 90 peaks: the drop lies past the cap
    e = elbow_k(torch.tensor(many), k_max=64)
    assert (e.k, e.source, e.raw) == (64, "cap", 90)
    e = elbow_k(torch.tensor(realistic_curve(rng, 2, 100, 50)), k_min=5, k_max=64)
    assert (e.k, e.source, e.raw) == (5, "floor", 2)
    # a smooth decay (every consecutive ratio < 2) has no elbow: K is the cap
    smooth = torch.tensor(10.0 * 0.97 ** np.arange(300.0))
    e = elbow_k(smooth, k_max=64)
    assert (e.k, e.source) == (64, "flat") and e.drop == pytest.approx(1 / 0.97)
    # ... and a lower min_drop lets a 1.5x step decide
    stepped = torch.tensor([8.0, 7.5, 7.0, 4.5, 4.2, 4.0] + [3.9 * 0.99 ** i for i in range(200)])
    assert elbow_k(stepped, min_drop=2.0).source == "flat"
    assert elbow_k(stepped, min_drop=1.5).to_json() == {"k": 3, "source": "elbow", "raw": 3,
                                                        "drop": pytest.approx(7 / 4.5), "n_positive": 206}
    assert elbow_k(torch.tensor([2.0] * 5 + [0.0] * 9)).to_json() == {"k": 5, "source": "flat", "raw": 1,
                                                                       "drop": 1.0, "n_positive": 5}
    assert elbow_k(torch.tensor([3.0, 0.0])).to_json() == {"k": 1, "source": "flat", "raw": None, "drop": None,
                                                           "n_positive": 1}
    assert elbow_k(torch.zeros(7)).to_json() == {"k": 0, "source": "none", "raw": None, "drop": None, "n_positive": 0}
    # the noisy bottom of a short positive curve (0.004 -> 0.0005) is not the elbow; the peaks are
    bottom = torch.tensor([9.0, 8.5, 8.0, 2.0, 1.8, 1.5, 1.2, 0.9, 0.5, 0.2, 0.03, 0.004, 0.0005, 0.0])
    assert elbow_k(bottom).to_json() == {"k": 3, "source": "elbow", "raw": 3, "drop": 4.0, "n_positive": 13}
    assert elbow_k(bottom, floor=0.0).raw == 12           # without the floor, 0.004 / 0.0005 would win
    # the drop to zero is not a drop: only positive scores are compared
    assert elbow_k(torch.tensor([5.0, 4.9, 4.8, 0.0, 0.0])).source == "flat"


def test_elbow_bad_input():
    with pytest.raises(CultureLensError, match="rank 1 exceeds rank 0"):
        elbow(torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(CultureLensError, match="empty"):
        elbow(torch.tensor([]))
    with pytest.raises(CultureLensError, match="non-finite score at rank 1"):
        elbow(torch.tensor([1.0, float("nan")]))
    with pytest.raises(CultureLensError, match="k_min <= k_max"):
        elbow(torch.tensor([3.0, 2.0, 1.0]), k_min=3, k_max=2)
    with pytest.raises(CultureLensError, match="floor must be in"):
        elbow_k(torch.tensor([3.0, 2.0, 1.0]), floor=1.0)
    with pytest.raises(CultureLensError, match="min_drop must be > 1"):
        elbow(torch.tensor([3.0, 2.0, 1.0]), min_drop=1.0)


def test_select_units_reports_k_source_and_ignores_zeros():
    rng = np.random.default_rng(2)
    s = realistic_curve(rng, 3, 200, 2000)
    perm = torch.from_numpy(rng.permutation(len(s)))
    wc = torch.tensor(s)[perm]                       # unsorted, as WFS comes
    sel = select_units(wc, torch.zeros_like(wc), k_max=64)
    assert (sel.k, sel.k_source) == (3, "elbow")
    assert sorted(sel.kept.tolist()) == (perm < 3).nonzero().flatten().tolist()     # the 3 planted peaks
    fixed = select_units(wc, torch.zeros_like(wc), k=5)
    assert (fixed.k, fixed.k_source, len(fixed.kept)) == (5, "given", 5)


def test_specificity_against_a_loop():
    w = torch.tensor([[3.0, 1.0, 0.0, 2.0], [2.0, 2.0, 0.0, 2.0], [0.0, 0.5, 1.0, 0.0]])
    want = torch.empty_like(w)
    for a in range(3):
        for m in range(4):
            want[a, m] = w[a, m] - max(w[b, m] for b in range(3) if b != a)
    assert torch.equal(specificity(w).float(), want)
    # a shared unit (unit 3: equal in two cultures) is specific to neither
    assert specificity(w)[0, 3] == 0 and specificity(w)[1, 3] == 0
    with pytest.raises(CultureLensError, match="cultures >= 2"):
        specificity(w[:1])


def test_select_units_specific_ranking_skips_shared_units():
    wc = torch.tensor([9.0, 8.0, 0.5, 0.4, 0.0, 0.0])     # units 0, 1 top WFS ...
    other = torch.tensor([9.0, 1.0, 0.1, 0.0, 0.0, 0.0])   # ... but unit 0 fires as hard for another culture
    spec = specificity(torch.stack([wc, other]))[0]
    sel = select_units(wc, torch.zeros_like(wc), rank_score=spec, k_max=64)
    assert 0 not in sel.kept.tolist() and sel.kept.tolist()[0] == 1


def test_noun_filter_and_selection():
    wc = torch.tensor([5.0, 4.0, 0.0, 3.0, 0.1])
    wn = torch.tensor([0.0, 2.0, 1.0, 1.4, 0.0])
    assert noun_filter(wc, wn, 0.5).tolist() == [True, False, False, True, True]
    sel = select_units(wc, wn, k=3, rho=0.5)
    assert sel.kept.tolist() == [0, 3] and sel.dropped.tolist() == [1]


def np_ca(p, q, k):
    a = p.mean(1)  # heads
    out = []
    for b in range(a.shape[0]):
        qs, ks = np.nonzero(q[b])[0], np.nonzero(k[b])[0]
        if len(qs) == 0 or len(ks) == 0:
            out.append(0.0)
            continue
        out.append(sum(a[b, t, u] for t in qs for u in ks) / (len(qs) * len(ks)))
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(2, 8), st.integers(0, 10_000))
def test_block_ca_matches_numpy(b, h, s, seed):
    rng = np.random.default_rng(seed)
    p = rng.random((b, h, s, s))
    p /= p.sum(-1, keepdims=True)
    q = (rng.random((b, s)) < 0.4).astype(float)
    k = (rng.random((b, s)) < 0.4).astype(float)
    got = cam.block_ca(torch.tensor(p), torch.tensor(q), torch.tensor(k)).numpy()
    np.testing.assert_allclose(got, np_ca(p, q, k), rtol=1e-10)


def test_block_allowed_causal():
    mod = cam.indicator([[1]], 4)
    noun = cam.indicator([[3]], 4)
    assert not cam.block_allowed(mod, noun, causal=True).item()   # modifier precedes noun
    assert cam.block_allowed(noun, mod, causal=True).item()
    assert cam.block_allowed(mod, noun, causal=False).item()
    with pytest.raises(CultureLensError, match="prompt 0: position 9"):
        cam.indicator([[9]], 4)


def test_neighbour_excess():
    v = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(cam.neighbour_excess(v).numpy(), [-1.0, 1.0, -0.75, 0.25, 0.0])
