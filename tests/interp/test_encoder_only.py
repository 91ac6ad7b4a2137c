"""Encoder-only Models: a transformers text-encoder folder (BERT, XLM-R, CLIP text, T5 encoder)
opened by `interp.load` with the pipeline's site grammar, capture, patch, interventions and the
analyses; generation is a clear error. Tiny random folders are built here (no downloads); the
real multilingual-e5-small (tests/conftest.py `e5_model`) runs the chain end to end once."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (BertConfig, BertModel, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel,
                          XLMRobertaConfig, XLMRobertaModel)

import circuits
import interp
import circuits.data.culturebench as cb
from circuits.causal.validate import masked_interventions
from interp.bridge import bridge, run_with_cache
from interp.model.sites import denoiser_sites
from interp.model.tiny import CORPUS
from interp.model.tokenizer_training import train_bpe, train_unigram
from sae import ActivationStore, TopKSAE, TrainConfig, train

ARCHS = ("bert", "xlmr", "clip", "t5")
MAX_LEN = 32
D, LAYERS, HEADS = 32, 3, 2
PROMPTS = ["a Japanese-style box", "a box", "a German-style bowl", "和風の箱", "eine deutsche Lampe"]
PAIRS = [("a Japanese-style box", "a box", "Japanese-style", "box"),
         ("a Japanese-style bowl", "a bowl", "Japanese-style", "bowl"),
         ("a German-style hat", "a hat", "German-style", "hat"),
         ("a German-style lamp", "a lamp", "German-style", "lamp")]


def _module(arch: str, tok) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    if arch == "bert":
        return BertModel(BertConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                    intermediate_size=2 * D, max_position_embeddings=MAX_LEN, **common),
                         add_pooling_layer=False)
    if arch == "xlmr":
        return XLMRobertaModel(XLMRobertaConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                intermediate_size=2 * D, max_position_embeddings=MAX_LEN + 2,
                                                **common))
    if arch == "clip":
        return CLIPTextModel(CLIPTextConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                            intermediate_size=2 * D, max_position_embeddings=MAX_LEN,
                                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            **common))
    return T5EncoderModel(T5Config(d_model=D, d_kv=16, d_ff=2 * D, num_layers=LAYERS, num_heads=HEADS,
                                   relative_attention_num_buckets=8, eos_token_id=tok.eos_token_id,
                                   decoder_start_token_id=tok.pad_token_id, **common))


def _tokenizer(arch: str):
    if arch == "clip":
        return train_bpe(CORPUS, vocab_size=300, model_max_length=MAX_LEN)
    return train_unigram(CORPUS, vocab_size=300, style="t5" if arch == "t5" else "xlmr", model_max_length=MAX_LEN)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    out = {}
    for arch in ARCHS:
        path = tmp_path_factory.mktemp(f"enc_{arch}")
        tok = _tokenizer(arch)
        _module(arch, tok).save_pretrained(path)
        tok.save_pretrained(path)
        out[arch] = str(path)
    return out


@pytest.fixture(scope="module")
def models(folders) -> dict[str, interp.Model]:
    return {arch: interp.load(p) for arch, p in folders.items()}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


def _reference(model: interp.Model, prompts):
    enc = model.encoders["text"]
    batch = model.tokenize(prompts)
    with torch.no_grad():
        return enc.module(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                          output_attentions=True), batch


def test_load_opens_each_family_as_encoder_only(models, arch):
    model = models[arch]
    enc = model.encoders["text"]
    assert model.family == "encoder" and list(model.encoders) == ["text"] and not model.has_denoiser
    assert (enc.arch, enc.n_layers, enc.d_model, enc.max_length) == (arch, LAYERS, D, MAX_LEN)
    assert enc.uses_attention_mask
    hooks = ["hook_resid_post", "attn.hook_pattern", "hook_attn_out", "mlp.hook_post",
             "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"]
    assert model.sites() == [f"text.blocks.{l}.{h}" for l in range(LAYERS) for h in hooks]
    assert "encoder" in repr(model) and f"{arch}[{LAYERS}x{D}]" in repr(model)


def test_capture_equals_transformers_outputs(models, arch):
    model = models[arch]
    n = model.encoders["text"].n_layers
    sites = [f"text.blocks.{l}.{h}" for l in range(n) for h in ("hook_resid_post", "attn.hook_pattern")]
    acts = interp.capture(model, PROMPTS, sites)
    ref, batch = _reference(model, PROMPTS)
    assert acts["text.blocks.0.hook_resid_post"].shape == (len(PROMPTS), MAX_LEN, D)
    for l in range(n):
        torch.testing.assert_close(acts[f"text.blocks.{l}.attn.hook_pattern"], ref.attentions[l])
        if arch == "t5" and l == n - 1:
            continue  # T5's last hidden_states entry is after the final LayerNorm, not the block output
        torch.testing.assert_close(acts[f"text.blocks.{l}.hook_resid_post"], ref.hidden_states[l + 1])
    # padding keys get no attention: the mask reaches the encoder
    pattern = acts[f"text.blocks.{n - 1}.attn.hook_pattern"]
    pad = ~batch["attention_mask"].bool()
    assert pad.any() and (pattern * pad[:, None, None, :]).abs().max() == 0


def test_padding_changes_no_real_token(models, arch):
    """The mask is passed, so a prompt's activations do not depend on its batch or pad length."""
    model = models[arch]
    site = "text.blocks.1.mlp.hook_post"
    alone = interp.capture(model, PROMPTS[1:2], [site])[site]
    batched = interp.capture(model, PROMPTS, [site])[site][1:2]
    n = int(model.tokenize(PROMPTS[1:2])["attention_mask"].sum())
    torch.testing.assert_close(alone[:, :n], batched[:, :n], rtol=1e-5, atol=1e-6)


