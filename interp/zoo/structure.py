"""What a pipeline looks like at full size, read on the meta device: parameter counts per
component against the published figures, site counts per kind, and site shapes for a batch."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from interp.zoo.build import entry, model as zoo_model, n_params, pipeline


def site_kinds(model: Any) -> dict[str, int]:
    """Sites per (prefix, hook) — e.g. {"text:hook_resid_post": 12, "unet:attn2.hook_out": 16, ...}."""
    out: Counter[str] = Counter()
    for s in model.sites():
        prefix = s.split(".", 1)[0]
        hook = s.rsplit(".", 2)
        out[f"{prefix}:{hook[-2] + '.' + hook[-1] if hook[-2] in ('attn', 'attn1', 'attn2', 'mlp') else hook[-1]}"] += 1
    return dict(sorted(out.items()))


@contextlib.contextmanager
def _meta_masks():
    """transformers 5 asks `padding_mask.all()` (a Python bool: `.item()`) before building a
    bidirectional mask, which a meta tensor cannot answer (XLM-R with its attention mask). On
    meta, answer "the mask is needed": the mask is then built, with the same shapes as on CPU."""
    from transformers import masking_utils

    orig = masking_utils._ignore_bidirectional_mask_sdpa

    def patched(padding_mask: Any, *args: Any, **kwargs: Any) -> bool:
        if padding_mask is not None and padding_mask.is_meta:
            return False
        return orig(padding_mask, *args, **kwargs)

    masking_utils._ignore_bidirectional_mask_sdpa = patched
    try:
        yield
    finally:
        masking_utils._ignore_bidirectional_mask_sdpa = orig


def text_shapes(model: Any, prompts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of every text site for `prompts`, by running the encoders (on meta: no memory)."""
    from interp.methods.capture import capture

    with _meta_masks() if model.device.type == "meta" else contextlib.nullcontext():
        acts = capture(model, list(prompts), sites=[s for s in model.sites() if s.startswith("text")])
    return {k: tuple(v.shape) for k, v in acts.items()}


def params(name: str, pipe: Any | None = None) -> dict[str, dict[str, Any]]:
    """Per component: parameter count, the published figure, its tolerance and source, ok."""
    e = entry(name)
    pipe = pipe if pipe is not None else pipeline(name, "meta")
    out = {}
    for k, c in e.components.items():
        n = n_params(getattr(pipe, k))
        pub, tol = c.published if c.published else (None, None)
        out[k] = dict(params=n, published=pub, tolerance=tol, source=c.published_source,
                      ok=None if pub is None else abs(n - pub) <= tol * pub)
    return out


def summary(name: str, prompts: Sequence[str] = ("a Japanese-style box", "和風の箱")) -> dict[str, Any]:
    """Parameters, site counts and text site shapes of entry `name`, all on the meta device."""
    m = zoo_model(name, "meta")
    return dict(name=name, family=m.family, params=params(name, m.pipe), sites=site_kinds(m),
                n_sites=len(m.sites()), shapes=text_shapes(m, prompts))
