"""Tiny random pipelines of every supported family, built offline and deterministically.

They exist so that every code path (loading, sites, capture, interventions, generation,
save/load round trips) is exercised on real diffusers/transformers classes in seconds.
Weights are random (seeded); tokenizers are trained here on a small multilingual corpus.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from interp.checks import is_int, positive_int
from interp.errors import CultureLensError, UnsupportedModelError
from interp.model.model import Model

FAMILIES = ("sd", "sdxl", "altdiffusion", "sd3", "flux")
_ALIASES = {"sd15": "sd", "sd1": "sd", "sd2": "sd", "alt": "altdiffusion"}
SPEC_PREFIX = "tiny:"


def parse_spec(spec: str) -> tuple[str, int]:
    """`tiny:<family>[:<layers>]` -> (family, text layers, default 2); a clear error otherwise
    (`tiny:sd:abc`, `tiny:sd:0`, `tiny:nope`, `tiny:sd:2:x`)."""
    parts = spec[len(SPEC_PREFIX):].split(":") if spec.startswith(SPEC_PREFIX) else None
    usage = f"use tiny:<family>[:<layers>] with a family in {', '.join(FAMILIES + tuple(_ALIASES))} and layers ≥ 1"
    if parts is None or not 1 <= len(parts) <= 2:
        raise CultureLensError(f"model spec {spec!r}: {usage}")
    family = parts[0]
    if _ALIASES.get(family, family) not in FAMILIES:
        raise CultureLensError(f"model spec {spec!r}: unknown family {family!r}; {usage}")
    if len(parts) == 1:
        return family, 2
    if not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) < 1:  # no sign, no decimal point
        raise CultureLensError(f"model spec {spec!r}: layers {parts[1]!r} is not an integer ≥ 1; {usage}")
    return family, int(parts[1])

# A small corpus with scripts the project cares about (CJK, Thai, Cyrillic, Arabic, Latin).
CORPUS = [
    "a photo of a box", "a Japanese-style box", "a Chinese-style bowl", "a Korean-style vase",
    "a Thai-style hat", "a German-style lamp", "a Russian-style jar", "an Italian building",
    "a Dutch dress", "a Polish house", "a Turkish lamp", "a Ukrainian dress", "a Spanish hat",
    "a Portuguese bowl", "a French vase", "an Arabic jar", "a cat", "a dog", "a city at night",
    "和風の箱", "中式碗", "한국식 꽃병", "หมวกแบบไทย", "eine deutsche Lampe", "русский кувшин",
    "un edificio italiano", "een Nederlandse jurk", "polski dom", "Türk lambası",
    "українська сукня", "un sombrero español", "uma tigela portuguesa", "un vase français",
    "جرة عربية", "箱", "碗", "花瓶", "帽子", "ランプ", "壺", "建物", "ドレス",
]


def _bpe(vocab_size: int, max_length: int) -> Any:
    """CLIP-style byte-level BPE (the organism helper's trainer, so tiny models match the organism)."""
    from interp.model.tokenizer_training import train_bpe

    return train_bpe(CORPUS, vocab_size=vocab_size, model_max_length=max_length)


def _unigram(vocab_size: int, max_length: int, style: str) -> Any:
    """SentencePiece-like unigram tokenizer, style "xlmr" (<s> A </s>, pad 1) or "t5" (A </s>, pad 0)."""
    from interp.model.tokenizer_training import train_unigram

    return train_unigram(CORPUS, vocab_size=vocab_size, style=style, model_max_length=max_length)


def _clip_config(tok: Any, d: int, layers: int, heads: int, max_len: int, proj: int | None = None,
                 mlp_ratio: int = 2) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=d, intermediate_size=mlp_ratio * d, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_len, projection_dim=proj or d,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",
    )


def _eager(model: Any) -> Any:
    # Eager attention so that attention probabilities exist and match `output_attentions`.
    model.config._attn_implementation = "eager"
    if hasattr(model, "set_attn_implementation"):
        with contextlib.suppress(Exception):
            model.set_attn_implementation("eager")
    return model.eval()


def _vae(latent_channels: int = 4, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16, **extra,
    )