def test_patch_scores_hidden_states(models, arch):
    model = models[arch]
    clean, corrupt = ["a Japanese-style box"], ["a German-style box"]
    last = f"text.blocks.{LAYERS - 1}.hook_resid_post"
    ref = interp.encoder_output(model, clean)

    def metric(out):  # closeness of the patched run's hidden states to the clean run's
        return -(out - ref).pow(2).sum()

    res = interp.patch(model, clean, corrupt, sites=["text.blocks.0.hook_resid_post", last], metric=metric)
    eff = {r["site"]: r["effect"] for r in res.rows}
    assert res.clean_value == 0.0 and res.corrupt_value < 0
    assert eff[last] == pytest.approx(1.0, abs=1e-6)  # the last block feeds the output alone
    assert 0.0 < eff["text.blocks.0.hook_resid_post"] <= 1.0 + 1e-6
    # positions need equal token lengths: the first candidate that has the clean prompt's length
    n = len(model.encoders["text"].tokenizer(clean[0])["input_ids"])
    same = next(c for c in ("a German-style box", "a Japanese-style bowl", "a Japanese-style hat", "a Korean-style box",
                            "a Japanese-style lamp") if len(model.encoders["text"].tokenizer(c)["input_ids"]) == n)
    by_pos = interp.patch(model, clean, [same], sites=[last], metric=metric, positions=[0, 1, 2])
    assert len(by_pos.rows) == 3 and all(r["effect"] < 1.0 for r in by_pos.rows)


def test_interventions_edit_and_are_removed(models, arch):
    model = models[arch]
    site = "text.blocks.0.mlp.hook_post"
    base = interp.encoder_output(model, PROMPTS)
    units = interp.Units(site, list(range(8)))
    masked = interp.capture(model, PROMPTS, [site], interventions=[interp.Mask(units)])[site]
    assert masked[..., :8].abs().max() == 0 and masked[..., 8:].abs().max() > 0
    with interp.intervene(model, [interp.Mask(units)]):
        inside = interp.encoder_output(model, PROMPTS)
    assert not torch.allclose(inside, base)
    torch.testing.assert_close(interp.encoder_output(model, PROMPTS), base, rtol=0, atol=0)
    torch.testing.assert_close(interp.encoder_output(model, PROMPTS, interventions=[interp.Mask(units)]), inside)


