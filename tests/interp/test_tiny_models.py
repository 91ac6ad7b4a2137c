"""Tiny models: `interp.tiny`'s pipelines (tokenizers the same in every process, dtype casts) and
the tiny CLIP and LLaVA the data-area tests build (`tests/tiny_hf.py`)."""

from __future__ import annotations

import torch
from transformers import CLIPModel, LlavaForConditionalGeneration

from tiny_hf import build_tiny_clip, build_tiny_llava


def test_tiny_models_build_and_reload(tmp_path):
    from transformers import AutoModel, AutoModelForImageTextToText

    clip = AutoModel.from_pretrained(build_tiny_clip(tmp_path / "clip"), local_files_only=True)
    assert isinstance(clip, CLIPModel) and sum(p.numel() for p in clip.parameters()) < 200_000
    vlm = AutoModelForImageTextToText.from_pretrained(build_tiny_llava(tmp_path / "vlm"), local_files_only=True)
    assert isinstance(vlm, LlavaForConditionalGeneration)


def test_tiny_tokenizers_are_the_same_in_every_process():
    """Same seed, same model: the tiny tokenizers (BPE and Unigram, trained at build time) give
    the same ids in two fresh processes with different hash seeds. The Unigram trainer of
    `tokenizers` alone does not (its piece order follows per-process hash maps)."""
    import os
    import subprocess
    import sys

    code = ("import json, interp\n"
            "out = {}\n"
            "for fam in ('altdiffusion', 'sd3', 'sd'):\n"
            "    m = interp.tiny(fam, seed=0)\n"
            "    for name, enc in m.encoders.items():\n"
            "        out[fam + '/' + name] = enc.tokenizer('a Japanese-style box 和風の箱 kutu')['input_ids']\n"
            "print(json.dumps(out))\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout.strip().splitlines()[-1]
            for h in (1, 2)]
    assert runs[0] == runs[1]


def test_tiny_dtype_casts_the_same_weights():
    import interp

    site = "text.blocks.0.hook_resid_post"
    ref = interp.tiny("sd")
    w = next(ref.denoiser.parameters())
    for dtype in (torch.float16, torch.bfloat16):
        m = interp.tiny("sd", dtype=dtype)
        modules = [m.denoiser, m.pipe.vae] + [e.module for e in m.encoders.values()]
        assert m.dtype == dtype and {p.dtype for mod in modules for p in mod.parameters()} == {dtype}
        torch.testing.assert_close(next(m.denoiser.parameters()), w.to(dtype))  # same weights, rounded
        assert interp.capture(m, ["a box"], [site])[site].dtype == dtype
    assert interp.tiny("sd", dtype=torch.float32).dtype == torch.float32
