"""circuits.wfs / elbow / noun filter / CA math against direct NumPy computations."""

import numpy as np
import pytest
import torch

from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import circuits
from circuits import ca as cam
from circuits.wfs import elbow, noun_filter, select_units
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


def np_elbow(s):
    n = len(s)
    x = np.arange(n) / (n - 1)
    y = (s - s[-1]) / (s[0] - s[-1])
    # signed distance to the line through (0,1),(1,0)
    d = (x + y - 1) / np.sqrt(2)
    i = int(np.argmax(np.abs(d)))
    return max(1, i + 1 if d[i] > 0 else i)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(3, 40), elements=st.floats(0, 10, allow_nan=False)))
def test_elbow_farthest_from_chord(v):
    s = np.sort(v)[::-1].copy()
    if s[0] - s[-1] <= 0:
        assert elbow(torch.tensor(s)) == 1
        return
    assert elbow(torch.tensor(s)) == np_elbow(s)


def test_elbow_plateau_and_bounds():
    s = torch.tensor([10.0, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.0])
    assert elbow(s) == 3
    # convex "L" (drop, then a long flat tail): K = the units before the drop
    assert elbow(torch.tensor([5.0, 4.6, 4.3] + [0.3] * 30 + [0.0])) == 3
    assert elbow(s, k_max=2) == 2 and elbow(s, k_min=5) == 5
    with pytest.raises(CultureLensError, match="descending"):
        elbow(torch.tensor([1.0, 2.0, 0.0]))


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
