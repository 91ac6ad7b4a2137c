"""Evaluate the organism: generate per prompt kind, judge, tabulate culture / neutral / junk / noun.

`score(judge, images, prompts)` only judges (use it on images made with interventions by
`interp.generate`); `evaluate_organism` also generates, with the folder's defaults.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tqdm import tqdm

from circuits.organism.judge import JUDGE_STYLES, JUNK, CultureWorldJudge, _to_tensor
from circuits.organism.model import GENERATION_DEFAULTS
from circuits.organism.pipeline import CultureWorldPipeline
from circuits.organism.prompts import EVAL_KINDS, EvalPrompt, eval_prompts
from circuits.organism.render import NEUTRAL, NOUNS
from circuits.plots import pyplot, save_figure
from interp.checks import renamed
from interp.errors import CultureLensError
from interp.result_io import DataclassResult, jsonable, record, with_heading

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Judged", "KindRow", "EvalResult", "score", "evaluate_organism", "default_prompts", "prompt_seed"]


@dataclass(frozen=True)
class Judged:
    """One judged image: the prompt it came from, its seed and the judge's labels."""

    prompt: EvalPrompt
    seed: int
    style: str  # a culture, "neutral" or "junk"
    noun: str


@dataclass
class KindRow:
    kind: str
    n: int
    culture_acc: float | None  # judged style == the prompt's culture (None when no culture)
    neutral: float
    junk: float
    noun_acc: float


