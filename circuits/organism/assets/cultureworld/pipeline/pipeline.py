"""CultureWorldPipeline: text → 3×32×32 pixels with a CLIP text encoder and a pixel UNet.

Self-contained (imports only torch, diffusers, transformers, numpy, PIL): the build copies
this file into the pipeline folder as `pipeline.py`, and model_index.json names it as
`["pipeline", "CultureWorldPipeline"]`, so `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` (or `CultureWorldPipeline.from_pretrained(folder)`) loads it.

Conditioning, as in SD 1.x plus SDXL's pooled path: `encoder_hidden_states` is the text
encoder's `last_hidden_state` [B, S, 128] (cross-attention), and `class_labels` is its
`pooler_output` [B, 128] (the hidden state at the first end-of-text token, added to the
timestep embedding). Prompts are padded to `tokenizer.model_max_length` with the
end-of-text token and no attention mask, as SD pads CLIP prompts.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput


class CultureWorldPipeline(DiffusionPipeline):
    """Pixel-space text-to-image pipeline of the CultureWorld model organism."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    def tokenize(self, prompt: list[str]) -> torch.Tensor:
        """input_ids [B, S], padded to the tokenizer's max length; a prompt that is too long is an error."""
        limit = self.tokenizer.model_max_length
        for i, ids in enumerate(self.tokenizer(prompt)["input_ids"]):
            if len(ids) > limit:
                raise ValueError(f"prompt index {i} has {len(ids)} tokens; the text encoder takes {limit}")
        return self.tokenizer(prompt, padding="max_length", max_length=limit, return_tensors="pt").input_ids

    def encode_prompt(self, prompt: list[str], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states [B, S, d], pooled [B, d]) for the UNet."""
        ids = self.tokenize(prompt).to(device or self.text_encoder.device)
        out = self.text_encoder(ids)
        return out.last_hidden_state, out.pooler_output

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int = 32,
        width: int = 32,
        negative_prompt: str | list[str] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images. output_type: "pil" (list of PIL), "np" ([B,H,W,3] in [0,1]),
        "pt" ([B,3,H,W] in [0,1]) or "latent" (the raw [-1,1] pixels).
        `callback_on_step_end(pipe, i, t, {"latents": x})` runs after each step, as in diffusers'
        pipelines; a returned "latents" replaces the current sample."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        device = self.unet.device
        dtype = self.unet.dtype
        hidden, pooled = self.encode_prompt(prompts, device)
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = [neg] * batch if isinstance(neg, str) else list(neg)
            h0, p0 = self.encode_prompt(negs, device)
            hidden, pooled = torch.cat([h0, hidden]), torch.cat([p0, pooled])
        shape = (batch, self.unet.config.in_channels, height, width)
        if latents is None:
            if isinstance(generator, list):
                x = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator])
            else:
                x = torch.randn(shape, generator=generator, dtype=torch.float32)
            x = x.to(device=device, dtype=dtype)
        else:
            x = latents.to(device=device, dtype=dtype)
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            inp = torch.cat([x, x]) if use_cfg else x
            inp = self.scheduler.scale_model_input(inp, t)
            out = self.unet(inp, t, encoder_hidden_states=hidden.to(dtype), class_labels=pooled.to(dtype)).sample
            if use_cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(out, t, x).prev_sample
            if callback_on_step_end is not None:
                x = (callback_on_step_end(self, i, t, {"latents": x}) or {}).get("latents", x)
        if output_type == "latent":
            images = x
        else:
            images = ((x.float().clamp(-1, 1) + 1) / 2).cpu()
            if output_type == "np":
                images = images.permute(0, 2, 3, 1).numpy()
            elif output_type == "pil":
                arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                images = [PIL.Image.fromarray(a) for a in arr]
            elif output_type != "pt":
                raise ValueError(f"unknown output_type {output_type!r}; expected pil, np, pt or latent")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
