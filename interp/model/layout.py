"""Architecture layouts: where each text-encoder architecture keeps its layers and, per site kind,
which module to read and what to read there; which transformers class is which architecture.

The lowest module of `interp.model`: `sites` resolves site names with it, `model` classifies a
pipeline's encoders with it, `loading` checks a folder's encoders against it."""

from __future__ import annotations

from typing import Any

# Where each architecture keeps its layers and, per site kind, (module path in a layer, what to read).
# "out": the module output (first element when it is a tuple); "outK": element K of a tuple output;
# "in0": the first positional input (the MLP's post-activation is the input of its down-projection).
# attn_q/k/v/z are Linear boundaries: the q/k/v projections' outputs and the input of the output
# projection, [B, S, H·d] in the module, seen per head as [B, S, H, d] (interp.model.sites). They
# leave the attention math (scaling, masks, T5's position bias, any kernel) untouched.
# "order": the order in which one layer computes its sites (nnsight reads them in that order).
# XLM-R/BERT return the pattern from `attention.self` before `attention.output.dense` takes z;
# CLIP/T5 take z inside the attention module, which returns the pattern afterwards.
ARCH_LAYOUT: dict[str, dict[str, Any]] = {
    "clip": {
        "layers": ("encoder.layers", "text_model.encoder.layers"),
        "resid_post": ("", "out"),
        "pattern": ("self_attn", "out1"),
        "attn_out": ("self_attn", "out0"),
        "mlp_post": ("mlp.fc2", "in0"),
        "attn_q": ("self_attn.q_proj", "out"),
        "attn_k": ("self_attn.k_proj", "out"),
        "attn_v": ("self_attn.v_proj", "out"),
        "attn_z": ("self_attn.out_proj", "in0"),
        "order": ("attn_q", "attn_k", "attn_v", "attn_z", "pattern", "attn_out", "mlp_post", "resid_post"),
    },
    "xlmr": {
        "layers": ("roberta.encoder.layer", "encoder.layer"),
        "resid_post": ("", "out"),
        "pattern": ("attention.self", "out1"),
        "attn_out": ("attention.output.dense", "out"),
        "mlp_post": ("intermediate", "out"),
        "attn_q": ("attention.self.query", "out"),
        "attn_k": ("attention.self.key", "out"),
        "attn_v": ("attention.self.value", "out"),
        "attn_z": ("attention.output.dense", "in0"),
        "order": ("attn_q", "attn_k", "attn_v", "pattern", "attn_z", "attn_out", "mlp_post", "resid_post"),
    },
    # BertModel (e.g. multilingual-e5-small, interp.zoo.e5_small): XLM-R's layer, no `roberta.` root.
    "bert": {
        "layers": ("encoder.layer", "bert.encoder.layer"),
        "resid_post": ("", "out"),
        "pattern": ("attention.self", "out1"),
        "attn_out": ("attention.output.dense", "out"),
        "mlp_post": ("intermediate", "out"),
        "attn_q": ("attention.self.query", "out"),
        "attn_k": ("attention.self.key", "out"),
        "attn_v": ("attention.self.value", "out"),
        "attn_z": ("attention.output.dense", "in0"),
        "order": ("attn_q", "attn_k", "attn_v", "pattern", "attn_z", "attn_out", "mlp_post", "resid_post"),
    },
    "t5": {
        "layers": ("encoder.block",),
        "resid_post": ("", "out0"),
        "pattern": ("layer.0.SelfAttention", "out2"),
        "attn_out": ("layer.0.SelfAttention", "out0"),
        "mlp_post": ("layer.1.DenseReluDense.wo", "in0"),
        "attn_q": ("layer.0.SelfAttention.q", "out"),
        "attn_k": ("layer.0.SelfAttention.k", "out"),
        "attn_v": ("layer.0.SelfAttention.v", "out"),
        "attn_z": ("layer.0.SelfAttention.o", "in0"),
        "order": ("attn_q", "attn_k", "attn_v", "attn_z", "pattern", "attn_out", "mlp_post", "resid_post"),
    },
}

ARCH_OF_CLASS = {
    "CLIPTextModel": "clip",
    "CLIPTextModelWithProjection": "clip",
    "RobertaSeriesModelWithTransformation": "xlmr",
    "XLMRobertaModel": "xlmr",
    "T5EncoderModel": "t5",
}
# An encoder-only Model also opens a bare BertModel (no T2I pipeline here conditions on one).
ENCODER_ONLY_ARCH_OF_CLASS = {**ARCH_OF_CLASS, "BertModel": "bert"}

# Encoder-only folders (a transformers text-encoder folder, no pipeline): config `model_type` ->
# the class that opens it. A full T5 checkpoint opens as its encoder half, as SD3 uses it.
ENCODER_CLASS_OF_TYPE = {
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
    "clip_text_model": "CLIPTextModel",
    "t5": "T5EncoderModel",
}


def get_path(root: Any, path: str) -> Any:
    """`root.a.b.0.c` by a dotted path ("" is root); integer parts index into ModuleLists."""
    obj = root
    for part in filter(None, path.split(".")):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
