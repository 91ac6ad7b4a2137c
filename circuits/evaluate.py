"""Generate, judge, score: CultureVQA (and optionally a noun/semantic score) of a set of
prompts under per-culture interventions. One code path for validation, the amplifier
sweep, the enhancer evaluation, specificity and the causal sweep, so conditions stay paired;
one settings object (`ScoreSettings`) for the generation and judging knobs they share."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor
from interp.progress import bar, switch

from interp.checks import moved, renamed
from interp.errors import CultureLensError
from interp.fidelity import ssim

from circuits.data.culturebench.constants import LABELS
from circuits.pairs import PromptPair
from circuits.results import Rate

# culture -> interventions for that culture's prompts
InterventionsFor = Callable[[str], Sequence[Any]]


@dataclass(frozen=True, kw_only=True)
class ScoreSettings:
    """How prompts are generated and judged, shared by `score`, `circuits.validate_units`,
    `circuits.lambda_sweep`, `circuits.causal.specificity.specificity_matrix`,
    `circuits.causal_sweep` and `circuits.runner.evaluate_enhancer` (each takes
    `settings=ScoreSettings(...)`; None means these defaults). Change one with
    `dataclasses.replace(settings, num_steps=4)`."""

    seed: int = 0
    """Noise seed: the i-th prompt of each culture gets image noise `seed + i` in every condition;
    also the bootstrap's seed, and random-unit draw r of a control uses `seed + 1 + r`."""

    num_steps: int | None = None
    """Denoising steps per image (None: the model's default)."""

    batch_size: int = 8
    """Prompts per generation call (cultures share batches); it does not change the images, as
    every prompt keeps its own noise seed."""

    n_boot: int = 1000
    """Bootstrap resamples (over prompts) of every confidence interval; `score` itself ignores it."""


_DEFAULT = ScoreSettings()

#: The keywords that moved into `ScoreSettings` (culturelens 0.2.0), for `interp.checks.moved`.
SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(ScoreSettings))


@dataclass
class Scored:
    """Per prompt (canonical order): judged culture correct, noun correct (or None)."""

    ids: list[str]
    correct: Bool[Tensor, " N"]
    noun_correct: Bool[Tensor, " N"] | None
    predicted: list[str]
    images: list | None = None      # the generated images, canonical order (keep_images=True)


# The plain (intervention-free) scores of one analysis run, by everything that decides them; set
# only inside `reuse_plain_scores()`. Each value keeps the model and judges of its key alive, so
# the ids in the key cannot be reused by other objects while the memo exists.
_PLAIN_SCORES: ContextVar[dict | None] = ContextVar("plain_scores", default=None)


@contextlib.contextmanager
def reuse_plain_scores() -> Iterator[None]:
    """Inside this block, `score` without interventions runs once per distinct request (model,
    judges, prompts and their cultures, seeds, generation settings) and later identical requests
    get the same `Scored`: an analysis asks for the plain test images in several steps (the
    masking test of each basis, the causal sweep), and generation is deterministic, so the
    numbers are those of recomputing. Nothing is kept after the block."""
    token = _PLAIN_SCORES.set({})
    try:
        yield
    finally:
        _PLAIN_SCORES.reset(token)


def judge_correct(judge: Callable, images: list, cultures: Sequence[str]) -> tuple[Tensor, list[str]]:
    """CultureVQA per image: the judge's argmax over LABELS equals the intended culture."""
    probs = torch.as_tensor(judge(images))
    if probs.ndim != 2 or probs.shape != (len(images), len(LABELS)):
        raise CultureLensError(f"judge returned shape {tuple(probs.shape)}; expected [{len(images)}, {len(LABELS)}] over culturebench.LABELS")
    pred = [LABELS[i] for i in probs.argmax(1).tolist()]
    return torch.tensor([p == c for p, c in zip(pred, cultures)]), pred


