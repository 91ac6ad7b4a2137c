"""Properties of the Top-K SAE: sparsity, unit-norm decoder, sparse = dense decode, AuxK."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae.model import TopKSAE
from sae.train import train_step

dims = st.tuples(st.integers(2, 24), st.integers(8, 96), st.integers(1, 8), st.integers(1, 20),
                 st.integers(0, 2**16))


@settings(max_examples=15, deadline=None)
@given(dims)
def test_exactly_k_active_per_row_and_sparse_equals_dense(p):
    d_in, d_sae, k, n, seed = p
    k = min(k, d_sae)
    sae = TopKSAE(d_in, d_sae, k, seed=seed).double()
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # all pre-activations positive: exactly k values survive ReLU
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = sae.encode(x)
    assert ((z != 0).sum(1) == k).all()
    codes, _ = sae.encode_sparse(x)
    torch.testing.assert_close(sae.decode_sparse(codes), sae.decode(z), rtol=0, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(dims)
def test_at_most_k_active_with_relu(p):
    d_in, d_sae, k, n, seed = p
    k = min(k, d_sae)
    sae = TopKSAE(d_in, d_sae, k, seed=seed)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed + 1))
    z = sae.encode(x)
    assert ((z != 0).sum(1) <= k).all() and (z >= 0).all()
    # the nonzeros are the largest pre-activations
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    kth = pre.topk(k, dim=1).values[:, -1:]
    assert (pre[z > 0] >= kth.expand_as(pre)[z > 0]).all()


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 1000), st.floats(1e-4, 1e-1))
def test_decoder_rows_unit_norm_after_every_step(seed, lr):
    sae = TopKSAE(12, 48, 4, dead_tokens=8, seed=seed)
    opt = torch.optim.AdamW(sae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        train_step(sae, opt, torch.randn(32, 12, generator=g) * 3, aux_coef=1 / 32)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48), rtol=0, atol=1e-5)


def test_parallel_gradient_component_removed():
    sae = TopKSAE(8, 16, 2, seed=0)
    sae.W_dec.grad = torch.randn(16, 8)
    sae.remove_parallel_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6


def test_encoder_gradient_matches_dense_autograd():
    torch.manual_seed(0)
    sae = TopKSAE(10, 40, 3, k_aux=5, seed=3).double()
    x = torch.randn(7, 10, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::2] = True
    codes, aux = sae.encode_sparse(x, dead)
    loss = sae.decode_sparse(codes).pow(2).sum() + sae.decode_sparse(aux, bias=False).sin().sum()
    loss.backward()
    ours = [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    # dense reference with the same selection
    W_enc, b_enc, W_dec, b_dec = (p.detach().clone().requires_grad_()
                                  for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    pre = (x - b_dec) @ W_enc + b_enc
    z = torch.zeros_like(pre).scatter(1, codes.indices, pre.gather(1, codes.indices).clamp_min(0))
    aux_vals = pre.gather(1, aux.indices)
    aux_vals.register_hook(lambda g: g.clamp_max(0))  # AuxK only raises dead latents' values
    za = torch.zeros_like(pre).scatter(1, aux.indices, aux_vals)
    ref = (z @ W_dec + b_dec).pow(2).sum() + (za @ W_dec).sin().sum()
    ref.backward()
    for a, b in zip(ours, (W_enc.grad, b_enc.grad, W_dec.grad, b_dec.grad)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert set(aux.indices.flatten().tolist()) <= set(dead.nonzero().flatten().tolist())


def test_auxk_zero_when_nothing_dead():
    sae = TopKSAE(16, 64, 4, dead_tokens=10**9, seed=0)
    opt = torch.optim.AdamW(sae.parameters(), lr=1e-3)
    st_ = train_step(sae, opt, torch.randn(64, 16), aux_coef=1 / 32)
    assert st_.aux == 0.0 and st_.dead == 0.0


def test_auxk_revives_planted_dead_latents():
    """Latents whose encoder points away from the data never fire; AuxK alone (α large,
    main loss already met) must bring them back into the top-k."""
    torch.manual_seed(0)
    d_in, d_sae, k = 16, 64, 4
    x = torch.randn(2048, d_in)
    sae = TopKSAE(d_in, d_sae, k, k_aux=8, dead_tokens=256, seed=1)
    planted = torch.arange(48, 64)
    with torch.no_grad():
        sae.b_enc[planted] = -3.0  # planted dead: can never win the top-k
        sae.tokens_since_fired[planted] = 10**6
    def fired(s):
        z = s.encode(x)
        return (z[:, planted] > 0).any(0).float().mean().item()
    assert fired(sae) == 0.0
    import copy
    without = copy.deepcopy(sae)
    for model, coef in ((sae, 1.0), (without, 0.0)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for i in range(200):
            train_step(model, opt, x[(i * 128) % 2048:][:128], aux_coef=coef)
    assert fired(without) == 0.0
    assert fired(sae) >= 0.9
