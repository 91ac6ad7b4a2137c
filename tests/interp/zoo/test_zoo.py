"""interp.zoo at full size on the meta device: parameter counts against the published figures,
site counts and shapes derived from the published architectures, tokenizers, folders."""

from __future__ import annotations

import json

import pytest
import torch

import interp
import interp.zoo as zoo
from interp.errors import UnsupportedModelError

SUPPORTED = zoo.names()


@pytest.fixture(scope="module")
def meta():
    """Meta models hold no memory: one per entry for the whole module."""
    return {n: zoo.model(n, "meta") for n in SUPPORTED}


def test_registry_names_and_sources():
    assert zoo.names() == ["sd15", "sd21", "sdxl", "altdiffusion-m9", "sd3-medium", "flux-schnell"]
    for n in zoo.names():
        e = zoo.entry(n)
        srcs = e.sources()
        assert set(srcs) >= {"pipeline", *e.components, *e.tokenizers}
        assert all(s.startswith("https://huggingface.co/") for s in srcs.values()), n
    with pytest.raises(zoo.ZooError, match="unknown pipeline 'sd14'.*sd15"):
        zoo.entry("sd14")


@pytest.mark.parametrize("name", zoo.names())
def test_parameter_counts_match_published_figures(meta, name):
    rows = zoo.params(name, meta[name].pipe)
    for comp, r in rows.items():
        assert r["ok"], f"{name}.{comp}: {r['params']:,} vs published {r['published']:,.0f} ({r['source']})"


def test_headline_counts(meta):
    # The figures the issue quotes, exactly as the architectures give them.
    assert zoo.n_params(meta["sd15"].pipe.unet) == 859_520_964
    assert zoo.n_params(meta["sdxl"].pipe.unet) == 2_567_463_684
    assert zoo.n_params(meta["sdxl"].pipe.text_encoder_2) == 694_659_840
    assert zoo.n_params(meta["sd3-medium"].pipe.text_encoder_3) == 4_762_310_656  # T5's tied embedding once
    assert zoo.n_params(meta["flux-schnell"].pipe.transformer) == 11_891_178_560


# Published architecture -> expected site counts: text layers x 4 hooks; UNet cross-attention
# transformer blocks (SD 1.x/2.x: 2 per down block x 3 + 1 mid + 3 per up block x 3 = 16;
# SDXL: down 2 x 2 + 2 x 10, mid 10, up 3 x 10 + 3 x 2 = 70); MMDiT blocks (SD3-medium 24;
# FLUX.1 19 double-stream + 38 single-stream = 57).
EXPECTED = {
    "sd15": {"text": 12, "xattn": 16}, "sd21": {"text": 23, "xattn": 16},
    "sdxl": {"text": 12, "text_2": 32, "xattn": 70}, "altdiffusion-m9": {"text": 24, "xattn": 16},
    "sd3-medium": {"text": 12, "text_2": 32, "text_3": 24, "mmdit": 24},
    "flux-schnell": {"text": 12, "text_2": 24, "mmdit": 57},
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_site_counts_per_kind(meta, name):
    m = meta[name]
    kinds = zoo.site_kinds(m)
    want = EXPECTED[name]
    for prefix in ("text", "text_2", "text_3"):
        if prefix in want:
            for hook in ("hook_resid_post", "attn.hook_pattern", "hook_attn_out", "mlp.hook_post"):
                assert kinds[f"{prefix}:{hook}"] == want[prefix], (name, prefix, hook)
        else:
            assert not any(k.startswith(prefix + ":") for k in kinds)
    if "xattn" in want:
        assert kinds["unet:attn2.hook_out"] == want["xattn"]
        assert len(m.sites("xattn_out")) == want["xattn"]
    if "mmdit" in want:
        assert not any(k.startswith("unet") for k in kinds)
        joint = [s for s in m.sites() if s.startswith("transformer.") and s.endswith(".attn.hook_pattern")]
        assert len(joint) == want["mmdit"]


def test_text_site_shapes_for_a_batch_on_meta(meta):
    # Shapes follow the published widths: CLIP-L 768/12 heads/3072, bigG 1280/20/5120,
    # OpenCLIP-H 1024/16/4096, XLM-R large 1024/16/4096, T5-XXL 4096/64/10240 at 256 tokens.
    dims = {"sd15": {"text": (77, 768, 12, 3072)}, "sd21": {"text": (77, 1024, 16, 4096)},
            "sdxl": {"text": (77, 768, 12, 3072), "text_2": (77, 1280, 20, 5120)},
            "altdiffusion-m9": {"text": (77, 1024, 16, 4096)},
            "sd3-medium": {"text": (77, 768, 12, 3072), "text_2": (77, 1280, 20, 5120),
                           "text_3": (256, 4096, 64, 10240)},
            "flux-schnell": {"text": (77, 768, 12, 3072), "text_2": (256, 4096, 64, 10240)}}
    for name, encs in dims.items():
        m = meta[name]
        shapes = zoo.text_shapes(m, ["a Japanese-style box", "和風の箱", "箱"])
        assert len(shapes) == len([s for s in m.sites() if s.startswith("text")])
        for prefix, (s, d, h, f) in encs.items():
            last = m.encoders[prefix].n_layers - 1
            assert shapes[f"{prefix}.blocks.{last}.hook_resid_post"] == (3, s, d), (name, prefix)
            assert shapes[f"{prefix}.blocks.0.attn.hook_pattern"] == (3, h, s, s), (name, prefix)
            assert shapes[f"{prefix}.blocks.0.hook_attn_out"] == (3, s, d), (name, prefix)
            assert shapes[f"{prefix}.blocks.{last}.mlp.hook_post"] == (3, s, f), (name, prefix)
            # per-head q/k/v/z: every published encoder here has 64-wide heads (T5-XXL: d_kv = 64)
            for hook in ("hook_q", "hook_k", "hook_v", "hook_z"):
                assert shapes[f"{prefix}.blocks.{last}.attn.{hook}"] == (3, s, h, 64), (name, prefix, hook)


def test_meta_models_use_no_memory_and_list_sites(meta):
    # nnsight #362: SD3 with meta tensors crashed site listing; here listing and parsing work.
    m = meta["sd3-medium"]
    assert m.device.type == "meta"
    assert all(p.is_meta for p in m.pipe.transformer.parameters())
    assert interp.model.sites.parse(m, "text_3.blocks.23.mlp.hook_post").dim == 10240
    assert interp.model.sites.parse(m, "text_2.blocks.31.attn.hook_pattern").dim == 20


@pytest.mark.parametrize("name,bos,eos,pad,vocab,max_len", [
    ("sd15", 49406, 49407, 49407, 49408, 77), ("sd21", 49406, 49407, 0, 49408, 77),
    ("altdiffusion-m9", 0, 2, 1, 250002, 77),
])
def test_tokenizers_have_published_ids(meta, name, bos, eos, pad, vocab, max_len):
    tok = meta[name].encoders["text"].tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok), tok.model_max_length) == (
        bos, eos, pad, vocab, max_len)
    ids = tok("a Japanese-style box")["input_ids"]
    assert ids[0] == bos and ids[-1] == eos
    assert meta[name].encoders["text"].module.get_input_embeddings().num_embeddings == vocab