@dataclass
class EvalResult(DataclassResult):
    """The organism quality table: one `KindRow` per prompt kind, and every judged image.
    `save(folder)` writes organism_eval.json (`to_json` plus the judged images) and an empty
    organism_eval.safetensors (no tensors)."""

    result_name: ClassVar[str] = "organism_eval"

    rows: dict[str, KindRow]
    judged: list[Judged] = field(repr=False)

    def gap(self) -> float | None:
        """Culture accuracy of local modifier prompts minus that of local noun-only prompts."""
        a, b = self.rows.get("local_modifier"), self.rows.get("local_noun")
        if a is None or b is None:
            return None
        return a.culture_acc - b.culture_acc

    def to_markdown(self, heading: str | None = None) -> str:
        """One row per prompt kind (culture / noun accuracy, neutral and junk shares) and the
        gap; under `heading` (a Markdown heading line) when given."""
        out = ["| prompts | n | culture acc | neutral | junk | noun acc |", "|---|---|---|---|---|---|"]
        for r in self.rows.values():
            ca = "–" if r.culture_acc is None else f"{r.culture_acc:.3f}"
            out.append(f"| {r.kind} | {r.n} | {ca} | {r.neutral:.3f} | {r.junk:.3f} | {r.noun_acc:.3f} |")
        g = self.gap()
        if g is not None:
            out.append(f"\nGap (local modifier − local noun-only culture accuracy): {100 * g:.1f} points")
        return with_heading("\n".join(out), heading)

    def to_json(self) -> dict:
        return {"rows": {k: asdict(v) for k, v in self.rows.items()}, "gap": self.gap()}

    def saved_record(self) -> dict[str, Any]:
        # to_json is the table reports embed (logs/eval.json, results.json); `load` also needs
        # the judged images, so the saved record adds them
        return {**record(self), "judged": jsonable(self.judged)}

    def plot(self, path: str | Path | None = None) -> Figure:
        """Per prompt kind: culture accuracy, neutral and junk shares and noun accuracy, as grouped bars."""
        plt = pyplot()
        kinds = list(self.rows)
        if not kinds:
            raise CultureLensError("EvalResult.plot: no prompt kinds to draw")
        series = [("culture acc", [r.culture_acc for r in self.rows.values()]),
                  ("neutral", [r.neutral for r in self.rows.values()]),
                  ("junk", [r.junk for r in self.rows.values()]),
                  ("noun acc", [r.noun_acc for r in self.rows.values()])]
        fig, ax = plt.subplots(figsize=(1.2 * len(kinds) + 2.5, 3.2))
        width = 0.8 / len(series)
        for j, (label, vals) in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(kinds))]
            # a kind without a culture (English noun-only) has no culture accuracy: no bar
            ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None], width,
                   label=label, color=f"C{j}")
        ax.set_xticks(range(len(kinds)), kinds, rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of images")
        g = self.gap()
        ax.set_title("organism quality" + ("" if g is None else f" (gap {100 * g:.1f} points)"), fontsize=9)
        ax.legend(fontsize=7)
        return save_figure(fig, path)


def prompt_seed(text: str, seed: int) -> int:
    """The noise seed of one (prompt, seed): independent of batching and of the prompt list."""
    return zlib.crc32(f"{seed}|{text}".encode())


def default_prompts(split: str | None = None) -> list[EvalPrompt]:
    """Every evaluation kind over one bundled split (None: all 120 pairs)."""
    return [p for k in EVAL_KINDS for p in eval_prompts(k, split)]


def score(judge: CultureWorldJudge, images, prompts: Sequence[EvalPrompt], seeds: Sequence[int] | None = None) -> EvalResult:
    """Judge `images` (PIL list or [N,3,32,32] tensor in [-1,1]) made from `prompts` (same order)."""
    x = images if isinstance(images, torch.Tensor) else _to_tensor(images)
    if len(x) != len(prompts):
        raise ValueError(f"score: {len(x)} images but {len(prompts)} prompts")
    ps, pn = judge.predict_tensor(x)
    styles = [JUDGE_STYLES[i] for i in ps.argmax(1).tolist()]
    nouns = [NOUNS[i] for i in pn.argmax(1).tolist()]
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    judged = [Judged(p, s, st, no) for p, s, st, no in zip(prompts, seeds, styles, nouns)]
    rows: dict[str, KindRow] = {}
    for kind in dict.fromkeys(p.kind for p in prompts):
        js = [j for j in judged if j.prompt.kind == kind]
        with_c = [j for j in js if j.prompt.culture is not None and not j.prompt.kind.startswith("en_noun")]
        rows[kind] = KindRow(
            kind=kind, n=len(js),
            culture_acc=(sum(j.style == j.prompt.culture for j in with_c) / len(with_c)) if with_c else None,
            neutral=sum(j.style == NEUTRAL for j in js) / len(js),
            junk=sum(j.style == JUNK for j in js) / len(js),
            noun_acc=sum(j.noun == j.prompt.noun for j in js) / len(js),
        )
    return EvalResult(rows, judged)


@torch.no_grad()
@renamed(steps="num_steps")
def generate(pipe: CultureWorldPipeline, texts: Sequence[str], seeds: Sequence[int], num_steps: int, guidance: float, batch: int = 64, progress: bool = True) -> torch.Tensor:
    """Pixels [N, 3, 32, 32] in [-1, 1], one per (text, seed), each with its own noise seed, after
    `num_steps` denoising steps."""
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="generate", disable=not progress, mininterval=10):
        gens = [torch.Generator().manual_seed(prompt_seed(t, s)) for t, s in zip(texts[i : i + batch], seeds[i : i + batch])]
        out.append(pipe(list(texts[i : i + batch]), num_inference_steps=num_steps, guidance_scale=guidance, generator=gens, output_type="latent").images.clamp(-1, 1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, 32, 32)


@renamed(steps="num_steps")
def evaluate_organism(
    pipeline: str | Path | CultureWorldPipeline,
    judge: CultureWorldJudge | str | Path,
    prompts: Sequence[EvalPrompt] | None = None,
    seeds: Sequence[int] = (0, 1),
    num_steps: int | None = None,
    guidance: float | None = None,
    batch: int = 64,
) -> EvalResult:
    """Generate every prompt × seed (`num_steps` denoising steps; defaults: the folder's
    culturelens.json), judge, tabulate."""
    from circuits.organism.export import DEFAULTS_FILE, load_pipeline

    defaults = dict(GENERATION_DEFAULTS)
    if not isinstance(pipeline, CultureWorldPipeline):
        f = Path(pipeline) / DEFAULTS_FILE
        if f.is_file():
            defaults.update(json.loads(f.read_text()))
        pipeline = load_pipeline(pipeline)
    if not isinstance(judge, CultureWorldJudge):
        judge = CultureWorldJudge.load(judge)
    prompts = list(prompts) if prompts is not None else default_prompts()
    texts = [p.text for p in prompts for _ in seeds]
    seed_list = [s for _ in prompts for s in seeds]
    x = generate(pipeline, texts, seed_list, num_steps or defaults["steps"], defaults["guidance"] if guidance is None else guidance, batch)
    return score(judge, x, [p for p in prompts for _ in seeds], seed_list)
