"""Fidelity metrics: CLIPScore conventions, LPIPS from local weights, diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interp import fidelity
from interp.images import image_embeds, load_clip, text_embeds
from tiny_hf import build_tiny_clip


def images(n, seed=0, size=20):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_clip(build_tiny_clip(tmp_path_factory.mktemp("clip")))


def test_clip_score_conventions(clip):
    model, tok, proc = clip
    ims, texts = images(4), ["和風の箱", "a box", "коробка в русском стиле", "กล่องแบบไทย"]
    cos = (image_embeds(model, proc, ims) * text_embeds(model, tok, texts)).sum(-1)
    hessel = fidelity.clip_score(clip, ims, texts, "hessel")
    tm = fidelity.clip_score(clip, ims, texts, "torchmetrics")
    torch.testing.assert_close(hessel, 2.5 * cos.clamp_min(0))
    torch.testing.assert_close(tm, 100 * cos.clamp_min(0))
    with pytest.raises(fidelity.FidelityError, match="unknown CLIPScore convention 'x'"):
        fidelity.clip_score(clip, ims, texts, "x")
    with pytest.raises(fidelity.FidelityError, match="4 images but 3 texts"):
        fidelity.clip_score(clip, ims, texts[:3])


def test_diversity():
    same = torch.ones(4, 8)
    assert fidelity.diversity(same) == pytest.approx(0.0, abs=1e-6)
    ortho = torch.eye(3)
    assert fidelity.diversity(ortho) == pytest.approx(1.0)
    with pytest.raises(fidelity.FidelityError, match="at least 2 images"):
        fidelity.diversity(torch.ones(1, 3))


def test_clip_diversity_orders_identical_below_random(clip):
    ims = images(4)
    assert fidelity.clip_diversity(clip, [ims[0]] * 3) < 1e-5 < fidelity.clip_diversity(clip, ims)


def _random_lpips_files(tmp_path, net):
    torch.manual_seed(0)
    spec = fidelity._NETS[net]
    sd = {}
    for i, (c_in, c_out, k, _, _) in spec["convs"].items():
        sd[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k) * (2 / (c_in * k * k)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(c_out)
    sd["classifier.1.weight"] = torch.zeros(2, 2)  # extra keys of a full checkpoint are ignored
    widths = [spec["convs"][max(c for c in spec["convs"] if c < t)][1] for t in spec["taps"]]
    lin = {f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1) for k, w in enumerate(widths)}
    torch.save(sd, tmp_path / f"{net}_backbone.pth")
    torch.save(lin, tmp_path / f"{net}_lin.pth")
    return tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_lin.pth"


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_from_local_weights(tmp_path, net):
    backbone, lin = _random_lpips_files(tmp_path, net)
    metric = fidelity.LPIPS(backbone, lin, net=net)
    size = 64 if net == "alex" else 32
    x = fidelity.to_lpips_input(images(3, size=size))
    y = fidelity.to_lpips_input(images(3, seed=1, size=size))
    d_xy, d_yx, d_xx = metric(x, y), metric(y, x), metric(x, x)
    assert d_xy.shape == (3,)
    torch.testing.assert_close(d_xy, d_yx)
    assert torch.all(d_xx.abs() < 1e-6) and torch.all(d_xy > 0)
    # A small perturbation is closer than an unrelated image.
    near = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.all(metric(x, near) < d_xy)


def test_lpips_errors(tmp_path):
    with pytest.raises(fidelity.FidelityError, match=r"backbone weights not found .*nothing is downloaded"):
        fidelity.LPIPS(tmp_path / "none.pth", tmp_path / "lin.pth")
    backbone, lin = _random_lpips_files(tmp_path, "alex")
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1)}, tmp_path / "short.pth")
    with pytest.raises(fidelity.FidelityError, match=r"short.pth: lin1.model.1.weight is absent"):
        fidelity.LPIPS(backbone, tmp_path / "short.pth")
    with pytest.raises(fidelity.FidelityError, match="features.0.weight has shape"):
        sd = torch.load(backbone)
        sd["features.0.weight"] = torch.zeros(64, 3, 3, 3)
        torch.save(sd, tmp_path / "bad.pth")
        fidelity.LPIPS(tmp_path / "bad.pth", lin)
    with pytest.raises(fidelity.FidelityError, match="one size"):
        fidelity.to_lpips_input(images(1, size=8) + images(1, size=9))


def test_ssim_by_hand():
    """Constant images: SSIM is the luminance term (2ab + C1)/(a² + b² + C1); identical images
    give 1; noise lowers it; sizes must match."""
    a = torch.full((1, 3, 16, 16), 0.2, dtype=torch.float64)
    b = torch.full((1, 3, 16, 16), 0.6, dtype=torch.float64)
    c1 = 0.01 ** 2
    assert fidelity.ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), rel=1e-5)
    ims = images(3, seed=4)
    assert torch.allclose(fidelity.ssim(ims, ims), torch.ones(3))
    rng = np.random.default_rng(5)
    noisy = [Image.fromarray(np.clip(np.asarray(im, int) + rng.integers(-60, 60, (20, 20, 3)), 0, 255).astype(np.uint8))
             for im in ims]
    s = fidelity.ssim(noisy, ims)
    assert (s < 0.95).all() and (s > 0.2).all()
    with pytest.raises(fidelity.FidelityError, match="differ in shape"):
        fidelity.ssim(images(1, size=20), images(1, size=16))