@renamed(steps="num_steps")
@moved(ScoreSettings, "seed", "num_steps", "batch_size", param="settings", where="circuits.evaluate.score")
def score(
    model,
    groups: dict[str, Sequence[PromptPair]],
    judge: Callable,
    interventions_for: InterventionsFor | None = None,
    prompt: str = "concept",
    noun_judge: Callable | None = None,
    *,
    settings: ScoreSettings | None = None,
    desc: str = "generate",
    keep_images: bool = False,
    **generate_kw: Any,
) -> Scored:
    """Generate every culture's prompts (`prompt`: "concept" or "noun") with that culture's
    interventions and judge them, each image `settings.num_steps` denoising steps (None: the
    model's). `noun_judge(images, pairs) -> Bool[N]` scores whether the noun is still drawn.

    Prompts of different cultures share batches of `settings.batch_size` (each culture's
    interventions restricted to its rows by `interp.OnRows`); the i-th prompt of a culture gets
    noise seed `settings.seed + i`, so every condition, and every batch size, sees the same noise
    per prompt. `keep_images` keeps the images (e.g. to measure structure change against the
    unsteered images, `fidelity`); other keywords go to `interp.generate` (e.g. `guidance`)."""
    import interp

    st = _DEFAULT if settings is None else settings
    seed, num_steps, batch_size = st.seed, st.num_steps, st.batch_size

    if prompt not in ("concept", "noun"):
        raise CultureLensError(f"prompt must be 'concept' or 'noun'; got {prompt!r}")
    items = [(c, i, p) for c, ps in groups.items() for i, p in enumerate(ps)]
    if not items:
        raise CultureLensError("score: no prompts to generate")
    ivs_of = {c: list(interventions_for(c)) if interventions_for is not None else [] for c in groups}
    memo, key = _PLAIN_SCORES.get(), None
    # Only settings that compare by value enter the key (a tensor's repr is abbreviated, so two
    # different latents could look alike): a request with any other keyword is not memoised.
    plain_kw = all(isinstance(v, (str, int, float, bool, type(None))) for v in generate_kw.values())
    if memo is not None and plain_kw and not any(ivs_of.values()):
        texts = tuple((c, i, p.id, p.concept_prompt if prompt == "concept" else p.noun_prompt) for c, i, p in items)
        key = (id(model), id(judge), prompt, texts, seed, num_steps, batch_size, keep_images,
               tuple(sorted(generate_kw.items())))
        hit = memo.get(key)
        # The culture judgements do not depend on the noun judge: a request without one reuses a
        # request with one (dropping its noun scores); with one, only the same noun judge's.
        if hit is not None and noun_judge is None:
            return dataclasses.replace(hit[0], noun_correct=None)
        if hit is not None and hit[3] is noun_judge:
            return hit[0]
    # Under torchrun each rank generates and judges a contiguous share (seeds travel with the
    # prompts, so the numbers are those of one process); all ranks get every result back in order.
    from interp import distributed

    mine = distributed.shard(items, "prompts")
    correct, nouns, preds, images = [], [], [], []
    for s in bar(range(0, len(mine), batch_size), desc=desc, leave=False):
        batch = mine[s : s + batch_size]
        cultures = [c for c, _, _ in batch]
        texts = [p.concept_prompt if prompt == "concept" else p.noun_prompt for _, _, p in batch]
        gen = interp.generate(model, texts, seed=[seed + i for _, i, _ in batch], num_steps=num_steps,
                              interventions=interp.OnRows.grouped(cultures, ivs_of), **generate_kw)
        ok, pred = judge_correct(judge, gen.images, cultures)
        images += list(gen.images) if keep_images else [None] * len(batch)
        correct.append(ok)
        preds += pred
        if noun_judge is not None:
            nouns.append(torch.as_tensor(noun_judge(gen.images, [p for _, _, p in batch])).bool())
    rows = distributed.gather_shards(list(zip(torch.cat(correct).tolist(), torch.cat(nouns).tolist() if nouns
                                              else [None] * len(mine), preds, images)), len(items))
    ids = [p.id or f"{c}:{i}" for c, i, p in items]
    out = Scored(ids, torch.tensor([r[0] for r in rows], dtype=torch.bool),
                 torch.tensor([r[1] for r in rows], dtype=torch.bool) if noun_judge is not None else None,
                 [r[2] for r in rows], [r[3] for r in rows] if keep_images else None)
    if key is not None and (key not in memo or noun_judge is not None):
        memo[key] = (out, model, judge, noun_judge)
    return out


