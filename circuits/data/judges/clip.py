"""Zero-shot CLIP judge over multilingual culture label sets, with a calibrated
"unrecognisable" threshold. The CLIP embedding helpers it shares with CLIPScore live in
`interp.images` (re-exported here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from circuits.data.culturebench.compose import STYLES
from circuits.data.culturebench.constants import CULTURE_NAMES, CULTURES
from circuits.data.judges.base import Judge, JudgeError
from interp.images import ImageLike, image_embeds, load_clip, load_images, text_embeds  # noqa: F401 (re-exported)


def default_label_texts() -> dict[str, list[str]]:
    """Per culture: English descriptions and the local-language style phrase we ship."""
    return {
        c: [
            f"a photo of something in {CULTURE_NAMES[c]} style",
            f"a {CULTURE_NAMES[c]}-style object",
            STYLES[c].modifier,
        ]
        for c in CULTURES
    }


class CLIPJudge(Judge):
    """Zero-shot: each culture's label texts are embedded and averaged (prompt ensemble);
    "unrecognisable" is a 16th option whose cosine is the constant `threshold`:
    P = softmax(scale · [cos_1 .. cos_15, threshold]), so an image is judged unrecognisable
    exactly when its best cosine is below the threshold. `calibrate` sets the threshold from
    examples; the default (-1) never fires.
    """

    name = "clip"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any,
                 label_texts: Mapping[str, Sequence[str]] | None = None,
                 threshold: float = -1.0, scale: float | None = None,
                 batch_size: int = 32):
        texts = dict(label_texts or default_label_texts())
        missing = [c for c in CULTURES if not texts.get(c)]
        if missing:
            raise JudgeError(f"label_texts has no texts for cultures {missing}")
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.threshold, self.batch_size = float(threshold), batch_size
        self.scale = float(model.logit_scale.detach().exp()) if scale is None else float(scale)
        protos = [text_embeds(model, tokenizer, list(texts[c])).mean(0) for c in CULTURES]
        self.prototypes = torch.nn.functional.normalize(torch.stack(protos), dim=-1)

    def cosines(self, images: Sequence[ImageLike]) -> Float[torch.Tensor, "n 15"]:
        """Cosine of each image to each culture's prototype."""
        return image_embeds(self.model, self.image_processor, images, self.batch_size) @ self.prototypes.T

    def _probs(self, images: list[Image.Image]) -> Float[torch.Tensor, "n 16"]:
        cos = self.cosines(images)
        unrec = torch.full((len(cos), 1), self.threshold)
        return (self.scale * torch.cat([cos, unrec], dim=1)).softmax(-1)

    def calibrate(self, recognisable: Sequence[ImageLike], unrecognisable: Sequence[ImageLike]) -> float:
        """Set `threshold` to the best-cosine cut that maximises balanced accuracy between
        images that show a culture and images that do not; returns it."""
        pos = self.cosines(recognisable).max(-1).values.numpy()
        neg = self.cosines(unrecognisable).max(-1).values.numpy()
        if len(pos) == 0 or len(neg) == 0:
            raise JudgeError("calibrate needs at least one recognisable and one unrecognisable image")
        cands = np.unique(np.concatenate([pos, neg]))
        mids = np.concatenate([[cands[0] - 1e-6], (cands[1:] + cands[:-1]) / 2, [cands[-1] + 1e-6]])
        bal = [((pos >= t).mean() + (neg < t).mean()) / 2 for t in mids]
        self.threshold = float(mids[int(np.argmax(bal))])
        return self.threshold


def clip(path: str | Path, device: str = "cpu", **kwargs: Any) -> CLIPJudge:
    """A CLIP judge from a local model folder (see `CLIPJudge` for options)."""
    return CLIPJudge(*load_clip(path, device), **kwargs)
