"""Reading a site changes nothing, bit for bit, whatever kernel the original processor uses.

Why a skewed kernel: on one CPU our reproduction of a diffusers processor and the processor
itself may round alike by luck (and on another CPU not: an AVX-512 machine once drew one pixel
differently). Here the original processor of every attention module is replaced by one that
computes something visibly different from diffusers' math (its output + 0.05). A read-only call
must still return exactly that processor's output, so the traced generation equals the plain
one with the skewed kernel; our own reproduction, used only when a hook is written, does not
(which shows the skew is visible to the test).

Text encoders likewise run a skewed attention kernel (transformers' SDPA + 0.05, registered as an
attention implementation): their q/k/v/z sites are Linear boundaries around it, so reading them
keeps that kernel and the image. (Reading a text `attn.hook_pattern` switches the encoder to
eager attention, the only one that returns probabilities: it is not read here.)
"""

import numpy as np
import pytest
import torch

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import interp
from interp.methods.attribution import attribution

PROMPT = "a Japanese-style box"
SKEW = 0.05


def _skewed(proc):
    """An instance of a subclass of `proc`'s class, of the same name, whose output is shifted."""
    base = type(proc)

    def __call__(self, *args, **kwargs):
        out = base.__call__(self, *args, **kwargs)
        return tuple(o + SKEW for o in out) if isinstance(out, tuple) else out + SKEW

    cls = type(base.__name__, (base,), {"__call__": __call__})
    new = cls.__new__(cls)
    new.__dict__.update(proc.__dict__)
    return new


def _skewed_text_attention(module, query, key, value, attention_mask, **kwargs):
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out + SKEW, weights


AttentionInterface.register("culturelens_skewed", _skewed_text_attention)


@pytest.fixture(params=["sd", "sd3", "flux"])
def skewed(request):
    model = interp.tiny(request.param, seed=0)
    for mod in model.denoiser.modules():
        if hasattr(mod, "processor") and hasattr(mod, "set_processor"):
            mod.set_processor(_skewed(mod.processor))
    for enc in model.encoders.values():
        enc.module.set_attn_implementation("culturelens_skewed")
    return model


def _read_sites(model):
    """Every processor hook of the denoiser and the q/k/v/z hooks of every text encoder."""
    hooks = ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")
    text = ("hook_q", "hook_k", "hook_v", "hook_z")
    return [s for s in model.sites() if s.rsplit(".", 1)[-1] in (text if s.startswith("text") else hooks)]


def test_reading_every_processor_hook_leaves_the_generation_bit_identical(skewed):
    sites = _read_sites(skewed)
    assert sites
    plain = interp.generate(skewed, [PROMPT], seed=0)
    traced = interp.capture_generation(skewed, [PROMPT], sites, seed=0)
    assert torch.equal(traced.latents, plain.latents)
    assert np.array_equal(np.asarray(traced.images[0]), np.asarray(plain.images[0]))
    assert all(traced.acts[s].numel() > 0 for s in sites)
    assert {s.split(".", 1)[0] for s in sites if s.startswith("text")} == set(skewed.encoders)
    assert all(enc.module.config._attn_implementation == "culturelens_skewed" for enc in skewed.encoders.values())
    # a written hook goes through our reproduction (diffusers' math): the skew is gone there
    z = next(s for s in sites if s.endswith("hook_z") and not s.startswith("text"))
    edited = interp.generate(skewed, [PROMPT], seed=0,
                             interventions=[interp.Amplify(interp.Units(z, [0]), 1.0)])
    assert not torch.equal(edited.latents, plain.latents)


def test_attribution_traces_the_plain_image_under_any_kernel(skewed):
    res = attribution(skewed, PROMPT, ["box"])
    plain = interp.generate(skewed, [PROMPT], seed=0).images[0]
    assert torch.equal(res.image, torch.from_numpy(np.array(plain)))
