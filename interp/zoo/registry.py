"""Published configurations of the pipelines (and judges) a researcher runs first.

Every number here is copied from a public config file; `source` names the file. Parameter
counts in `published` are the figures the model cards / papers state, with the tolerance their
rounding allows: tests check that what the registry builds matches them, which catches a wrong
width, depth or head layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HF = "https://huggingface.co/"

# Text encoders -------------------------------------------------------------------------------
CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
OPENCLIP_H = dict(  # laion ViT-H-14 text tower as shipped in SD 2.x (23 of its 24 layers)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
OPENCLIP_BIGG = dict(  # laion ViT-bigG-14 text tower (SDXL / SD3 text_encoder_2)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
XLMR_ALT = dict(  # BAAI/AltDiffusion-m9 text_encoder: XLM-R large + a 1024->768 transformation
    vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    max_position_embeddings=514, type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, project_dim=768,
    pooler_fn="cls", learn_encoder=True, use_attention_mask=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
T5_XXL = dict(  # google/t5-v1_1-xxl encoder (SD3 text_encoder_3, FLUX text_encoder_2)
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=False, use_cache=False,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
)

# Denoisers and VAEs --------------------------------------------------------------------------
_SD_UNET = dict(
    in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    mid_block_scale_factor=1,
)
SD15_UNET = dict(_SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD21_UNET = dict(_SD_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SD3_MEDIUM_MMDIT = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)
FLUX1_MMDIT = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
    axes_dims_rope=[16, 56, 56],
)
_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", norm_num_groups=32,
)
SD_VAE = dict(_VAE, latent_channels=4, sample_size=512, scaling_factor=0.18215)
SDXL_VAE = dict(_VAE, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SD3_VAE = dict(_VAE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
FLUX_VAE = dict(_VAE, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)

_SCALED_LINEAR = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PNDM = ("PNDMScheduler", dict(_SCALED_LINEAR, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1))
DDIM_V = ("DDIMScheduler", dict(_SCALED_LINEAR, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="v_prediction"))
EULER_XL = ("EulerDiscreteScheduler", dict(_SCALED_LINEAR, steps_offset=1, timestep_spacing="leading",
                                           interpolation_type="linear", prediction_type="epsilon"))
FLOW_SD3 = ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0))
FLOW_SCHNELL = ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=1.0,
                                                        use_dynamic_shifting=False))


@dataclass(frozen=True)
class Component:
    """One model of a pipeline: its class, its published config and where that config is."""

    cls: str
    config: dict[str, Any]
    source: str
    published: tuple[float, float] | None = None  # (parameter count stated by the source, relative tolerance)
    published_source: str = ""


@dataclass(frozen=True)
class Tok:
    """A tokenizer built by `interp.zoo.tokenizers.<kind>(**kwargs)`."""

    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Entry:
    """A published pipeline: components (model_index names), tokenizers, scheduler, defaults."""

    name: str
    family: str  # interp family ("sd", "sdxl", "altdiffusion", "sd3", "flux")
    pipeline: str  # diffusers pipeline class
    source: str
    components: dict[str, Component]
    tokenizers: dict[str, Tok]
    scheduler: tuple[str, dict[str, Any]]
    defaults: dict[str, Any]  # native generation settings (culturelens.json)
    notes: str = ""

    def sources(self) -> dict[str, str]:
        """Every component's source line."""
        out = {"pipeline": self.source}
        out.update({k: c.source for k, c in self.components.items()})
        out.update({k: t.source for k, t in self.tokenizers.items()})
        return out


def _clip_l(source: str, with_projection: bool = False) -> Component:
    n = 123_650_304 if with_projection else 123_060_480
    return Component("CLIPTextModelWithProjection" if with_projection else "CLIPTextModel", CLIP_L, source,
                     (123e6, 0.01), "SD v1 model card: '123M text encoder' (CLIP ViT-L/14)" +
                     (" (+0.6M projection)" if with_projection else "") + f"; exact {n:,}")