def test_generation_and_denoiser_sites_are_clear_errors(models, arch):
    model = models[arch]
    with pytest.raises(interp.UnsupportedModelError, match="text encoder only .* cannot generate images"):
        interp.generate(model, ["a box"], num_steps=2)
    with pytest.raises(interp.UnsupportedModelError, match="text encoder only"):
        interp.capture_generation(model, ["a box"], ["text.blocks.0.hook_resid_post"])
    with pytest.raises(interp.UnsupportedModelError, match="has no denoiser"):
        model.pipe(prompt=["a box"])
    with pytest.raises(interp.UnsupportedModelError, match="has no denoiser"):
        model.denoiser
    with pytest.raises(interp.SiteError, match="names no denoiser sites .*text encoder only"):
        interp.capture(model, ["a box"], ["unet.down.0.attn.0.attn2.hook_out"])


def test_scan_store_sae_and_units_on_each_family(models, arch, tmp_path):
    model = models[arch]
    scan = circuits.culture_layer_scan(model, PAIRS, n_boot=50)
    s = scan.encoders["text"]
    assert s.layers == list(range(LAYERS)) and 0 <= scan.chosen < LAYERS
    assert s.direction == ("noun->modifier" if arch == "clip" else "modifier->noun")
    site = f"text.blocks.{scan.chosen}.hook_resid_post"
    prompts = [p for pair in PAIRS for p in pair[:2]]
    store = ActivationStore.build(model, prompts, site, tmp_path / "store", batch_size=4, progress=False)
    sae = TopKSAE(D, 32, 4, seed=0)
    train(sae, store, TrainConfig(batch_size=16, total_tokens=16 * 30, lr=3e-3), progress=False)
    units = circuits.culture_units(model, circuits.sae_basis(sae, site), {"ja": PAIRS[:2], "de": PAIRS[2:]}, k_max=4)
    assert sorted(units.cultures) == ["de", "ja"]
    assert all(0 <= i < 32 for c in units.cultures.values() for i in c.indices)


def test_save_pretrained_round_trip_and_max_length(models, arch, tmp_path):
    model = models[arch]
    model.save_pretrained(tmp_path / "copy")
    again = interp.load(tmp_path / "copy")
    site = "text.blocks.2.hook_attn_out"
    torch.testing.assert_close(interp.capture(again, PROMPTS, [site])[site], interp.capture(model, PROMPTS, [site])[site])
    short = interp.load(tmp_path / "copy", max_length=8)
    assert short.tokenize(["a box"])["input_ids"].shape == (1, 8)
    with pytest.raises(interp.PromptTooLongError, match="at most 8 tokens"):
        short.tokenize(["a Japanese-style box and a German-style bowl and a hat"])
    with pytest.raises(interp.UnsupportedModelError, match="max_length=999"):
        interp.load(tmp_path / "copy", max_length=999)


def test_unsupported_folder_names_the_supported_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(interp.UnsupportedModelError, match="model_type 'gpt2'.*bert, xlm-roberta, clip_text_model, t5"):
        interp.load(tmp_path)


# -- the real encoder, end to end ---------------------------------------------------------------

def test_real_e5_capture_scan_store_sae_patch(e5_model, tmp_path):
    # 2 cultures x 3 nouns (the record id is "<culture>-<English noun>"), local-language prompts
    recs = [r for r in cb.bundled() if r.culture in ("ja", "de") and r.id.split("-", 1)[1] in ("box", "bowl", "hat")]
    assert len(recs) == 6
    model = e5_model
    acts = interp.capture(model, [r.modifier_noun for r in recs[:2]], ["text.blocks.5.attn.hook_pattern"])
    assert acts["text.blocks.5.attn.hook_pattern"].shape == (2, 12, 77, 77)
    scan = circuits.culture_layer_scan(model, recs, n_boot=100)
    s = scan.encoders["text"]
    assert s.layers == list(range(12)) and s.direction == "modifier->noun" and 0 <= scan.chosen < 12
    site = f"text.blocks.{scan.chosen}.hook_resid_post"
    prompts = [p for r in recs for p in (r.modifier_noun, r.noun_only)]
    store = ActivationStore.build(model, prompts, site, tmp_path / "store", batch_size=6, progress=False)
    assert store.d == 384 and store.n_tokens > len(prompts)
    sae = TopKSAE(384, 128, 8, seed=0)
    log = train(sae, store, TrainConfig(batch_size=32, total_tokens=32 * 40, lr=2e-3), progress=False)
    assert log[-1]["fvu"] < log[0]["fvu"]
    units = circuits.culture_units(model, circuits.sae_basis(sae, site), recs, k_max=8)
    assert sorted(units.cultures) == ["de", "ja"]
    clean = [r.modifier_noun for r in recs if r.culture == "ja"]
    corrupt = [r.noun_only for r in recs if r.culture == "ja"]
    ref = interp.encoder_output(model, clean)

    def metric(out):
        return torch.nn.functional.cosine_similarity(out[:, 0], ref[:, 0], dim=-1).mean()

    res = interp.patch(model, clean, corrupt, sites=[site, "text.blocks.11.hook_resid_post"], metric=metric)
    assert res.rows[-1]["effect"] == pytest.approx(1.0, abs=1e-5)
    assert all(r["effect"] == r["effect"] for r in res.rows)  # no NaN: clean and corrupt differ
    # masking ja's SAE latents (error kept) moves the encoder output, and only while active
    mask = masked_interventions(units, "ja")
    assert mask and units.cultures["ja"].indices
    masked = interp.encoder_output(model, clean, interventions=mask)
    assert not torch.allclose(masked, ref)
    torch.testing.assert_close(interp.encoder_output(model, clean), ref, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["bert", "xlmr", "clip"])
