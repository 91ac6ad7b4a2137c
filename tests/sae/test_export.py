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


def _saelens_forward(folder, x):
    """SAELens 6's TopKSAE forward, written from its source (saes/topk_sae.py, saes/sae.py),
    reading only the files: sae_in = x − b_dec; pre = sae_in·W_enc + b_enc (× ‖W_dec rows‖ if
    rescale_acts_by_decoder_norm); z = ReLU(top-k(pre)); out = (z / ‖W_dec‖ if rescale)·W_dec + b_dec.
    Returns (z, out)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = {k: v.double() for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
    x = x.double()
    sae_in = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    n = w["W_dec"].norm(dim=-1)
    if cfg["rescale_acts_by_decoder_norm"]:
        pre = pre * n
    top = pre.topk(cfg["k"], dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    zd = z / n if cfg["rescale_acts_by_decoder_norm"] else z
    return z, zd @ w["W_dec"] + w["b_dec"]


def _saelens6_reads_as_v6(cfg):
    """SAELens 6's handle_config_defaulting: no (metadata.)sae_lens_version, or one < 6.0.0-rc.0,
    sends the cfg through handle_pre_6_0_config, which rebuilds metadata from top-level keys."""
    from packaging.version import Version

    v = cfg.get("sae_lens_version") or cfg.get("metadata", {}).get("sae_lens_version")
    return bool(v) and Version(v) >= Version("6.0.0-rc.0")


def test_files_follow_saelens6_rules(sae, tmp_path):
    save_saelens(sae, tmp_path, hook_name=SITE, model_name="tiny-sd", prompts_fingerprint="abc")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert _saelens6_reads_as_v6(cfg)  # else hook_name and model_name are dropped on load
    assert cfg["architecture"] == "topk" and isinstance(cfg["k"], int)
    # every TopKSAEConfig field, with values SAELens accepts
    assert cfg["dtype"] in ("float32", "float64", "float16", "bfloat16")
    assert cfg["normalize_activations"] in ("none", "expected_average_only_in",
                                            "constant_norm_rescale", "layer_norm")
    assert cfg["reshape_activations"] in ("none", "hook_z")
    assert isinstance(cfg["rescale_acts_by_decoder_norm"], bool)
    assert {"d_in", "d_sae", "device", "apply_b_dec_to_input", "metadata"} <= set(cfg)
    md = cfg["metadata"]
    assert (md["hook_name"], md["model_name"], md["prompts_fingerprint"]) == (SITE, "tiny-sd", "abc")
    # what SAELens computes from these files is what our SAE computes
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    z, out = _saelens_forward(tmp_path, x)
    torch.testing.assert_close(sae.encode(x).double(), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).double(), out, rtol=1e-5, atol=1e-5)


def _write_saelens_topk(folder, W_enc, b_enc, W_dec, b_dec, k, rescale):
    """A cfg/weights pair shaped like SAELens 6.54's TopK output."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(),
               "b_dec": b_dec}, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": W_enc.shape[0], "d_sae": W_enc.shape[1], "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.0", "sae_lens_training_version": "6.54.0",
                        "model_name": "m", "hook_name": SITE},
           "k": k, "rescale_acts_by_decoder_norm": rescale, "architecture": "topk"}
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("spread", [2e-7, 0.5])
def test_load_saelens_rescale_by_decoder_norm(tmp_path, spread):
    """SAELens 6.54 writes rescale_acts_by_decoder_norm: true with rows unit to ~2e-7; rows
    off by a lot are folded as well, and both load to SAELens's own forward."""
    g = torch.Generator().manual_seed(1)
    d_in, d_sae, k = 12, 48, 5
    W_dec = torch.randn(d_sae, d_in, generator=g)
    norms = 1 + spread * (2 * torch.rand(d_sae, 1, generator=g) - 1)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * norms
    W_enc = torch.randn(d_in, d_sae, generator=g) * 0.3
    b_enc, b_dec = torch.randn(d_sae, generator=g) * 0.1, torch.randn(d_in, generator=g)
    _write_saelens_topk(tmp_path, W_enc, b_enc, W_dec, b_dec, k, True)
    sae = load_saelens(tmp_path)
    x = torch.randn(64, d_in, generator=g) * 2
    z, out = _saelens_forward(tmp_path, x)
    torch.testing.assert_close(sae.encode(x).double(), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).double(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(d_sae), rtol=0, atol=1e-6)
    if spread > 0.1:  # the rescale matters here: ignoring it changes the output
        _write_saelens_topk(tmp_path / "plain", W_enc, b_enc, W_dec, b_dec, k, False)
        assert not torch.allclose(load_saelens(tmp_path / "plain")(x), sae(x), atol=1e-3)


def test_load_saelens_rescale_refuses_zero_row(tmp_path):
    W_dec = torch.randn(48, 12)
    W_dec[7] = 0
    _write_saelens_topk(tmp_path, torch.randn(12, 48), torch.zeros(48), W_dec, torch.zeros(12), 4, True)
    with pytest.raises(SAEError, match="decoder row 7 has norm 0.0; 1 rows cannot be folded \\(max norm deviation"):
        load_saelens(tmp_path)


def test_real_saelens_reads_our_files(sae, tmp_path):
    """With CULTURELENS_SAELENS_PYTHON naming an interpreter that has sae-lens, load our folder
    with SAELens itself and compare hook name, model name and outputs."""
    import os
    import subprocess

    py = os.environ.get("CULTURELENS_SAELENS_PYTHON")
    if not py:
        pytest.skip("CULTURELENS_SAELENS_PYTHON not set (an interpreter with sae-lens installed)")
    save_saelens(sae, tmp_path / "sae", hook_name=SITE, model_name="tiny-sd")
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    code = ("import json,sys,torch\nfrom sae_lens import SAE\n"
            "s=SAE.load_from_disk(sys.argv[1])\nx=torch.load(sys.argv[2])\n"
            "torch.save(s(x).detach(), sys.argv[3])\n"
            "print(json.dumps({'hook':s.cfg.metadata.hook_name,'model':s.cfg.metadata.model_name}))")
    r = subprocess.run([py, "-c", code, str(tmp_path / "sae"), str(tmp_path / "x.pt"),
                        str(tmp_path / "y.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"hook": SITE, "model": "tiny-sd"}
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), sae(x).detach(), rtol=1e-5, atol=1e-5)


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


def test_export_features_command(sae, tmp_path, capsys):
    """culturelens export-features: an SAE folder + latents -> export_features' files, site from
    the SAE's hook_name; bad latents are one-line errors."""
    from circuits.cli import main

    save_saelens(sae, tmp_path / "sae", hook_name=SITE)
    out = tmp_path / "feats"
    assert main(["export-features", "--sae", str(tmp_path / "sae"), "--latents", "5", "2",
                 "--labels", "ja", "ko", "--out", str(out)]) == 0
    t = load_file(str(out / "features.safetensors"))
    assert t["latents"].tolist() == [5, 2]
    torch.testing.assert_close(t["vectors"], sae.W_dec.detach()[[5, 2]])
    recs = json.loads((out / "features.json").read_text())
    assert recs["site"] == SITE and [f["label"] for f in recs["features"]] == ["ja", "ko"]
    assert "features.json" in capsys.readouterr().out
    assert main(["export-features", "--sae", str(tmp_path / "sae"), "--latents", "64", "--out", str(out)]) == 1
    assert "out of range: [64]" in capsys.readouterr().err
