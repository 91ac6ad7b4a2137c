"""Text-encoder head sites `{prefix}.blocks.{l}.attn.hook_q|hook_k|hook_v|hook_z` [B, S, H, d] on every
text architecture: CLIP (tiny SD), XLM-R (tiny AltDiffusion), T5 (tiny SD3's text_3) and BERT (an
encoder-only folder opened by `interp.load`). The ground truth is a plain torch hook on the
transformers module the site names (the projection's output, the output projection's input), not
culturelens code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import interp
from interp.errors import SiteError
from interp.model.layout import get_path
from interp.model.sites import parse, site_axes
from interp.model.tiny import CORPUS
from interp.model.tokenizer_training import train_unigram

PROMPTS = ["a Japanese-style box", "a German-style bowl"]
HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z")
# (arch, the model fixture, the encoder prefix, the Linear of q/k/v and the out-projection, under a layer)
ARCHS = {
    "clip": ("tiny_sd", "text", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj"),
    "xlmr": ("tiny_altdiffusion", "text", ("attention.self.query", "attention.self.key", "attention.self.value"),
             "attention.output.dense"),
    "t5": ("tiny_sd3", "text_3", ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v"),
           "layer.0.SelfAttention.o"),
    "bert": ("tiny_bert", "text", ("attention.self.query", "attention.self.key", "attention.self.value"),
             "attention.output.dense"),
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> interp.Model:
    """A random 2-layer BertModel folder (the class of multilingual-e5-small), opened with SDPA
    attention (the checkpoint's own kernel: head sites must not need eager)."""
    torch.manual_seed(0)
    tok = train_unigram(CORPUS, vocab_size=300, style="xlmr", model_max_length=16)
    module = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, pad_token_id=tok.pad_token_id),
                       add_pooling_layer=False)
    path = tmp_path_factory.mktemp("bert")
    module.save_pretrained(path)
    tok.save_pretrained(path)
    return interp.load(str(path), text_attention="sdpa")


@pytest.fixture(params=list(ARCHS))
def arch(request):
    fixture, prefix, qkv, out = ARCHS[request.param]
    model = request.getfixturevalue(fixture)
    assert model.encoders[prefix].arch == request.param
    return model, prefix, qkv, out