def test_sdxl_and_sd3_tokenizers(meta):
    x = meta["sdxl"]
    assert x.encoders["text"].tokenizer.pad_token_id == 49407 and x.encoders["text_2"].tokenizer.pad_token_id == 0
    assert x.encoders["text_2"].output_is_penultimate
    t5 = meta["sd3-medium"].encoders["text_3"]
    tok = t5.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, len(tok)) == (0, 1, 2, 32100)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 32099
    assert t5.max_length == 256  # SD3's max_sequence_length, below the tokenizer's 512
    assert tok("箱")["input_ids"][-1] == 1


def test_meta_folder_round_trip(tmp_path):
    path = zoo.build("sd21", tmp_path / "sd21", device="meta")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"][1] == "DDIMScheduler"
    assert json.loads((path / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert json.loads((path / "unet" / "config.json").read_text())["attention_head_dim"] == [5, 10, 20, 20]
    assert not list(path.rglob("*.safetensors"))
    assert "stable-diffusion-2-1" in json.loads((path / "SOURCES.json").read_text())["unet"]
    m = zoo.load_meta(path)
    assert m.defaults["height"] == 768 and m.encoders["text"].n_layers == 23
    assert zoo.n_params(m.pipe.unet) == zoo.params("sd21")["unet"]["params"]
    assert m.tokenize(["a box"])["input_ids"].shape == (1, 77)


def test_entry_of_a_family_interp_lacks_is_a_clear_error(monkeypatch):
    import dataclasses

    fake = dataclasses.replace(zoo.entry("sd15"), name="future", family="future-dit")
    monkeypatch.setitem(zoo.PIPELINES, "future", fake)
    with pytest.raises(UnsupportedModelError, match="'future' is a 'future-dit' pipeline.*interp.zoo.pipeline"):
        zoo.model("future")
    with pytest.raises(UnsupportedModelError, match="future-dit"):
        zoo.build("future", "unused")


def test_random_weights_are_deterministic_and_finite():
    comp = zoo.entry("sd15").components["text_encoder"]
    small = zoo.Component(comp.cls, dict(comp.config, num_hidden_layers=2), comp.source)
    a = zoo.build_module(small, "cpu", gen=torch.Generator().manual_seed(3))
    b = zoo.build_module(small, "cpu", gen=torch.Generator().manual_seed(3))
    c = zoo.build_module(small, "cpu", gen=torch.Generator().manual_seed(4))
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert not any(p.is_meta for p in a.parameters())
    norm = a.text_model.final_layer_norm if hasattr(a, "text_model") else a.final_layer_norm
    assert torch.equal(norm.weight, torch.ones(768))
    out = a(torch.tensor([[49406, 5, 6, 49407]])).last_hidden_state
    assert torch.isfinite(out).all() and out.std() > 0.1


def test_judge_configs_match_published_sizes():
    clip = zoo.judge_module("clip-vit-l-14")
    assert zoo.n_params(clip) == 427_616_513 and all(p.is_meta for p in clip.parameters())
    qwen = zoo.judge_module("qwen2-vl-2b")
    pub, tol = zoo.JUDGES["qwen2-vl-2b"].published
    assert zoo.n_params(qwen) == 2_208_985_600 and abs(zoo.n_params(qwen) - pub) <= tol * pub  # lm_head tied
    assert qwen.config.text_config.num_hidden_layers == 28 and qwen.config.vision_config.depth == 32
    with pytest.raises(zoo.ZooError, match="unknown judge 'llava'.*clip-vit-l-14"):
        zoo.judge_module("llava")