def _unet(cross_dim: int, sample: int = 8, channels: tuple[int, int] = (16, 32), **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    kw: dict[str, Any] = dict(
        sample_size=sample, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=channels, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_dim,
        attention_head_dim=8, norm_num_groups=8,
    )
    kw.update(extra)
    return UNet2DConditionModel(**kw)


def build_pipeline(family: str, seed: int = 0, *, text_layers: int = 2, d_text: int = 32, n_heads: int = 2,
                   max_len: int = 16, unet_channels: tuple[int, int] = (16, 32), sample: int = 8,
                   mlp_ratio: int = 2) -> Any:
    """Build a tiny random diffusers pipeline of `family`; same seed -> same weights. The size
    arguments (heads, positions, UNet channels and sample size) let benchmarks build a CLIP-L-shaped
    SD model; SD3 keeps its own tiny MMDiT."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    family = _ALIASES.get(family, family)
    if family not in FAMILIES:
        raise UnsupportedModelError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    if family == "sd":
        tok = _bpe(300, max_len)
        text = _eager(CLIPTextModel(_clip_config(tok, d_text, text_layers, n_heads, max_len, mlp_ratio=mlp_ratio)))
        return diffusers.StableDiffusionPipeline(
            vae=_vae(), text_encoder=text, tokenizer=tok, unet=_unet(d_text, sample, unet_channels).eval(),
            scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                              clip_sample=False, set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if family == "sdxl":
        tok = _bpe(300, max_len)
        tok2 = _bpe(300, max_len)
        text = _eager(CLIPTextModel(_clip_config(tok, d_text, text_layers, n_heads, max_len)))
        text2 = _eager(CLIPTextModelWithProjection(_clip_config(tok2, d_text, text_layers, n_heads, max_len, proj=d_text)))
        unet = _unet(
            2 * d_text, sample, unet_channels, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + d_text, transformer_layers_per_block=(2, 1),
            use_linear_projection=True,
        ).eval()
        return diffusers.StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=text, text_encoder_2=text2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
            scheduler=diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                       beta_end=0.012, timestep_spacing="leading", steps_offset=1),
            force_zeros_for_empty_prompt=True,
        )
    if family == "altdiffusion":
        from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
            RobertaSeriesConfig, RobertaSeriesModelWithTransformation,
        )

        tok = _unigram(300, max_len, "xlmr")
        cfg = RobertaSeriesConfig(
            vocab_size=len(tok), hidden_size=d_text, num_hidden_layers=text_layers, num_attention_heads=2,
            intermediate_size=2 * d_text, max_position_embeddings=max_len + 2, project_dim=d_text,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            type_vocab_size=1, layer_norm_eps=1e-5,
        )
        text = _eager(RobertaSeriesModelWithTransformation(cfg))
        return diffusers.AltDiffusionPipeline(
            vae=_vae(), text_encoder=text, tokenizer=tok, unet=_unet(d_text, sample, unet_channels).eval(),
            scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                              clip_sample=False, set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    from transformers import T5Config, T5EncoderModel

    def t5_encoder(tok3: Any) -> Any:
        return _eager(T5EncoderModel(T5Config(
            vocab_size=len(tok3), d_model=2 * d_text, d_kv=16, d_ff=4 * d_text, num_layers=text_layers, num_heads=2,
            feed_forward_proj="gated-gelu", pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
            decoder_start_token_id=tok3.pad_token_id, relative_attention_num_buckets=8,
        )))

    if family == "flux":
        # FLUX: CLIP (pooled only) + T5, double- and single-stream MMDiT blocks, 2×2-packed latents.
        tok = _bpe(300, max_len)
        tok2 = _unigram(300, max_len, "t5")
        text = _eager(CLIPTextModel(_clip_config(tok, d_text, text_layers, n_heads, max_len)))
        transformer = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=2 * d_text, pooled_projection_dim=d_text,
            guidance_embeds=False, axes_dims_rope=(2, 2, 4),
        ).eval()
        return diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), text_encoder=text, tokenizer=tok,
            text_encoder_2=t5_encoder(tok2), tokenizer_2=tok2, transformer=transformer,
            vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        )
    # sd3: two CLIPs with projection + T5 encoder, MMDiT denoiser, flow-matching scheduler.

    tok = _bpe(300, max_len)
    tok2 = _bpe(300, max_len)
    tok3 = _unigram(300, max_len, "t5")
    text = _eager(CLIPTextModelWithProjection(_clip_config(tok, d_text, text_layers, n_heads, max_len)))
    text2 = _eager(CLIPTextModelWithProjection(_clip_config(tok2, d_text, text_layers, n_heads, max_len)))
    t5 = t5_encoder(tok3)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=2 * d_text, pooled_projection_dim=2 * d_text,
        out_channels=4,
    ).eval()
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=text, tokenizer=tok, text_encoder_2=text2, tokenizer_2=tok2,
        text_encoder_3=t5, tokenizer_3=tok3,
    )


def tiny(family: str = "sd", seed: int = 0, *, text_layers: int = 2, d_text: int = 32, dtype: Any = None,
         **sizes: Any):
    """A tiny random `interp.Model` of `family` ("sd", "sdxl", "altdiffusion", "sd3", "flux"), offline.

    Defaults: 2 steps, guidance 7.5 (1.0 would skip classifier-free guidance; FLUX's guidance is
    its embedded guidance, unused by this schnell-like tiny model: pass `true_cfg_scale` and a
    `negative_prompt` for real CFG), size = UNet sample × VAE scale (16 px; FLUX 16 px too).
    Every tiny text encoder takes at most 16 tokens (`max_len`, with BOS/EOS); longer prompts
    raise PromptTooLongError unless truncate=True.
    `dtype`: torch.float32 (default), torch.float16 or torch.bfloat16; the weights are drawn in
    float32 with `seed` and then cast (`Model.to(dtype)`), so every dtype has the same weights
    up to rounding.
    """
    if not isinstance(family, str):
        raise CultureLensError(f"tiny: family must be a string (one of {', '.join(FAMILIES)}), got {family!r}")
    if not is_int(seed):
        raise CultureLensError(f"tiny: seed must be an integer, got {seed!r}")
    positive_int(text_layers, "tiny: text_layers")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if dtype is not None and dtype not in dtypes:
        raise CultureLensError(f"tiny: dtype={dtype!r}; use one of torch.float32, torch.float16, torch.bfloat16")
    pipe = build_pipeline(family, seed, text_layers=text_layers, d_text=d_text, **sizes)
    pipe.set_progress_bar_config(disable=True)
    defaults: dict[str, Any] = {"steps": 2, "guidance": 7.5}
    if _ALIASES.get(family, family) == "flux":
        defaults.update(height=16, width=16)
    model = Model.from_pipeline(pipe, defaults=defaults)
    return model if dtype is None or dtype == torch.float32 else model.to(dtype)
