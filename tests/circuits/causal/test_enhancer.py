"""Enhancer gradients on the other latent-space families; SAE-basis amplification and masking."""

import pytest
import torch


import circuits  # noqa: E402
import interp  # noqa: E402
from circuits.causal.enhancer import denoising_loss, to_model_space, unet_conditioning  # noqa: E402


@pytest.mark.parametrize("family", ["sdxl", "altdiffusion"])
def test_enhancer_gradient_reaches_w2(family):
    m = interp.tiny(family)
    enh = circuits.LayerEnhancer("text.blocks.0.hook_resid_post", m.encoders["text"].d_model)
    with interp.intervene(m, [enh]):
        cond = unet_conditioning(m, ["a box"])
        loss = denoising_loss(m, to_model_space(m, torch.rand(1, 3, 16, 16) * 2 - 1), cond,
                              torch.Generator().manual_seed(0))
    loss.backward()
    # W2 starts at zero, so only W2 (not W1) gets a gradient on the first step.
    assert enh.W2.weight.grad.abs().sum() > 0 and torch.isfinite(loss)
    if family == "sdxl":
        assert set(cond["added_cond_kwargs"]) == {"text_embeds", "time_ids"}


def test_sae_units_amplify_zero_is_identity_and_mask_zeroes():
    import sae

    m = interp.tiny("sd")
    site = "text.blocks.1.hook_resid_post"
    s = sae.TopKSAE(m.encoders["text"].d_model, d_sae=64, k=4, seed=1)
    units = circuits.CultureUnits(circuits.sae_basis(s, site),
                                  {"ja": circuits.CultureUnitSet("ja", [3, 5, 9], [1.0, 0.5, 0.2], 3, [])}, {})
    x = interp.capture(m, ["a Japanese-style box"], sites=[site])[site]
    assert torch.equal(circuits.amplify(units, 0.0, culture="ja").apply(x), x)
    masked = circuits.scale_units(units.basis, [3, 5, 9], -1.0).apply(x)
    z0 = s.encode(x.reshape(-1, x.shape[-1]))
    # Masking removes exactly the decoded contribution of those latents (error kept).
    expect = x.reshape(-1, x.shape[-1]) - z0[:, [3, 5, 9]] @ s.W_dec[[3, 5, 9]]
    torch.testing.assert_close(masked.reshape(-1, x.shape[-1]), expect, rtol=1e-5, atol=1e-5)
    g0 = interp.generate(m, ["a box"], seed=1)
    g1 = interp.generate(m, ["a box"], seed=1, interventions=[circuits.amplify(units, 0.0, language="ja")])
    assert torch.equal(g0.latents, g1.latents)
    r = circuits.amplify(units, 2.0, culture="ja", random_seed=0)
    assert len(r.latents) == 3 and not set(r.latents.tolist()) & {3, 5, 9}


def test_enhancer_site_is_parsed_as_a_text_block_site():
    assert circuits.LayerEnhancer("text_2.blocks.1.hook_resid_post", 8).layer == 1
    # names with ".blocks." and the right hook that are no text block site are refused
    for bad in ("transformer.blocks.0.hook_resid_post", "text.blocks.x.hook_resid_post", "text.blocks.0.mlp.hook_post"):
        with pytest.raises(interp.CultureLensError, match="site must be a text"):
            circuits.LayerEnhancer(bad, 8)
