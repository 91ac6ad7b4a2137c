"""Feature maps: a direction planted at known pixels is found by an SAE trained on a denoiser
store, and its latent's map lights those pixels; maps on UNet and MMDiT families; round trip."""

from __future__ import annotations

import pytest
import torch

from families import tiny_family
from interp.interventions import Intervention
from sae import ActivationStore, FeatureMaps, SAEError, TopKSAE, TrainConfig, feature_maps, train

SITE = "unet.down.0.attn.0.attn2.hook_out"  # [B, 64 pixels (8 × 8), 16 channels]
PLANTED = [r * 8 + c for r in (1, 2, 3) for c in (5, 6)]  # a 3 × 2 block, top right
PROMPTS = [f"a {c} {n}" for c in ("red", "old", "big", "blue") for n in ("cat", "dog", "box")]


def _direction() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(16, generator=g)
    return u / u.norm()


class Plant(Intervention):
    """Adds `scale` · u at the planted pixels (the engine restricts it to `positions`)."""

    def __init__(self, scale: float = 3.0):  # ~3× the site's mean activation norm (~1)
        self.site, self.positions, self.scale, self.u = SITE, PLANTED, scale, _direction()

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return act + self.scale * self.u.to(act.dtype)


@pytest.fixture(scope="module")
def planted(tiny_sd, tmp_path_factory):
    store = ActivationStore.build(tiny_sd, PROMPTS, SITE, tmp_path_factory.mktemp("planted"), batch_size=6,
                                  seeds=[0, 1], interventions=[Plant()], shard_tokens=1024, progress=False)
    sae = TopKSAE(16, 32, 4, seed=0, dead_tokens=2 * store.n_tokens)
    train(sae, store, TrainConfig(batch_size=128, total_tokens=128 * 300, lr=3e-3), progress=False)
    return store, sae


def test_planted_feature_is_found_and_its_map_lights_the_planted_pixels(tiny_sd, planted):
    _, sae = planted
    cos = sae.W_dec.detach() @ _direction()
    j = int(cos.argmax())
    assert float(cos[j]) > 0.7  # a latent's decoder row points along the planted direction
    # a prompt and seed the SAE never saw, with the direction planted again
    fm = feature_maps(tiny_sd, sae, SITE, "a green hat", [j], seed=11, interventions=[Plant()])
    raw = fm.raw.mean(0)[0].flatten()  # [64] on the site's own 8 × 8 grid
    inside = torch.zeros(64, dtype=torch.bool)
    inside[PLANTED] = True
    assert float(raw[inside].min()) > 0 and float(raw[inside].mean()) > 20 * float(raw[~inside].mean())
    # at image resolution (16 × 16, 2 pixels per site position) the peak is in the planted block
    r, c = divmod(int(fm.total[0].flatten().argmax()), 16)
    assert 2 <= r < 8 and 10 <= c < 14
    # without the plant the latent stays (almost) silent
    off = feature_maps(tiny_sd, sae, SITE, "a green hat", [j], seed=11)
    assert float(off.raw.sum()) < 0.1 * float(fm.raw.sum())


def test_per_step_shapes_round_trip_table_and_plot(tiny_sd, planted, tmp_path):
    _, sae = planted
    fm = feature_maps(tiny_sd, sae, SITE, "a cat", [0, 5, 7], seed=2, steps=[1])
    assert fm.steps == [1] and fm.per_step.shape == (1, 3, 16, 16) and fm.raw.shape == (1, 3, 8, 8)
    torch.testing.assert_close(fm.total, fm.per_step.mean(0))
    assert fm.image.shape == (16, 16, 3) and fm.image.dtype == torch.uint8
    both = feature_maps(tiny_sd, sae, SITE, "a cat", [0, 5, 7], seed=2)
    assert both.steps == [0, 1] and torch.equal(both.per_step[1], fm.per_step[0])
    back = FeatureMaps.load(fm.save(tmp_path / "fm"))
    assert back.latents == fm.latents and torch.equal(back.total, fm.total) and back.meta == fm.meta
    md = both.to_markdown()
    assert "| latent |" in md and md.count("\n| ") >= 4
    fig = both.plot(tmp_path / "fm.png", steps=[0, 1])
    assert (tmp_path / "fm.png").stat().st_size > 0 and len(fig.axes) == 4 * 3
    assert torch.equal(both[5], both.total[1])
    with pytest.raises(SAEError, match="no map for latent 9"):
        both[9]
    with pytest.raises(SAEError, match="outside|0..31"):
        feature_maps(tiny_sd, sae, SITE, "a cat", [32])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_mmdit_image_stream_and_joint_attention_maps(request, family):
    model = tiny_family(request, family)
    img = [s for s in model.sites() if s.endswith("hook_img_out")][0]
    z = [s for s in model.sites() if s.startswith("transformer.") and s.endswith("attn.hook_z")][0]
    n_img = len(model.joint_positions()["image"])
    side = int(n_img ** 0.5)
    fm = feature_maps(model, TopKSAE(16, 8, 2, seed=0), img, "a cat", [0, 1], seed=0)
    assert fm.raw.shape == (2, 2, side, side) and fm.total.shape == (2, 16, 16)
    # joint attention: only the image part of the joint sequence becomes the map (one head here)
    d_head = model.denoiser.config.attention_head_dim
    fz = feature_maps(model, TopKSAE(d_head, 8, 2, seed=0), z, "a cat", [3], head=0)
    assert fz.raw.shape == (2, 1, side, side)
    txt = [s for s in model.sites() if s.endswith("hook_txt_out")][0]
    with pytest.raises(SAEError, match="text tokens"):
        feature_maps(model, TopKSAE(16, 8, 2, seed=0), txt, "a cat", [0])
