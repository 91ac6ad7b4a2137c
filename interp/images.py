"""Images in, embeddings out: the concept-neutral image helpers shared by the fidelity metrics
(`interp.fidelity`: CLIPScore, diversity, LPIPS, SSIM) and the culture judges
(`circuits.data.judges`, which re-export them). Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch
from jaxtyping import Float
from PIL import Image
from tqdm.auto import tqdm

from interp.errors import CultureLensError

ImageLike = Union[Image.Image, str, Path]


class ImageError(CultureLensError):
    """An image or an image model folder that cannot be read (`circuits.data.judges.JudgeError`
    is a subclass)."""


def load_images(images: Sequence[ImageLike]) -> list[Image.Image]:
    """PIL images in RGB; paths are opened (an unreadable one is named in the error)."""
    out = []
    for i, im in enumerate(images):
        if isinstance(im, (str, Path)):
            try:
                with Image.open(im) as f:
                    im = f.convert("RGB")
            except OSError as e:
                raise ImageError(f"image {i} ({im}) cannot be read: {e}") from e
        elif isinstance(im, Image.Image):
            im = im.convert("RGB")
        else:
            raise ImageError(f"image {i} is a {type(im).__name__}; expected a PIL image or a path")
        out.append(im)
    return out


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor) from a local folder; nothing is downloaded."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ImageError(f"CLIP model folder {path} does not exist")
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
        raise ImageError(f"{path}: {type(model).__name__} is not a CLIP-like dual encoder")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return model, tok, proc


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def image_embeds(model: Any, image_processor: Any, images: Sequence[ImageLike], batch_size: int = 32,
                 progress: bool = False) -> Float[torch.Tensor, "n d"]:
    """L2-normalised image embeddings."""
    ims = load_images(images)
    device = next(model.parameters()).device
    chunks = []
    for i in tqdm(range(0, len(ims), batch_size), disable=not progress, desc="CLIP images"):
        px = image_processor(images=ims[i:i + batch_size], return_tensors="pt")["pixel_values"]
        chunks.append(_pooled(model.get_image_features(pixel_values=px.to(device))).float())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def text_embeds(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> Float[torch.Tensor, "n d"]:
    """L2-normalised text embeddings (truncated to the tokenizer's max length)."""
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        chunks.append(_pooled(model.get_text_features(**enc)).float())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
