"""Real-format judge folders at published sizes, random weights, built offline: CLIP ViT-L/14
for `circuits.data.judges.clip` and Qwen2-VL-2B-Instruct for `circuits.data.judges.vlm`, each with its
published tokenizer layout, image processor settings and (Qwen2-VL) chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from interp.zoo import tokenizers as toks
from interp.zoo.build import judge_module

# Qwen2-VL-Instruct's chat template (tokenizer_config.json / chat_template.json of
# Qwen/Qwen2-VL-2B-Instruct): a default system turn, <|vision_start|><|image_pad|><|vision_end|>
# per image, <|im_start|>assistant\n as the generation prompt.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_clip(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """openai/clip-vit-large-patch14 as a folder: CLIPModel, CLIP tokenizer (77 tokens, pad
    <|endoftext|>), CLIPImageProcessor (224, OpenAI mean/std). `overrides` change config keys."""
    from transformers import CLIPImageProcessor

    path = Path(path)
    model = judge_module("clip-vit-l-14", "cpu", dtype, seed, **overrides)
    model.save_pretrained(path)
    toks.clip(max_length=77).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD).save_pretrained(path)
    return path


def save_qwen2_vl_processor(path: str | Path, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> Path:
    """Qwen2-VL's processor files as the published folder has them: preprocessor_config.json
    (patch 14, merge 2, OpenAI mean/std; processor_class Qwen2VLProcessor), chat_template.json
    and the tokenizer (Qwen2 layout). Written file by file: building the processor object
    itself needs torchvision in transformers 5 (for its video processor)."""
    from transformers import Qwen2VLImageProcessor

    path = Path(path)
    image = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
                                  temporal_patch_size=2, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    image.save_pretrained(path)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    cfg.update(processor_class="Qwen2VLProcessor", image_processor_type="Qwen2VLImageProcessor")
    (path / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, indent=2))
    toks.qwen2().save_pretrained(path)
    return path


def build_qwen2_vl(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                   max_pixels: int = 28 * 28 * 1280, **overrides: Any) -> Path:
    """Qwen/Qwen2-VL-2B-Instruct as a folder (model + processor + chat template). `overrides`
    change config keys, e.g. `text_config={"num_hidden_layers": 2}` for a quick test with the
    same tokenizer, template and processor; `max_pixels` bounds the image tokens."""
    path = Path(path)
    model = judge_module("qwen2-vl-2b", "cpu", dtype, seed, **overrides)
    model.save_pretrained(path)
    save_qwen2_vl_processor(path, max_pixels=max_pixels)
    return path
