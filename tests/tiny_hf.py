"""Builders of tiny, random, offline CLIP and LLaVA models for the data-area tests (judges,
fidelity, evaluate CLI), with tokenizers trained locally by interp.model.tokenizer_training.
Not a test file (tests/circuits/data/test_tiny_models.py tests these builders)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from circuits.data import culturebench as cb
from circuits.data.judges.clip import default_label_texts
from circuits.data.judges.vlm import OPTION_TEXT, QUESTION
from interp.model.tokenizer_training import train_bpe

CHAT_TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _image_processor(size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A 1-layer CLIPModel (text 32-d, vision 16x16 px, patch 8) saved with its tokenizer
    and image processor; the tokenizer is trained on the bundled prompts + judge labels."""
    corpus = [t for r in cb.bundled() for t in (r.modifier_noun, r.modifier_noun_en, r.noun_only)]
    corpus += [t for ts in default_label_texts().values() for t in ts]
    tok = train_bpe(corpus, 600, model_max_length=32)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=32, projection_dim=16,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _image_processor(16).save_pretrained(path)
    return path


def build_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A 1-layer LLaVA (CLIP vision 16x16 px + Llama 32-d) with a LlavaProcessor."""
    corpus = [QUESTION, *OPTION_TEXT.values(), "USER: ASSISTANT:", " ".join("ABCDEFGHIJKLMNOP")]
    tok = train_bpe(corpus, 300, lowercase=False, model_max_length=1024)
    tok.add_tokens(["<image>"], special_tokens=True)
    proc = LlavaProcessor(image_processor=_image_processor(16), tokenizer=tok, patch_size=8,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(path)
    proc.save_pretrained(path)
    return path