def _bigg(source: str) -> Component:
    return Component("CLIPTextModelWithProjection", OPENCLIP_BIGG, source, (695e6, 0.005),
                     "OpenCLIP ViT-bigG/14 text tower: 694.7M")


def _sd_unet_published() -> tuple[tuple[float, float], str]:
    return (860e6, 0.005), "SD v1 model card: 'an 860M UNet'"


SD15 = Entry(
    name="sd15", family="sd", pipeline="StableDiffusionPipeline",
    source=HF + "runwayml/stable-diffusion-v1-5 (model_index.json; model card)",
    components={
        "text_encoder": _clip_l(HF + "runwayml/stable-diffusion-v1-5/blob/main/text_encoder/config.json"),
        "unet": Component("UNet2DConditionModel", SD15_UNET,
                          HF + "runwayml/stable-diffusion-v1-5/blob/main/unet/config.json", *_sd_unet_published()),
        "vae": Component("AutoencoderKL", SD_VAE, HF + "runwayml/stable-diffusion-v1-5/blob/main/vae/config.json",
                         (83.7e6, 0.005), "SD VAE (kl-f8): 83.7M"),
    },
    tokenizers={"tokenizer": Tok("clip", dict(max_length=77, pad="<|endoftext|>"),
                                 HF + "runwayml/stable-diffusion-v1-5/tree/main/tokenizer (pad <|endoftext|>)")},
    scheduler=PNDM, defaults={"steps": 50, "guidance": 7.5, "height": 512, "width": 512},
)

SD21 = Entry(
    name="sd21", family="sd", pipeline="StableDiffusionPipeline",
    source=HF + "stabilityai/stable-diffusion-2-1 (model_index.json; model card: 768-v)",
    components={
        "text_encoder": Component("CLIPTextModel", OPENCLIP_H,
                                  HF + "stabilityai/stable-diffusion-2-1/blob/main/text_encoder/config.json",
                                  (340e6, 0.01), "OpenCLIP ViT-H/14 text tower minus its last layer: 340M"),
        "unet": Component("UNet2DConditionModel", SD21_UNET,
                          HF + "stabilityai/stable-diffusion-2-1/blob/main/unet/config.json",
                          (865e6, 0.005), "SD 2 model card: 865M UNet"),
        "vae": Component("AutoencoderKL", dict(SD_VAE, sample_size=768),
                         HF + "stabilityai/stable-diffusion-2-1/blob/main/vae/config.json", (83.7e6, 0.005),
                         "SD VAE (kl-f8): 83.7M"),
    },
    tokenizers={"tokenizer": Tok("clip", dict(max_length=77, pad="!"),
                                 HF + "stabilityai/stable-diffusion-2-1/tree/main/tokenizer (pad '!')")},
    scheduler=DDIM_V, defaults={"steps": 50, "guidance": 7.5, "height": 768, "width": 768},
)

SDXL = Entry(
    name="sdxl", family="sdxl", pipeline="StableDiffusionXLPipeline",
    source=HF + "stabilityai/stable-diffusion-xl-base-1.0 (model_index.json; SDXL report arXiv 2307.01952)",
    components={
        "text_encoder": _clip_l(HF + "stabilityai/stable-diffusion-xl-base-1.0/blob/main/text_encoder/config.json"),
        "text_encoder_2": _bigg(HF + "stabilityai/stable-diffusion-xl-base-1.0/blob/main/text_encoder_2/config.json"),
        "unet": Component("UNet2DConditionModel", SDXL_UNET,
                          HF + "stabilityai/stable-diffusion-xl-base-1.0/blob/main/unet/config.json",
                          (2.567e9, 0.005), "SDXL report, Table 1: 2.6B UNet (2,567M)"),
        "vae": Component("AutoencoderKL", SDXL_VAE,
                         HF + "stabilityai/stable-diffusion-xl-base-1.0/blob/main/vae/config.json",
                         (83.7e6, 0.005), "SD VAE architecture: 83.7M"),
    },
    tokenizers={
        "tokenizer": Tok("clip", dict(max_length=77, pad="<|endoftext|>"),
                         HF + "stabilityai/stable-diffusion-xl-base-1.0/tree/main/tokenizer (pad <|endoftext|>)"),
        "tokenizer_2": Tok("clip", dict(max_length=77, pad="!"),
                           HF + "stabilityai/stable-diffusion-xl-base-1.0/tree/main/tokenizer_2 (pad '!')"),
    },
    scheduler=EULER_XL, defaults={"steps": 50, "guidance": 5.0, "height": 1024, "width": 1024},
)

