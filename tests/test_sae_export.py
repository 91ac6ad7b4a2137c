"""SAELens round trip, refusal of ambiguous cfgs, feature export, Steer on raw tensors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sae import SAEError, Steer, TopKSAE, export_features, load_saelens, save_saelens, splice

SITE = "text.blocks.1.hook_resid_post"


@pytest.fixture
def sae():
    s = TopKSAE(16, 64, 4, seed=2)
    with torch.no_grad():
        s.b_enc.normal_(0, 0.1)
        s.b_dec.normal_(0, 0.1)
    return s


def test_saelens_round_trip(sae, tmp_path):
    save_saelens(sae, tmp_path, hook_name=SITE, model_name="tiny-sd")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (16, 64, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == SITE and cfg["metadata"]["model_name"] == "tiny-sd"
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {
        "W_enc": (16, 64), "b_enc": (64,), "W_dec": (64, 16), "b_dec": (16,)}
    back = load_saelens(tmp_path)
    x = torch.randn(50, 16)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))
    assert back.saelens_cfg["metadata"]["hook_name"] == SITE


@pytest.mark.parametrize("key", ["architecture", "k"])
def test_load_refuses_missing_key(sae, tmp_path, key):
    save_saelens(sae, tmp_path, hook_name=SITE)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg[key]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match=f"no '{key}' field"):
        load_saelens(tmp_path)


def test_load_refuses_wrong_shapes_and_arch(sae, tmp_path):
    save_saelens(sae, tmp_path, hook_name=SITE)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 65}))
    with pytest.raises(SAEError, match="W_enc is \\(16, 64\\), cfg implies \\(16, 65\\)"):
        load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "jumprelu"}))
    with pytest.raises(SAEError, match="only 'topk'"):
        load_saelens(tmp_path)


def test_export_features(sae, tmp_path):
    export_features(sae, [3, 7], ["ja", "de"], tmp_path, scores=[0.9, 0.5], site=SITE)
    t = load_file(str(tmp_path / "features.safetensors"))
    assert torch.equal(t["vectors"], sae.W_dec.detach()[[3, 7]])
    meta = json.loads((tmp_path / "features.json").read_text())
    assert [f["label"] for f in meta["features"]] == ["ja", "de"]
    assert meta["features"][1] == {"row": 1, "latent": 7, "label": "de", "score": 0.5}
    with pytest.raises(SAEError, match="unit index 1 is latent 64"):
        export_features(sae, [3, 64], ["a", "b"], tmp_path)
    with pytest.raises(SAEError, match="lengths must match"):
        export_features(sae, [3], ["a", "b"], tmp_path)


def test_steer_lambda_zero_is_identity_and_scaling_is_exact(sae):
    act = torch.randn(2, 5, 16, dtype=torch.float16)
    latents = [0, 5, 9, 33]
    assert torch.equal(Steer(sae, SITE, latents, 0.0).apply(act), act)
    assert torch.equal(splice(sae, SITE, keep_error=True).apply(act), act)
    x = torch.randn(2, 5, 16)
    assert torch.equal(splice(sae, SITE).apply(x), sae(x))
    # λ scaling adds λ·z_j·W_dec[j] for active latents, nothing for inactive ones
    z = sae.encode(x)
    j = int(z.reshape(-1, 64).ne(0).sum(0).argmax())
    out = Steer(sae, SITE, [j], 2.0).apply(x)
    expect = x + 2.0 * z[..., j:j + 1] * sae.W_dec[j]
    torch.testing.assert_close(out, expect.detach(), rtol=0, atol=1e-5)
    # keep_error=False: the steered reconstruction, i.e. decode of the edited code
    z2 = z.clone()
    z2[..., j] *= 3.0
    torch.testing.assert_close(Steer(sae, SITE, [j], 2.0, keep_error=False).apply(x),
                               sae.decode(z2).detach(), rtol=0, atol=1e-5)
    # set mode writes the value even where the latent was off
    set_out = Steer(sae, SITE, [j], value=4.0).apply(x)
    torch.testing.assert_close(set_out, (x + (4.0 - z[..., j:j + 1]) * sae.W_dec[j]).detach(),
                               rtol=0, atol=1e-5)
    with pytest.raises(SAEError, match="latents \\[64\\]"):
        Steer(sae, SITE, [64], 1.0)
    with pytest.raises(SAEError, match="last dim 8"):
        Steer(sae, SITE, [1], 1.0).apply(torch.randn(3, 8))
