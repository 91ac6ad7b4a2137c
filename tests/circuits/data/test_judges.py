"""CultureVQA judges: callable wrapper validation, VLM option scoring and shuffling, CLIP
zero-shot and threshold calibration (tiny random models built offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from circuits.data import judges
from circuits.data.culturebench import CULTURES, LABELS, UNRECOGNISABLE
from circuits.data.judges.vlm import LETTERS, OPTION_TEXT, option_order
from interp.model.tokenizer_training import train_bpe
from tiny_hf import build_tiny_clip, build_tiny_llava


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- callable judges

def test_from_callable_validates_output():
    ok = judges.from_callable(lambda ims: torch.full((len(ims), 16), 1 / 16))
    assert ok(images(3)).shape == (3, 16)
    with pytest.raises(judges.JudgeError, match=r"returned shape \(2, 15\), expected \(2, 16\)"):
        judges.from_callable(lambda ims: torch.ones(len(ims), 15) / 15, name="organism")(images(2))
    def bad(ims):
        p = torch.full((len(ims), 16), 1 / 16)
        p[1, 0] = 0.9
        return p
    with pytest.raises(judges.JudgeError, match="probabilities of image 1 sum to"):
        judges.from_callable(bad)(images(2))
    logits = judges.from_callable(lambda ims: torch.arange(16.0).repeat(len(ims), 1), logits=True)
    assert logits.predict(images(2)) == [UNRECOGNISABLE] * 2


def test_load_images_names_bad_path(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(judges.ImageError, match=r"image 1 \(.*x.png\) cannot be read"):
        judges.load_images([images(1)[0], tmp_path / "x.png"])


# ---------------------------------------------------------------- VLM plumbing (fake model)

class FakeProcessor:
    """Same calls as a transformers processor; input_ids carry the prompt text."""

    def __init__(self):
        self.tokenizer = train_bpe(["A B C D E F G H I J K L M N O P", *OPTION_TEXT.values()], 300,
                                   lowercase=False)

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert messages[0]["content"][0]["type"] == "image" and not tokenize and add_generation_prompt
        return messages[0]["content"][1]["text"] + "\nAnswer:"

    def __call__(self, images, text, return_tensors, add_special_tokens):
        assert len(images) == 1 and return_tensors == "pt" and not add_special_tokens
        return {"input_ids": torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])}


class FakeVLM(torch.nn.Module):
    """Puts score[label] on the letter that the prompt assigns to that label."""

    def __init__(self, tokenizer, scores: dict[str, float]):
        super().__init__()
        self.tok, self.scores, self.calls = tokenizer, scores, 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        self.calls += 1
        text = self.tok.decode(input_ids[0], skip_special_tokens=True)
        logits = torch.full((1, input_ids.shape[1], len(self.tok)), -30.0)
        for line in text.splitlines():
            letter, _, option = line.partition(". ")
            label = next((k for k, v in OPTION_TEXT.items() if v == option), None)
            if label is not None:
                logits[0, -1, self.tok.encode(letter, add_special_tokens=False)[0]] = self.scores[label]
        return type("Out", (), {"logits": logits})()


def fake_judge(seed: int, scores: dict[str, float]) -> judges.VLMJudge:
    proc = FakeProcessor()
    return judges.VLMJudge(FakeVLM(proc.tokenizer, scores), proc, seed=seed, progress=False)


def test_vlm_option_scoring_picks_highest_and_shuffling_keeps_label():
    rng = np.random.default_rng(1)
    scores = {lab: float(s) for lab, s in zip(LABELS, rng.normal(size=16))}
    scores["th"] = 4.0
    expected = torch.tensor([scores[l] for l in LABELS]).softmax(0)
    results = []
    for seed in range(4):
        j = fake_judge(seed, scores)
        p = j(images(3))
        assert j.model.calls == 3  # one forward per image
        assert j.predict(images(1)) == ["th"]
        torch.testing.assert_close(p, expected.repeat(3, 1), atol=1e-5, rtol=0)
        results.append(p)
    # The letter the answer sits on does change with the seed (the shuffle is real).
    assert len({tuple(option_order(0, s)) for s in range(4)}) == 4
    assert option_order(0, 0) == option_order(0, 0) and option_order(0, 0) != option_order(1, 0)


# ---------------------------------------------------------------- tiny real LLaVA

@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


def test_vlm_judge_on_tiny_llava_matches_manual_scoring(llava_path):
    j = judges.vlm(llava_path, seed=3, progress=False)
    ims = images(2)
    p = j(ims)
    assert p.shape == (2, 16) and torch.allclose(p.sum(1), torch.ones(2))
    torch.testing.assert_close(j(ims), p)  # deterministic
    for i, im in enumerate(ims):
        order = option_order(i, 3)
        enc = j.inputs(im, order)
        text = j.processor.tokenizer.decode(enc["input_ids"][0])
        assert text.rstrip().endswith("ASSISTANT:") and f"{LETTERS[0]}. {OPTION_TEXT[order[0]]}" in text
        with torch.no_grad():
            last = j.model(**enc).logits[0, -1]
        letter = torch.stack([torch.logsumexp(last[ids], 0) for ids in j.letter_ids]).softmax(0)
        torch.testing.assert_close(p[i, [LABELS.index(l) for l in order]], letter)


def test_vlm_missing_folder(tmp_path):
    with pytest.raises(judges.JudgeError, match="does not exist"):
        judges.vlm(tmp_path / "none")


# ---------------------------------------------------------------- tiny CLIP

@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_zero_shot_follows_cosines(clip_path):
    j = judges.clip(clip_path, threshold=-1.0)
    ims = images(6)
    cos = j.cosines(ims)
    p = j(ims)
    assert p.shape == (6, 16) and torch.allclose(p.sum(1), torch.ones(6))
    assert (p[:, :15].max(1).values > p[:, 15]).all()  # threshold -1: all recognisable
    assert p[:, :15].argmax(1).tolist() == cos.argmax(1).tolist()
    torch.testing.assert_close(p[:, :15] / p[:, :15].sum(1, keepdim=True), (j.scale * cos).softmax(1))


def test_clip_label_sets_are_multilingual_and_checked(clip_path):
    texts = judges.default_label_texts()
    assert "和風" in texts["ja"] and "แบบไทย" in texts["th"] and any("Japanese" in t for t in texts["ja"])
    with pytest.raises(judges.JudgeError, match=r"no texts for cultures \['ar'\]"):
        judges.clip(clip_path, label_texts={c: ["x"] for c in CULTURES if c != "ar"})


def test_clip_threshold_calibration_separates(clip_path):
    j = judges.clip(clip_path)
    pool = images(12, seed=5)
    best = j.cosines(pool).max(1).values
    order = best.argsort(descending=True).tolist()
    pos, neg = [pool[i] for i in order[:5]], [pool[i] for i in order[5:]]
    t = j.calibrate(pos, neg)
    assert best[order[5]] < t <= best[order[4]]
    preds = j.predict(pool)
    assert all((preds[i] == UNRECOGNISABLE) == (i in order[5:]) for i in range(12))


# ---------------------------------------------------------------- published judges (interp.zoo)

@pytest.fixture(scope="module")
def qwen2_vl_path(tmp_path_factory):
    # Qwen2-VL-2B-Instruct's tokenizer (151,657 ids), chat template and image processor, with a
    # narrow 2-layer model of the same class so the test runs in seconds (vocabulary kept).
    from interp.zoo.judges import build_qwen2_vl

    small = dict(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
                 vision_config=dict(depth=1, embed_dim=64, hidden_size=64, num_heads=2))
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"), max_pixels=112 * 112, **small)


def test_vlm_judge_with_qwen2_vl_chat_template(qwen2_vl_path):
    with pytest.warns(UserWarning, match="torchvision") if not _has_torchvision() else _nothing():
        j = judges.vlm(qwen2_vl_path, seed=1, progress=False)
    tok = j.processor.tokenizer
    assert len(tok) == 151657 and tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert all(len(ids) >= 1 for ids in j.letter_ids) and len({i for ids in j.letter_ids for i in ids}) >= 16
    ims = images(2)
    order = option_order(0, 1)
    enc = j.inputs(ims[0], order)
    text = tok.decode(enc["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and f"A. {OPTION_TEXT[order[0]]}" in text
    n_image = int((enc["input_ids"] == 151655).sum())
    assert n_image == int(enc["image_grid_thw"].prod()) // 4  # one token per 2x2 merged patch
    p = j(ims)
    assert p.shape == (2, 16) and torch.allclose(p.sum(1), torch.ones(2))
    with torch.no_grad():
        last = j.model(**enc).logits[0, -1]  # all positions: the judge's logits_to_keep=1 must agree
    letter = torch.stack([torch.logsumexp(last[ids], 0) for ids in j.letter_ids]).softmax(0)
    torch.testing.assert_close(p[0, [LABELS.index(l) for l in order]], letter, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_clip_judge_at_vit_l14_size(tmp_path):
    from interp.zoo import n_params
    from interp.zoo.judges import build_clip

    path = build_clip(tmp_path / "clip-l14")
    j = judges.clip(path, threshold=-1.0)
    cfg = j.model.config
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers, cfg.vision_config.patch_size,
            cfg.text_config.hidden_size, cfg.projection_dim) == (1024, 24, 14, 768, 768)
    assert n_params(j.model) == 427_616_513
    assert j.prototypes.shape == (15, 768)
    p = j(images(2))
    assert p.shape == (2, 16) and torch.allclose(p.sum(1), torch.ones(2))
    assert j.image_processor(images=images(1), return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _nothing():
    import contextlib

    return contextlib.nullcontext()