def _raw(model, prefix: str, layer: int, qkv, out, prompts, interventions=()):
    """What the modules themselves see, by plain torch hooks: q/k/v projections' outputs and the
    out-projection's input and output, [B, S, H·d] / [B, S, d_model], during one encoder call."""
    enc = model.encoders[prefix]
    blk = enc.layer(layer)
    seen = {}
    handles = [get_path(blk, p).register_forward_hook(lambda m, a, o, h=h: seen.__setitem__(h, o.detach().clone()))
               for h, p in zip(HOOKS[:3], qkv)]
    o = get_path(blk, out)
    handles.append(o.register_forward_hook(
        lambda m, a, res: seen.update(hook_z=a[0].detach().clone(), attn_out=res.detach().clone())))
    batch = model.tokenize(prompts, prefix)
    kwargs = {"attention_mask": batch["attention_mask"]} if enc.uses_attention_mask else {}
    try:
        with torch.no_grad(), interp.intervene(model, list(interventions)):
            enc.module(batch["input_ids"], **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_sites_are_listed_shaped_and_equal_the_module_tensors(arch):
    model, prefix, qkv, out = arch
    enc = model.encoders[prefix]
    L = enc.n_layers - 1
    names = [f"{prefix}.blocks.{L}.attn.{h}" for h in HOOKS]
    listed = model.sites(prefix)
    assert all(n in listed for n in names)
    for kind in ("attn_q", "attn_k", "attn_v", "attn_z"):
        assert model.sites(kind)  # Model.sites filters by the new kinds
    acts = interp.capture(model, PROMPTS, names)
    raw = _raw(model, prefix, L, qkv, out, PROMPTS)
    # with every other hook of the layer in one trace: nnsight needs them in execution order, which
    # differs by architecture (XLM-R/BERT return the pattern before z reaches the output dense).
    # Reading the pattern switches to eager attention: equal to float rounding, not bit for bit.
    others = [f"{prefix}.blocks.{L}.{h}" for h in ("hook_resid_post", "attn.hook_pattern", "hook_attn_out",
                                                   "mlp.hook_post")]
    full = interp.capture(model, PROMPTS, others + names)
    torch.testing.assert_close(full[others[2]], raw["attn_out"])
    for n in names:
        torch.testing.assert_close(full[n], acts[n])
    H = enc.n_heads
    d = get_path(enc.layer(L), qkv[0]).out_features // H
    S = model.tokenize(PROMPTS, prefix)["input_ids"].shape[1]
    for n, h in zip(names, HOOKS):
        s = parse(model, n)
        assert (s.dim, s.unit_axis, s.head_axis, s.position_axis, s.writable) == (H, 2, 2, 1, True)
        assert site_axes(n) == (2, 2, 1)
        assert acts[n].shape == (len(PROMPTS), S, H, d), n
        # head h is features h·d..(h+1)·d-1 of the module tensor; z reassembled is the out-projection input
        assert torch.equal(acts[n].flatten(2), raw[h]), n
        assert torch.equal(acts[n][:, :, 1], raw[h][..., d:2 * d]), n


def test_masking_a_head_at_z_removes_exactly_its_contribution(arch):
    model, prefix, qkv, out = arch
    enc = model.encoders[prefix]
    L, H, h = 0, enc.n_heads, 1
    z_site, out_site = f"{prefix}.blocks.{L}.attn.hook_z", f"{prefix}.blocks.{L}.hook_attn_out"
    clean = interp.capture(model, PROMPTS, [z_site, out_site])
    mask = interp.Mask(interp.Units(z_site, [h]))
    # the same edit through heads=: all heads scaled by 0, merged back at head h only
    by_heads = interp.Amplify(interp.Units(z_site, list(range(H))), -1.0, heads=[h])
    W = get_path(enc.layer(L), out).weight  # [d_model, H·d]
    z = clean[z_site]
    d = z.shape[-1]
    contribution = z[:, :, h] @ W[:, h * d:(h + 1) * d].T  # head h's share of out_proj(z)
    for iv in (mask, by_heads):
        edited = interp.capture(model, PROMPTS, [z_site, out_site], interventions=[iv])
        ez = edited[z_site]
        assert (ez[:, :, h] == 0).all()
        others = [i for i in range(H) if i != h]
        assert torch.equal(ez[:, :, others], z[:, :, others])
        removed = clean[out_site] - edited[out_site]
        assert contribution.abs().max() > 1e-3  # the head does contribute, so the check can fail
        torch.testing.assert_close(removed, contribution, rtol=1e-4, atol=1e-5)
    # the hook engine (interp.intervene) makes the same edits as the nnsight path
    nnsight_path = interp.capture(model, PROMPTS, [out_site], interventions=[mask])[out_site]
    for iv in (mask, by_heads):
        raw = _raw(model, prefix, L, qkv, out, PROMPTS, [iv])
        assert (raw["hook_z"].unflatten(-1, (H, d))[:, :, h] == 0).all()
        torch.testing.assert_close(raw["attn_out"], nnsight_path)
    # a capture inside an intervene block reports the edited z (nnsight sees the module tensor
    # before the block's torch hook runs; the edit is applied to the reported value too)
    with interp.intervene(model, [interp.Mask(interp.Units(f"{prefix}.blocks.{L}.attn.hook_q", [h]))]):
        inside = interp.capture(model, PROMPTS, [f"{prefix}.blocks.{L}.attn.hook_q"])
    assert (inside[f"{prefix}.blocks.{L}.attn.hook_q"][:, :, h] == 0).all()


def test_writing_q_k_v_changes_the_downstream_run_and_positions_select_tokens(arch):
    model, prefix, qkv, out = arch
    L = 0
    z_site = f"{prefix}.blocks.{L}.attn.hook_z"
    base = interp.capture(model, PROMPTS, [z_site])[z_site]
    for h in ("hook_q", "hook_k", "hook_v"):
        site = f"{prefix}.blocks.{L}.attn.{h}"
        iv = interp.Amplify(interp.Units(site, [0]), 2.0, positions=[1])
        acts = interp.capture(model, PROMPTS, [site, z_site], interventions=[iv])
        plain = interp.capture(model, PROMPTS, [site])[site]
        a = acts[site]
        torch.testing.assert_close(a[:, 1, 0], 3.0 * plain[:, 1, 0])
        untouched = torch.ones(a.shape[1], a.shape[2], dtype=torch.bool)
        untouched[1, 0] = False
        assert torch.equal(a[:, untouched], plain[:, untouched])
        assert not torch.equal(acts[z_site], base), h  # the edit reached the attention


def test_patching_heads_on_text_gives_a_layers_by_heads_map(arch):
    model, prefix, qkv, out = arch
    enc = model.encoders[prefix]
    clean, corrupt = ["a Japanese-style box"], ["a German-style lamp"]
    ref = interp.encoder_output(model, clean, prefix)

    def metric(o):  # closeness of the patched run's output to the clean run's
        return -(o - ref).pow(2).sum()

    sites = [f"{prefix}.blocks.{l}.attn.hook_z" for l in range(enc.n_layers)]
    res = interp.patch(model, clean, corrupt, sites=sites, metric=metric, heads="each")
    rows, cols, m = res.matrix("site", "head")
    assert rows == sites and cols == list(range(enc.n_heads))
    assert m.shape == (enc.n_layers, enc.n_heads) and torch.isfinite(m).all()
    assert res.clean_value > res.corrupt_value
    # every head's patch reaches the output (a write that did not land would leave the corrupt
    # value: effect exactly 0), and heads differ (random tiny encoders: attention moves the
    # output little next to the token embeddings, so effects are small, not zero)
    assert (m != 0).all() and len(set(m.flatten().tolist())) == m.numel()
    # the last layer's heads together restore exactly what patching the whole site does
    last = sites[-1]
    whole = interp.patch(model, clean, corrupt, sites=[last], metric=metric)
    together = interp.patch(model, clean, corrupt, sites=[last], metric=metric, heads=[list(range(enc.n_heads))])
    assert together.rows[0]["head"] == tuple(range(enc.n_heads))
    assert together.rows[0]["value"] == pytest.approx(whole.rows[0]["value"], rel=1e-6)
    assert whole.rows[0]["value"] != res.corrupt_value


def test_out_of_range_heads_name_the_site_and_the_valid_range(tiny_sd):
    site = "text.blocks.0.attn.hook_z"
    H = tiny_sd.encoders["text"].n_heads
    with pytest.raises(SiteError, match=rf"{site}.*index \[{H}\] out of range; valid heads are 0\.\.{H - 1}"):
        interp.capture(tiny_sd, PROMPTS, [site], interventions=[interp.Mask(interp.Units(site, [H]))])
    iv = interp.Amplify(interp.Units(site, [0]), 1.0, heads=[H + 3])
    with pytest.raises(SiteError, match=rf"{site}.*heads \[{H + 3}\] out of range; valid heads are 0\.\.{H - 1}"):
        interp.capture(tiny_sd, PROMPTS, [site], interventions=[iv])
    with pytest.raises(SiteError, match=rf"{site}.*heads \[{H + 3}\] out of range"):
        with interp.intervene(tiny_sd, [iv]):
            pass
    with pytest.raises(Exception, match=rf"heads \[{H}\] out of range for site '{site}'; valid heads are 0\.\.{H - 1}"):
        interp.patch(tiny_sd, PROMPTS[:1], PROMPTS[1:], sites=[site], metric=lambda o: o.sum(), heads=[H])
    with pytest.raises(SiteError, match="has no heads"):
        interp.patch(tiny_sd, PROMPTS[:1], PROMPTS[1:], sites=["text.blocks.0.hook_resid_post"],
                     metric=lambda o: o.sum(), heads="each")
    with pytest.raises(SiteError, match="read-only"):  # the pattern stays read-only
        interp.patch(tiny_sd, PROMPTS[:1], PROMPTS[1:], sites=["text.blocks.0.attn.hook_pattern"],
                     metric=lambda o: o.sum(), heads="each")
    with pytest.raises(SiteError, match=r"unknown hook 'attn.hook_x'.*attn\.hook_q.*attn\.hook_z"):
        parse(tiny_sd, "text.blocks.0.attn.hook_x")


def test_head_sites_need_no_eager_attention(tiny_bert):
    """q/k/v/z are Linear boundaries: reading or writing them keeps the encoder's attention kernel
    (only attn.hook_pattern switches to eager)."""
    enc = tiny_bert.encoders["text"]
    kernel = enc.module.config._attn_implementation
    assert kernel != "eager"
    seen = []
    handle = enc.module.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    site = "text.blocks.1.attn.hook_z"
    try:
        interp.capture(tiny_bert, PROMPTS, [f"text.blocks.1.attn.{h}" for h in HOOKS],
                       interventions=[interp.Mask(interp.Units(site, [0]))])
        with interp.intervene(tiny_bert, [interp.Mask(interp.Units(site, [0]))]):
            interp.encoder_output(tiny_bert, PROMPTS)
        assert len(seen) == 2 and set(seen) == {kernel}
        interp.capture(tiny_bert, PROMPTS, ["text.blocks.1.attn.hook_pattern"])
        assert seen[-1] == "eager" and enc.module.config._attn_implementation == kernel
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_reading_text_heads_during_generation_leaves_the_image_bit_identical(request, family):
    model = request.getfixturevalue(f"tiny_{family}")
    sites = [s for s in model.sites() if s.startswith("text") and s.rsplit(".", 1)[-1] in HOOKS]
    assert {s.split(".", 1)[0] for s in sites} == set(model.encoders)
    plain = interp.generate(model, [PROMPTS[0]], seed=0)
    traced = interp.capture_generation(model, [PROMPTS[0]], sites, seed=0)
    assert torch.equal(traced.latents, plain.latents)
    assert np.array_equal(np.asarray(traced.images[0]), np.asarray(plain.images[0]))
    enc = model.encoders["text"]
    z = traced.acts["text.blocks.0.attn.hook_z"]
    assert z.shape[-2:] == (enc.n_heads, enc.d_model // enc.n_heads) and z.abs().sum() > 0
    # a written head does change the image (the reads above could have been no-ops otherwise)
    edited = interp.generate(model, [PROMPTS[0]], seed=0,
                             interventions=[interp.Mask(interp.Units("text.blocks.1.attn.hook_v", [0, 1]))])
    assert not torch.equal(edited.latents, plain.latents)


def test_real_e5_small_has_per_head_sites(e5_model):
    """The real multilingual-e5-small (BertModel, 12 layers × 12 heads of 32): q/k/v/z are the
    module tensors per head, and a head masked at z leaves exactly its share out of hook_attn_out."""
    enc = e5_model.encoders["text"]
    L, h = enc.n_layers - 1, 5
    bert = ARCHS["bert"]
    names = [f"text.blocks.{L}.attn.{k}" for k in HOOKS] + [f"text.blocks.{L}.hook_attn_out"]
    acts = interp.capture(e5_model, PROMPTS, names)
    raw = _raw(e5_model, "text", L, bert[2], bert[3], PROMPTS)
    for n, k in zip(names, HOOKS):
        assert acts[n].shape == (len(PROMPTS), enc.max_length, 12, 32), n
        assert torch.equal(acts[n].flatten(2), raw[k]), n
    z_site = names[3]
    edited = interp.capture(e5_model, PROMPTS, names[3:], interventions=[interp.Mask(interp.Units(z_site, [h]))])
    W = get_path(enc.layer(L), bert[3]).weight
    share = acts[z_site][:, :, h] @ W[:, h * 32:(h + 1) * 32].T
    torch.testing.assert_close(acts[names[4]] - edited[names[4]], share, rtol=1e-4, atol=1e-5)
