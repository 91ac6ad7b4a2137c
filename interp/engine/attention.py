"""Our attention processors: diffusers' attention math with hook points for q, k, v, pattern, z.

Why our own: SDPA never forms the attention probabilities and the per-head output exists only
inside the processor, so q/k/v/z/pattern sites need the computation in our hands. Each class
below reproduces one diffusers processor line for line (diffusers 0.42.1: AttnProcessor2_0 for
UNet attention, JointAttnProcessor2_0 for SD3, FluxAttnProcessor for FLUX) and calls
`edit(hook, act)` at each hook point.

A processor is installed only on the modules a session names and only for the session (see
interp/engine/session.py). Per call, `wanted()` says which hooks are read and which are written
(`hook + WRITES`); three cases:
- nothing acts at this call (other steps, other branch): the original processor runs alone;
- hooks are only **read** (recorders, read-only interventions such as attribution's
  accumulators): the module's output is the original processor's output, computed by the very
  kernel it would use without culturelens, and q/k/v/pattern/z are formed on the side for the
  readers. So reading any site changes nothing, bit for bit, on any CPU and any kernel selection
  (reproducing the math is not enough: an eager softmax(q kᵀ) v and SDPA round differently);
- a hook is **written**: the output comes from our reproduction with the edited tensor; where the
  pattern is written the attention is computed eagerly (softmax(q kᵀ / √d) v, which agrees with
  SDPA to float rounding, not bit for bit), elsewhere SDPA runs as in diffusers.

Hooked layouts: q, k, v, z as [B, S, H, d]; pattern as [B, H, Q, K].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from interp.errors import UnsupportedModelError

Edit = Callable[[str, torch.Tensor], torch.Tensor]
Wanted = Callable[[], set[str]]
# In a `wanted` set, `hook + WRITES`: an intervention edits that hook at this call (a hook present
# without it is only read).
WRITES = "!"


def writes_any(want: set[str]) -> bool:
    """Whether any hook in `want` is written (else the call only reads)."""
    return any(w.endswith(WRITES) for w in want)

# Processor classes whose math we reproduce, per style.
SUPPORTED = {
    "unet": ("AttnProcessor2_0", "AttnProcessor"),
    "sd3": ("JointAttnProcessor2_0",),
    "flux": ("FluxAttnProcessor", "FluxAttnProcessor2_0"),
}


def style_of(family: str) -> str:
    return {"sd3": "sd3", "flux": "flux"}.get(family, "unet")


def check_supported(style: str, processor: Any, where: str) -> None:
    name = type(processor).__name__
    if name not in SUPPORTED[style]:
        raise UnsupportedModelError(
            f"{where}: attention processor {name} is not one culturelens reproduces "
            f"(q/k/v/z/pattern sites need {' or '.join(SUPPORTED[style])}); "
            "reset it with the denoiser's set_default_attn_processor() or read hook_out instead"
        )


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, edit: Edit, want: set[str],
            sdpa: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """[B, H, Q, d] x [B, H, K, d] -> [B, H, Q, d]. When the pattern is written: eagerly from the
    edited probabilities. When it is only read: the probabilities are formed for the reader and
    the output comes from `sdpa()`. In a read-only call nobody needs the output unless z is read:
    then None."""
    if "hook_pattern" in want:
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(dim=-1).to(q.dtype)
        edited = edit("hook_pattern", probs)
        if "hook_pattern" + WRITES in want:
            return edited @ v
    if not writes_any(want) and "hook_z" not in want:
        return None
    return sdpa()


def _heads_in(edit: Edit, hook: str, x: torch.Tensor) -> torch.Tensor:
    """Edit a [B, H, S, d] tensor in the hooked [B, S, H, d] layout; unchanged -> the same tensor."""
    t = x.transpose(1, 2)
    new = edit(hook, t)
    return x if new is t else new.transpose(1, 2)



def _split_heads(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, H*d] projections -> [B, H, N, d], with the module's q/k norms (as diffusers does)."""
    b, h = query.shape[0], attn.heads
    d = key.shape[-1] // h
    query, key, value = (x.view(b, -1, h, d).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value

class HookedAttnProcessor:
    """Base: holds the processor it replaces, and the session's `wanted`/`edit` callbacks."""

    style = ""

    def __init__(self, original: Any, wanted: Wanted, edit: Edit) -> None:
        self.original = original
        self.wanted = wanted
        self.edit = edit


class UNetAttnProcessor(HookedAttnProcessor):
    """diffusers' AttnProcessor2_0 (UNet self- and cross-attention) with hook points."""

    style = "unet"

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        want = self.wanted()
        if not writes_any(want):
            extra = {"temb": temb} if temb is not None else {}
            out = self.original(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                                attention_mask=attention_mask, **extra, **kwargs)
            if want:  # readers only: the output above stands; form what they read on the side
                self._math(attn, hidden_states, encoder_hidden_states, attention_mask, temb, want)
            return out
        return self._math(attn, hidden_states, encoder_hidden_states, attention_mask, temb, want)

    def _math(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
              attention_mask: torch.Tensor | None, temb: torch.Tensor | None, want: set[str]) -> torch.Tensor | None:
        """AttnProcessor2_0 with hook points; None once the readers of a read-only call are served."""
        edit = self.edit
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = _split_heads(attn, query, key, value)
        query, key, value = (_heads_in(edit, h, x) for h, x in (("hook_q", query), ("hook_k", key),
                                                               ("hook_v", value)))
        hidden_states = _attend(query, key, value, attention_mask, edit, want, lambda: F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False))
        if hidden_states is None:
            return None
        z = edit("hook_z", hidden_states.transpose(1, 2))
        if not writes_any(want):
            return None
        hidden_states = z.reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SD3AttnProcessor(HookedAttnProcessor):
    """diffusers' JointAttnProcessor2_0 (SD3 joint attention, sequence [image; text]) with hook points."""

    style = "sd3"

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        want = self.wanted()
        if not writes_any(want):
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
            if want:  # readers only: the output above stands; form what they read on the side
                self._math(attn, hidden_states, encoder_hidden_states, want)
            return out
        return self._math(attn, hidden_states, encoder_hidden_states, want)

    def _math(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
              want: set[str]) -> Any:
        """JointAttnProcessor2_0 with hook points; None once the readers of a read-only call are served."""
        edit = self.edit
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = _split_heads(attn, query, key, value)
        if encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ek = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ev = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query = torch.cat([query, eq], dim=2)
            key = torch.cat([key, ek], dim=2)
            value = torch.cat([value, ev], dim=2)
        query, key, value = (_heads_in(edit, h, x) for h, x in (("hook_q", query), ("hook_k", key),
                                                               ("hook_v", value)))
        hidden_states = _attend(query, key, value, None, edit, want, lambda: F.scaled_dot_product_attention(
            query, key, value, dropout_p=0.0, is_causal=False))
        if hidden_states is None:
            return None
        z = edit("hook_z", hidden_states.transpose(1, 2))
        if not writes_any(want):
            return None
        hidden_states = z.reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]], hidden_states[:, residual.shape[1]:])
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class FluxAttnProcessor(HookedAttnProcessor):
    """diffusers' FluxAttnProcessor (sequence [text; image]; q/k hooked after RoPE) with hook points."""

    style = "flux"

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: torch.Tensor | None = None) -> Any:
        want = self.wanted()
        if not writes_any(want):
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            if want:  # readers only: the output above stands; form what they read on the side
                self._math(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, want)
            return out
        return self._math(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, want)

    def _math(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
              attention_mask: torch.Tensor | None, image_rotary_emb: Any, want: set[str]) -> Any:
        """FluxAttnProcessor with hook points; None once the readers of a read-only call are served."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        edit = self.edit
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = edit("hook_q", query), edit("hook_k", key), edit("hook_v", value)

        def sdpa() -> torch.Tensor:  # [B, H, N, d] like the eager path; dispatch works on [B, N, H, d]
            return dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask,
                backend=getattr(self.original, "_attention_backend", None),
                parallel_config=getattr(self.original, "_parallel_config", None)).transpose(1, 2)

        hidden_states = _attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask,
                                edit, want, sdpa)
        if hidden_states is None:
            return None
        hidden_states = edit("hook_z", hidden_states.transpose(1, 2))
        if not writes_any(want):
            return None
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


PROCESSORS = {"unet": UNetAttnProcessor, "sd3": SD3AttnProcessor, "flux": FluxAttnProcessor}
