"""TransformerBridge adapters (CLIP text, XLM-R) give the same numbers as transformers and nnsight."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.bridge import bridge, run_with_cache

PROMPTS = ["a Japanese-style box", "和風の箱"]


@pytest.mark.parametrize("fixture,prefix", [("tiny_sd", "text"), ("tiny_altdiffusion", "text"), ("tiny_sdxl", "text_2")])
def test_bridge_equals_transformers_and_capture(request, fixture, prefix):
    model = request.getfixturevalue(fixture)
    enc = model.encoders[prefix]
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    modules_before = [type(m) for m in enc.module.modules()]
    _, cache = run_with_cache(model, PROMPTS, prefix)
    batch = model.tokenize(PROMPTS, prefix)
    kw = {"attention_mask": batch["attention_mask"]} if enc.uses_attention_mask else {}
    with torch.no_grad():
        ref = enc.module(batch["input_ids"], output_hidden_states=True, output_attentions=True, **kw)
    ours = interp.capture(model, PROMPTS, [f"{prefix}.blocks.{l}.mlp.hook_post" for l in range(enc.n_layers)])
    for l in range(enc.n_layers):
        assert torch.equal(cache[f"blocks.{l}.hook_resid_post"], ref.hidden_states[l + 1])
        assert torch.equal(cache[f"blocks.{l}.attn.hook_pattern"], ref.attentions[l])
        assert torch.equal(cache[f"blocks.{l}.mlp.hook_post"], ours[f"{prefix}.blocks.{l}.mlp.hook_post"])
    # booting works on a copy: the pipeline's own encoder is untouched
    assert [type(m) for m in enc.module.modules()] == modules_before
    assert all(torch.equal(v, enc.module.state_dict()[k]) for k, v in before.items())


def test_bridge_refuses_t5(tiny_sd3):
    with pytest.raises(interp.UnsupportedModelError, match="no TransformerBridge adapter for text_3"):
        bridge(tiny_sd3, "text_3")
