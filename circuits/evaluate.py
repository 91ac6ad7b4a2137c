"""Generate, judge, score: CultureVQA (and optionally a noun/semantic score) of a set of
prompts under per-culture interventions. One code path for validation, the amplifier
sweep, the enhancer evaluation and the causal sweep, so conditions stay paired."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import CultureLensError

from .pairs import PromptPair

# culture -> interventions for that culture's prompts
InterventionsFor = Callable[[str], Sequence[Any]]


@dataclass
class Scored:
    """Per prompt (canonical order): judged culture correct, noun correct (or None)."""

    ids: list[str]
    correct: Bool[Tensor, " N"]
    noun_correct: Bool[Tensor, " N"] | None
    predicted: list[str]


def judge_correct(judge: Callable, images: list, cultures: Sequence[str]) -> tuple[Tensor, list[str]]:
    """CultureVQA per image: the judge's argmax over LABELS equals the intended culture."""
    from interp.culturebench import LABELS

    probs = torch.as_tensor(judge(images))
    if probs.ndim != 2 or probs.shape != (len(images), len(LABELS)):
        raise CultureLensError(f"judge returned shape {tuple(probs.shape)}; expected [{len(images)}, {len(LABELS)}] over culturebench.LABELS")
    pred = [LABELS[i] for i in probs.argmax(1).tolist()]
    return torch.tensor([p == c for p, c in zip(pred, cultures)]), pred


def score(
    model,
    groups: dict[str, Sequence[PromptPair]],
    judge: Callable,
    interventions_for: InterventionsFor | None = None,
    prompt: str = "concept",
    noun_judge: Callable | None = None,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    desc: str = "generate",
    **generate_kw: Any,
) -> Scored:
    """Generate every culture's prompts (`prompt`: "concept" or "noun") with that culture's
    interventions and judge them. `noun_judge(images, pairs) -> Bool[N]` scores whether the noun
    is still drawn.

    Prompts of different cultures share batches (each culture's interventions restricted to its
    rows by `interp.OnRows`); the i-th prompt of a culture gets noise seed `seed + i`, so every
    condition, and every `batch_size`, sees the same noise per prompt."""
    import interp

    if prompt not in ("concept", "noun"):
        raise CultureLensError(f"prompt must be 'concept' or 'noun'; got {prompt!r}")
    items = [(c, i, p) for c, ps in groups.items() for i, p in enumerate(ps)]
    if not items:
        raise CultureLensError("score: no prompts to generate")
    ivs_of = {c: list(interventions_for(c)) if interventions_for is not None else [] for c in groups}
    correct, nouns, preds = [], [], []
    for s in tqdm(range(0, len(items), batch_size), desc=desc, leave=False):
        batch = items[s : s + batch_size]
        cultures = [c for c, _, _ in batch]
        texts = [p.concept_prompt if prompt == "concept" else p.noun_prompt for _, _, p in batch]
        gen = interp.generate(model, texts, seed=[seed + i for _, i, _ in batch], steps=steps,
                              interventions=interp.OnRows.grouped(cultures, ivs_of), **generate_kw)
        ok, pred = judge_correct(judge, gen.images, cultures)
        correct.append(ok)
        preds += pred
        if noun_judge is not None:
            nouns.append(torch.as_tensor(noun_judge(gen.images, [p for _, _, p in batch])).bool())
    ids = [p.id or f"{c}:{i}" for c, i, p in items]
    return Scored(ids, torch.cat(correct), torch.cat(nouns) if noun_judge is not None else None, preds)


def noun_judge_from(predict_nouns: Callable[[list], Sequence[str]], noun_of: Callable[[PromptPair], str]) -> Callable:
    """A `noun_judge` for `score`: `predict_nouns(images)` -> one noun label per image (e.g. the
    organism judge's `predict_full(images)["noun"]`), compared with `noun_of(pair)`."""

    def judge(images: list, pairs: Sequence[PromptPair]) -> Tensor:
        got = list(predict_nouns(images))
        return torch.tensor([g == noun_of(p) for g, p in zip(got, pairs)])

    return judge
