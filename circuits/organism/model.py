"""The CultureWorld model: tokenizer, CLIP text encoder, pixel-space UNet and scheduler configs.

All parts are stock Hugging Face / diffusers classes so the saved folder opens like any
pipeline. The UNet works on 3×32×32 pixels directly (no VAE); the text encoder's pooled
output is added to the timestep embedding (`class_embed_type="projection"`, as SDXL does),
which the feasibility run found speeds learning up a lot.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from circuits.organism.prompts import training_corpus
from interp.model.tokenizer_training import train_bpe

__all__ = [
    "MAX_LENGTH", "TEXT_DIM", "text_config", "unet_config", "scheduler_config", "GENERATION_DEFAULTS",
    "build_tokenizer", "build_text_encoder", "build_unet", "build_scheduler", "train_scheduler",
]

MAX_LENGTH = 24  # CLIP positions; the longest training prompt is 15 tokens
TEXT_DIM = 128
VOCAB_SIZE = 1024  # an upper bound: BPE stops when the corpus has no more pairs to merge (~915)

GENERATION_DEFAULTS: dict[str, Any] = {"steps": 20, "guidance": 1.0, "height": 32, "width": 32, "scheduler": "DDIMScheduler"}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the organism's prompt corpus (deterministic)."""
    return train_bpe(sorted(set(training_corpus())), VOCAB_SIZE, model_max_length=MAX_LENGTH)


def text_config(tokenizer: PreTrainedTokenizerFast) -> CLIPTextConfig:
    """4 layers, width 128, FFN 256, 4 heads, 24 positions (about 0.65 M parameters)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def unet_config() -> dict[str, Any]:
    """Pixel-space UNet: 32→16→8 with text cross-attention at 16×16, 8×8 and mid (1.2 M params).

    16 channels at full resolution (the feasibility run used 32): the full-resolution
    convolutions dominate the CPU cost and the images are flat colours and 2-px patterns.

    `only_cross_attention` makes both attention layers of each block attend to the text
    (no 256×256 self-attention at 16×16): the run is CPU-bound and the conv receptive field
    already spans the image at 8×8. `attention_head_dim` is diffusers' legacy name for the
    number of heads.
    """
    return dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        only_cross_attention=True,
        norm_num_groups=8,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=TEXT_DIM,
    )


def scheduler_config() -> dict[str, Any]:
    """v-prediction on a cosine noise schedule; images live in [-1, 1]."""
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(text_config(tokenizer))


def build_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed + 1)
    return UNet2DConditionModel(**unet_config())


def build_scheduler() -> DDIMScheduler:
    """The sampling scheduler shipped in the pipeline folder."""
    return DDIMScheduler(**scheduler_config())


def train_scheduler() -> DDPMScheduler:
    """The same noise schedule as a DDPM scheduler (for `add_noise` / `get_velocity`)."""
    cfg = scheduler_config()
    cfg.pop("timestep_spacing")
    return DDPMScheduler(**cfg)
