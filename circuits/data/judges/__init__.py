"""CultureVQA judges: callables images -> Tensor [N, 16] of probabilities over
`circuits.data.culturebench.LABELS` (15 cultures + "unrecognisable").

`vlm(path)`: a local vision-language model answering a shuffled single-choice question;
`clip(path)`: zero-shot CLIP over multilingual label sets with a calibrated threshold;
`from_callable(fn)`: any function, e.g. the organism's classifier.
"""

from __future__ import annotations

from circuits.data.judges.base import CallableJudge, ImageError, Judge, JudgeError, check_probs, from_callable, load_images
from circuits.data.judges.clip import CLIPJudge, clip, default_label_texts, load_clip
from circuits.data.judges.vlm import LETTERS, OPTION_TEXT, VLMJudge, option_order, vlm

__all__ = [
    "CLIPJudge", "CallableJudge", "ImageError", "Judge", "JudgeError", "LETTERS", "OPTION_TEXT", "VLMJudge",
    "check_probs", "clip", "default_label_texts", "from_callable", "load_clip", "load_images",
    "option_order", "vlm",
]