def test_bridge_covers_encoder_only_folders(models, which):
    """The TransformerLens bridge on a bare BertModel / XLMRobertaModel / CLIPTextModel: the same
    numbers as transformers and as interp.capture."""
    model = models[which]
    enc = model.encoders["text"]
    _, cache = run_with_cache(model, PROMPTS)
    ref, _ = _reference(model, PROMPTS)
    ours = interp.capture(model, PROMPTS, [f"text.blocks.{l}.mlp.hook_post" for l in range(enc.n_layers)])
    for l in range(enc.n_layers):
        assert torch.equal(cache[f"blocks.{l}.hook_resid_post"], ref.hidden_states[l + 1])
        assert torch.equal(cache[f"blocks.{l}.attn.hook_pattern"], ref.attentions[l])
        assert torch.equal(cache[f"blocks.{l}.mlp.hook_post"], ours[f"text.blocks.{l}.mlp.hook_post"])


def test_bridge_refuses_t5_encoder(models):
    with pytest.raises(interp.UnsupportedModelError, match="no TransformerBridge adapter for text \\(t5\\)"):
        bridge(models["t5"])


def test_model_to_moves_the_pipeline_and_clears_cached_state(folders):
    """`Model.to` on a pipeline Model and on an encoder-only one (where `pipe` is an EncoderOnly,
    whose `.to` it calls): every module moves, the model is returned, the per-model caches that
    depend on the placement are dropped and rebuilt on next use; refused while hooks are in."""
    site = "text.blocks.0.hook_resid_post"
    pipe_model = interp.tiny("sd")
    enc_model = interp.load(folders["bert"])
    for m in (pipe_model, enc_model):
        interp.capture(m, PROMPTS[:2], [site])  # fills the nnsight cache
        denoiser_sites(m)
        with interp.intervene(m, []):
            pass
        assert m.engine.nnsight and m.engine.runtime is not None
        assert (m.engine.denoiser_sites is not None) == m.has_denoiser
        assert m.to(torch.bfloat16) is m
        assert m.dtype == torch.bfloat16 and not m.engine.nnsight and m.engine.runtime is None
        assert m.engine.denoiser_sites is None and not m.engine.sessions
        assert "_hook_runtime" not in m.__dict__ and "_nnsight" not in m.__dict__  # nothing hidden
        modules = [e.module for e in m.encoders.values()]
        modules += [m.denoiser, m.pipe.vae] if m.has_denoiser else []
        assert {p.dtype for mod in modules for p in mod.parameters()} == {torch.bfloat16}
        assert interp.capture(m, PROMPTS[:2], [site])[site].dtype == torch.bfloat16
        with interp.intervene(m, [interp.Mask(interp.Units(site, [0]))]):
            with pytest.raises(interp.CultureLensError, match="move it before or after"):
                m.to(torch.float32)
        assert m.to("cpu", torch.float32).dtype == torch.float32 and str(m.device) == "cpu"