ALT_M9 = Entry(
    name="altdiffusion-m9", family="altdiffusion", pipeline="AltDiffusionPipeline",
    source=HF + "BAAI/AltDiffusion-m9 (model_index.json; model card: XLM-R large text encoder, 9 languages)",
    components={
        "text_encoder": Component("RobertaSeriesModelWithTransformation", XLMR_ALT,
                                  HF + "BAAI/AltDiffusion-m9/blob/main/text_encoder/config.json",
                                  (560e6, 0.01), "XLM-R large: 560M (Conneau et al. 2020) + 0.8M projection"),
        "unet": Component("UNet2DConditionModel", SD15_UNET, HF + "BAAI/AltDiffusion-m9/blob/main/unet/config.json",
                          *_sd_unet_published()),
        "vae": Component("AutoencoderKL", SD_VAE, HF + "BAAI/AltDiffusion-m9/blob/main/vae/config.json",
                         (83.7e6, 0.005), "SD VAE (kl-f8): 83.7M"),
    },
    tokenizers={"tokenizer": Tok("xlmr", dict(max_length=77),
                                 HF + "BAAI/AltDiffusion-m9/tree/main/tokenizer (XLMRobertaTokenizer, 77 tokens)")},
    scheduler=PNDM, defaults={"steps": 50, "guidance": 7.5, "height": 512, "width": 512},
    notes="max_position_embeddings 514 (XLM-R), but the pipeline tokenises to 77. Written from memory of the "
          "published files, which could not be fetched here: the scheduler (PNDM, as SD 1.x) and "
          "has_pre_transformation (unset = False: the UNet reads the projected last layer) are unverified.",
)

SD3_MEDIUM = Entry(
    name="sd3-medium", family="sd3", pipeline="StableDiffusion3Pipeline",
    source=HF + "stabilityai/stable-diffusion-3-medium-diffusers (model_index.json; SD3 paper arXiv 2403.03206)",
    components={
        "text_encoder": _clip_l(HF + "stabilityai/stable-diffusion-3-medium-diffusers/blob/main/text_encoder/config.json",
                                with_projection=True),
        "text_encoder_2": _bigg(HF + "stabilityai/stable-diffusion-3-medium-diffusers/blob/main/text_encoder_2/config.json"),
        "text_encoder_3": Component("T5EncoderModel", T5_XXL,
                                    HF + "stabilityai/stable-diffusion-3-medium-diffusers/blob/main/text_encoder_3/config.json",
                                    (4.76e9, 0.01), "T5 v1.1 XXL encoder: 4.7B (SD3 paper)"),
        "transformer": Component("SD3Transformer2DModel", SD3_MEDIUM_MMDIT,
                                 HF + "stabilityai/stable-diffusion-3-medium-diffusers/blob/main/transformer/config.json",
                                 (2.0e9, 0.03), "SD3 Medium model card: 2 billion parameter MMDiT"),
        "vae": Component("AutoencoderKL", SD3_VAE,
                         HF + "stabilityai/stable-diffusion-3-medium-diffusers/blob/main/vae/config.json",
                         (83.8e6, 0.01), "16-channel VAE: 83.8M"),
    },
    tokenizers={
        "tokenizer": Tok("clip", dict(max_length=77, pad="<|endoftext|>"),
                         HF + "stabilityai/stable-diffusion-3-medium-diffusers/tree/main/tokenizer"),
        "tokenizer_2": Tok("clip", dict(max_length=77, pad="!"),
                           HF + "stabilityai/stable-diffusion-3-medium-diffusers/tree/main/tokenizer_2 (pad '!')"),
        "tokenizer_3": Tok("t5", dict(max_length=512),
                           HF + "stabilityai/stable-diffusion-3-medium-diffusers/tree/main/tokenizer_3 "
                           "(T5TokenizerFast, model_max_length 512; the pipeline uses 256)"),
    },
    scheduler=FLOW_SD3, defaults={"steps": 28, "guidance": 7.0, "height": 1024, "width": 1024},
)

