"""transformer_lens `TransformerBridge` over a pipeline's text encoder, for encoder-only analysis.

transformer_lens 4 has no adapter for CLIP's text tower, for AltDiffusion's XLM-R
(`RobertaSeriesModelWithTransformation`, which has no LM head) or for a bare BERT-family encoder
(`BertModel` such as multilingual-e5-small, `XLMRobertaModel`: its BERT adapter expects
`BertForMaskedLM`'s `bert.` root and head), so this module registers small
architecture adapters and boots a bridge on a *deep copy* of the encoder: booting swaps modules in
place, and the pipeline must keep its own untouched modules. Use it for `run_with_cache`-style
work with standard hook names (`blocks.{l}.hook_resid_post`, `blocks.{l}.attn.hook_pattern`, ...);
`interp.capture` (nnsight) remains the engine for the pipeline itself. Both are tested against
plain transformers outputs (`hidden_states`, `attentions`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from interp.errors import UnsupportedModelError

CLIP_ARCH = "CultureLensCLIPText"
XLMR_ARCH = "CultureLensXLMR"
BERT_ARCH = "CultureLensBERTFamily"
_registered = False


def _qkvo_conversions(n_heads: int) -> dict[str, Any]:
    from transformer_lens.conversion_utils.conversion_steps import RearrangeTensorConversion
    from transformer_lens.conversion_utils.param_processing_conversion import ParamProcessingConversion

    def conv(pattern: str) -> Any:
        return ParamProcessingConversion(tensor_conversion=RearrangeTensorConversion(pattern, h=n_heads))

    out = {f"blocks.{{i}}.attn.{x}.weight": conv("(h d_head) d_model -> h d_model d_head") for x in "qkv"}
    out.update({f"blocks.{{i}}.attn.{x}.bias": conv("(h d_head) -> h d_head") for x in "qkv"})
    out["blocks.{i}.attn.o.weight"] = conv("d_model (h d_head) -> h d_head d_model")
    return out


def _register() -> None:
    """Define and register the two adapters (once, lazily: transformer_lens is a heavy import)."""
    global _registered
    if _registered:
        return
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.model_bridge.generalized_components import (
        AttentionBridge, BlockBridge, EmbeddingBridge, LinearBridge, MLPBridge, NormalizationBridge,
        PosEmbedBridge,
    )
    from transformer_lens.model_bridge.supported_architectures.bert import BertArchitectureAdapter
    from transformer_lens.model_bridge.supported_architectures.roberta import RobertaArchitectureAdapter

    class CLIPTextAdapter(ArchitectureAdapter):
        """CLIP text tower: pre-LN causal blocks `encoder.layers[i]` (transformers 5 layout)."""

        supports_generation = False
        root = ""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.cfg.normalization_type = "LN"
            self.cfg.positional_embedding_type = "standard"
            self.cfg.final_rms = False
            self.cfg.gated_mlp = False
            self.cfg.attn_only = False
            self.cfg.attention_dir = "causal"
            self.weight_processing_conversions = _qkvo_conversions(self.cfg.n_heads)
            root = self.root
            self.component_mapping = {
                "embed": EmbeddingBridge(name=f"{root}embeddings.token_embedding"),
                "pos_embed": PosEmbedBridge(name=f"{root}embeddings.position_embedding"),
                "blocks": BlockBridge(
                    name=f"{root}encoder.layers",
                    submodules={
                        "ln1": NormalizationBridge(name="layer_norm1", config=self.cfg,
                                                   use_native_layernorm_autograd=True),
                        "attn": AttentionBridge(name="self_attn", config=self.cfg, submodules={
                            "q": LinearBridge(name="q_proj"), "k": LinearBridge(name="k_proj"),
                            "v": LinearBridge(name="v_proj"), "o": LinearBridge(name="out_proj")}),
                        "ln2": NormalizationBridge(name="layer_norm2", config=self.cfg,
                                                   use_native_layernorm_autograd=True),
                        "mlp": MLPBridge(name="mlp", config=self.cfg, submodules={
                            "in": LinearBridge(name="fc1"), "out": LinearBridge(name="fc2")}),
                    },
                ),
                "ln_final": NormalizationBridge(name=f"{root}final_layer_norm", config=self.cfg,
                                                use_native_layernorm_autograd=True),
            }

    class XLMRAdapter(RobertaArchitectureAdapter):
        """AltDiffusion's XLM-R: RoBERTa blocks under `roberta.`, no LM head."""

        supports_generation = False

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            for key in ("mlm_head", "unembed", "ln_final"):
                self.component_mapping.pop(key, None)

        def prepare_model(self, hf_model: Any) -> None:
            table = hf_model.roberta.embeddings.position_embeddings
            self.cfg.n_ctx = table.num_embeddings - ((table.padding_idx or 0) + 1)

    class BertFamilyAdapter(BertArchitectureAdapter):
        """A bare BERT-family encoder (`BertModel`, e.g. multilingual-e5-small, or `XLMRobertaModel`):
        BERT's blocks at the root (`encoder.layer`, no `bert.` prefix), no MLM head."""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            for key in ("mlm_head", "unembed", "ln_final"):
                self.component_mapping.pop(key, None)
            for comp in self.component_mapping.values():
                if comp.name.startswith("bert."):
                    comp.name = comp.name[len("bert."):]

        def prepare_model(self, hf_model: Any) -> None:
            # No `bert.` heads to adjust (the parent looks for them). XLM-R reserves padding_idx + 1
            # position rows (its positions start there); BERT's start at 0.
            table = hf_model.embeddings.position_embeddings
            offset = (table.padding_idx or 0) + 1 if hf_model.config.model_type in ("xlm-roberta", "roberta") else 0
            self.cfg.n_ctx = table.num_embeddings - offset

    class CLIPTextWithProjectionAdapter(CLIPTextAdapter):
        """`CLIPTextModelWithProjection` keeps the same tower under `text_model.`."""

        root = "text_model."

    for name, cls in ((CLIP_ARCH, CLIPTextAdapter), (CLIP_ARCH + "WithProjection", CLIPTextWithProjectionAdapter),
                      (XLMR_ARCH, XLMRAdapter), (BERT_ARCH, BertFamilyAdapter)):
        factory.SUPPORTED_ARCHITECTURES[name] = cls
        factory.ArchitectureAdapterFactory.register_adapter(name, cls)
    _registered = True