def summarise(s: Scored, reference: Scored | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Fidelity beside the gain, each with a 95 % bootstrap CI over prompts (one image per
    prompt here, so prompts are the resampled unit): CultureVQA ("culture"), noun accuracy
    ("noun", when judged) and SSIM against `reference` ("ssim": the same prompts and seeds
    without the intervention; both need `keep_images=True`). Values are `Rate`s or None."""
    out = {"culture": Rate.of(s.correct, n_boot, seed),
           "noun": Rate.of(s.noun_correct, n_boot, seed) if s.noun_correct is not None else None, "ssim": None}
    if reference is not None:
        if s.images is None or reference.images is None:
            raise CultureLensError("summarise: structure change needs the images of both conditions (score(..., keep_images=True))")
        if s.ids != reference.ids:
            raise CultureLensError(f"summarise: the reference holds other prompts ({len(reference.ids)} vs {len(s.ids)}; "
                                   f"first ids {reference.ids[:2]} vs {s.ids[:2]})")
        out["ssim"] = Rate.of_values(ssim(s.images, reference.images), n_boot, seed)
    return out


def site_change(
    model,
    groups: dict[str, Sequence[PromptPair]],
    interventions_for: InterventionsFor,
    prompt: str = "concept",
    batch_size: int = 64,
) -> Tensor:
    """Per prompt (canonical order), the L2 norm of the change the culture's interventions make to
    the text-encoder activations at the sites they edit (all token positions), measured with the
    same hooks as generation. A control whose change is 0 on a prompt cannot change its image:
    `site_change(random) / site_change(detected)` shows how silent a control is."""
    import interp

    items = [(c, p) for c, ps in groups.items() for p in ps]
    ivs_of = {c: list(interventions_for(c)) for c in groups}
    sites = sorted({iv.site for ivs in ivs_of.values() for iv in ivs})
    if not sites:
        return torch.zeros(len(items), dtype=torch.float64)
    bad = [s for s in sites if not s.startswith("text")]
    if bad:
        raise CultureLensError(f"site_change: measures text-encoder sites only; got {bad}")
    out = []
    for s in range(0, len(items), batch_size):
        batch = items[s : s + batch_size]
        texts = [p.concept_prompt if prompt == "concept" else p.noun_prompt for _, p in batch]
        cultures = [c for c, _ in batch]
        base = interp.capture(model, texts, sites=sites, batch_size=len(texts))
        edit = interp.capture(model, texts, sites=sites, batch_size=len(texts),
                              interventions=interp.OnRows.grouped(cultures, ivs_of))
        sq = sum((edit[k].double() - base[k].double()).pow(2).flatten(1).sum(1) for k in sites)
        out.append(sq.sqrt())
    return torch.cat(out)


def noun_judge_from(predict_nouns: Callable[[list], Sequence[str]], noun_of: Callable[[PromptPair], str]) -> Callable:
    """A `noun_judge` for `score`: `predict_nouns(images)` -> one noun label per image (e.g. the
    organism judge's `predict_full(images)["noun"]`), compared with `noun_of(pair)`."""

    def judge(images: list, pairs: Sequence[PromptPair]) -> Tensor:
        got = list(predict_nouns(images))
        return torch.tensor([g == noun_of(p) for g, p in zip(got, pairs)])

    return judge