FLUX_SCHNELL = Entry(
    name="flux-schnell", family="flux", pipeline="FluxPipeline",
    source=HF + "black-forest-labs/FLUX.1-schnell (model_index.json; model card: 12B rectified flow transformer)",
    components={
        "text_encoder": _clip_l(HF + "black-forest-labs/FLUX.1-schnell/blob/main/text_encoder/config.json"),
        "text_encoder_2": Component("T5EncoderModel", T5_XXL,
                                    HF + "black-forest-labs/FLUX.1-schnell/blob/main/text_encoder_2/config.json",
                                    (4.76e9, 0.01), "T5 v1.1 XXL encoder: 4.7B"),
        "transformer": Component("FluxTransformer2DModel", FLUX1_MMDIT,
                                 HF + "black-forest-labs/FLUX.1-schnell/blob/main/transformer/config.json",
                                 (11.9e9, 0.01), "FLUX.1 model card: 12 billion parameter rectified flow transformer"),
        "vae": Component("AutoencoderKL", FLUX_VAE, HF + "black-forest-labs/FLUX.1-schnell/blob/main/vae/config.json",
                         (83.8e6, 0.01), "16-channel VAE: 83.8M"),
    },
    tokenizers={
        "tokenizer": Tok("clip", dict(max_length=77, pad="<|endoftext|>"),
                         HF + "black-forest-labs/FLUX.1-schnell/tree/main/tokenizer"),
        "tokenizer_2": Tok("t5", dict(max_length=512),
                           HF + "black-forest-labs/FLUX.1-schnell/tree/main/tokenizer_2 (schnell: max_sequence_length 256)"),
    },
    scheduler=FLOW_SCHNELL, defaults={"steps": 4, "guidance": 0.0, "height": 1024, "width": 1024},
)

PIPELINES: dict[str, Entry] = {e.name: e for e in (SD15, SD21, SDXL, ALT_M9, SD3_MEDIUM, FLUX_SCHNELL)}

# Judges ---------------------------------------------------------------------------------------
CLIP_VIT_L14 = Component(
    "CLIPModel",
    dict(text_config=dict(CLIP_L, pad_token_id=1), projection_dim=768, logit_scale_init_value=2.6592,
         vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768)),
    HF + "openai/clip-vit-large-patch14/blob/main/config.json", (428e6, 0.005),
    "CLIP ViT-L/14: 427.6M (model card / hub)",
)
QWEN2_VL_2B = Component(
    "Qwen2VLForConditionalGeneration",
    dict(text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                          num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
                          rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                          bos_token_id=151643, eos_token_id=151645),
         vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="quick_gelu"),
         image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
         tie_word_embeddings=True),
    HF + "Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json", (2.21e9, 0.01),
    "Qwen2-VL-2B-Instruct: 2.21B (hub)",
)
JUDGES: dict[str, Component] = {"clip-vit-l-14": CLIP_VIT_L14, "qwen2-vl-2b": QWEN2_VL_2B}