def bridge(model: Any, encoder: str = "text") -> Any:
    """Boot a `TransformerBridge` on a copy of `model`'s text encoder (CLIP or XLM-R)."""
    from transformer_lens.model_bridge import TransformerBridge

    enc = model.encoder(encoder)
    arch = {"clip": CLIP_ARCH, "xlmr": XLMR_ARCH, "bert": BERT_ARCH}.get(enc.arch)
    if arch is None:
        raise UnsupportedModelError(f"no TransformerBridge adapter for {encoder} ({enc.arch}); CLIP, XLM-R and BERT "
                                    "have one")
    if enc.arch == "xlmr" and not hasattr(enc.module, "roberta"):
        arch = BERT_ARCH  # a bare XLMRobertaModel (encoder-only folder): BERT's layout at the root
    _register()
    hf = copy.deepcopy(enc.module).eval()
    # The bridge re-creates a tokenizer "with BOS" from its hub name unless told it already adds one.
    tok = copy.deepcopy(enc.tokenizer)
    tok.init_kwargs.setdefault("name_or_path", "culturelens")
    tok.init_kwargs["add_bos_token"] = True
    if enc.arch == "clip" and hasattr(hf, "text_model"):
        arch += "WithProjection"
    overrides: dict[str, Any] = {"architectures": [arch]}
    return TransformerBridge.boot_transformers(f"culturelens-{enc.arch}", hf_model=hf, tokenizer=tok,
                                               hf_config_overrides=overrides)


def run_with_cache(model: Any, prompts: str | Sequence[str], encoder: str = "text",
                   names: Sequence[str] | None = None, br: Any = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """Tokenise as the pipeline does and run the bridge with a cache -> (output, {hook name: tensor})."""
    br = br if br is not None else bridge(model, encoder)
    enc = model.encoder(encoder)
    batch = model.tokenize(prompts, encoder)
    kwargs: dict[str, Any] = {}
    if enc.uses_attention_mask or enc.arch in ("xlmr", "bert"):
        kwargs["attention_mask"] = batch["attention_mask"]
    filt = (lambda n: n in set(names)) if names is not None else None
    with torch.no_grad():
        out, cache = br.run_with_cache(batch["input_ids"], names_filter=filt, **kwargs)
    return out, {k: cache[k] for k in cache.keys()}
