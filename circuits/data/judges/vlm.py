"""CultureVQA with a local vision-language model: one forward per image, single choice
scored at the answer position over the 16 option letters, option order shuffled by seed."""

from __future__ import annotations

import string
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from tqdm.auto import tqdm

from circuits.data.culturebench.constants import LABELS, UNRECOGNISABLE
from circuits.data.judges.base import Judge, JudgeError

LETTERS = string.ascii_uppercase[: len(LABELS)]  # A..P

#: How each label is offered to the judge.
OPTION_TEXT: dict[str, str] = {
    "ar": "Arabic", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "th": "Thai",
    "de": "German", "ru": "Russian", "it": "Italian", "nl": "Dutch", "pl": "Polish",
    "tr": "Turkish", "uk": "Ukrainian", "es": "Spanish", "pt": "Portuguese",
    "fr": "Francophone African", UNRECOGNISABLE: "Unrecognisable (no clear culture)",
}

QUESTION = (
    "Which culture is this image most representative of? Choose one option.\n"
    "{options}\nAnswer with the letter of the option only."
)


def option_order(index: int, seed: int) -> list[str]:
    """The labels in the order offered for image `index` (A first), seeded per image."""
    perm = np.random.default_rng([seed, index]).permutation(len(LABELS))
    return [LABELS[i] for i in perm]


def _letter_ids(tokenizer: Any) -> list[list[int]]:
    """Token ids that spell each letter as the first answer token ("A" and/or " A")."""
    out = []
    for letter in LETTERS:
        ids = set()
        for form in (letter, " " + letter):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
        if not ids:
            raise JudgeError(f"tokenizer has no single token for option letter {letter!r}")
        out.append(sorted(ids))
    flat = [i for ids in out for i in ids]
    if len(flat) != len(set(flat)):
        raise JudgeError("option letters share tokens (is the tokenizer lower-casing?)")
    return out


class VLMJudge(Judge):
    """Ask `QUESTION` with shuffled options; P(label) = softmax over the letters' logits at
    the answer position (a letter spelt by several tokens, e.g. "A" and "▁A", pools them)."""

    name = "vlm"

    def __init__(self, model: Any, processor: Any, seed: int = 0, question: str = QUESTION,
                 progress: bool = True):
        self.model, self.processor, self.seed = model, processor, seed
        self.question, self.progress = question, progress
        tokenizer = getattr(processor, "tokenizer", processor)
        self.letter_ids = _letter_ids(tokenizer)
        self.offset = 0  # image index of the next call's first image, for per-image orders
        import inspect

        self.keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    def prompt(self, order: Sequence[str]) -> str:
        """The question with options listed in `order`."""
        lines = [f"{l}. {OPTION_TEXT[lab]}" for l, lab in zip(LETTERS, order)]
        return self.question.format(options="\n".join(lines))

    def inputs(self, image: Image.Image, order: Sequence[str]) -> dict[str, torch.Tensor]:
        """Processor inputs for one image, ending at the answer position."""
        messages = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": self.prompt(order)},
        ]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The chat template already holds BOS; the tokenizer must not append EOS after the
        # generation prompt, or the last position would not be the answer position.
        enc = self.processor(images=[image], text=text, return_tensors="pt", add_special_tokens=False)
        last = int(enc["input_ids"][0, -1])
        special = getattr(getattr(self.processor, "tokenizer", None), "all_special_ids", [])
        if last in special:
            raise JudgeError(f"the prompt ends in special token {last}, not at the answer position")
        return enc

    @torch.no_grad()
    def letter_logits(self, image: Image.Image, order: Sequence[str]) -> Float[torch.Tensor, "16"]:
        """Logits of the 16 letters (in A..P order) at the answer position: one forward."""
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.inputs(image, order).items()}
        if self.keep_last:  # only the answer position's logits (a 150k-word head over every position is costly)
            enc["logits_to_keep"] = 1
        logits = self.model(**enc).logits[0, -1].float()
        return torch.stack([torch.logsumexp(logits[ids], 0) for ids in self.letter_ids])

    def _probs(self, images: list[Image.Image]) -> Float[torch.Tensor, "n 16"]:
        out = torch.zeros(len(images), len(LABELS))
        for i, im in enumerate(tqdm(images, disable=not self.progress, desc="VLM judge")):
            order = option_order(self.offset + i, self.seed)
            p = self.letter_logits(im, order).softmax(-1).cpu()
            out[i, [LABELS.index(lab) for lab in order]] = p
        return out

    def __call__(self, images: Sequence[Any], start_index: int = 0) -> Float[torch.Tensor, "n 16"]:
        """Probabilities [N, 16]; image i uses the option order of index `start_index + i`."""
        self.offset = start_index
        return super().__call__(images)


def image_text_processor(path: str | Path) -> Any:
    """The folder's processor class (`processor_class` in preprocessor_config.json) built from its
    image processor, tokenizer and chat template, with no video processor. transformers 5 builds
    e.g. Qwen2-VL's video processor on load, and that one needs torchvision; images do not."""
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    path = Path(path)
    cfg_file = path / "preprocessor_config.json"
    name = json.loads(cfg_file.read_text()).get("processor_class") if cfg_file.is_file() else None
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise JudgeError(f"{cfg_file}: no known processor_class ({name!r}) to assemble the processor from")
    template = None
    if (path / "chat_template.json").is_file():
        template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    elif (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    template = template or getattr(tokenizer, "chat_template", None)
    if template is None:
        raise JudgeError(f"{path}: no chat template (chat_template.json, chat_template.jinja or the tokenizer's)")

    class WithoutVideo(cls):  # accept the missing video processor; everything else is checked as usual
        def check_argument_for_proper_class(self, attribute_name: str, arg: Any) -> Any:
            if arg is None and attribute_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(attribute_name, arg)

    kwargs = {"video_processor": None} if "video_processor" in cls.get_attributes() else {}
    return WithoutVideo(image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
                        tokenizer=tokenizer, chat_template=template, **kwargs)


def vlm(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32, **kwargs: Any) -> VLMJudge:
    """A VLM judge from a local folder (`AutoModelForImageTextToText` + `AutoProcessor`)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    if not path.is_dir():
        raise JudgeError(f"VLM folder {path} does not exist")
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise
        processor = image_text_processor(path)
        warnings.warn(f"{path}: torchvision is not installed, so the processor was assembled without its video "
                      "processor (the judge only passes images)", stacklevel=2)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
    return VLMJudge(model.to(device).eval(), processor, **kwargs)
