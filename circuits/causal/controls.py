"""Random-unit controls of the causal tables, summarised so that a silent control is visible.

Two kinds (PAPER.md decision 10): "uniform", the paper's "same number of units at random"
(`interp.random_units`, match=None), and "activity", drawn among units with the same firing
frequency and magnitude on the probe prompts (match="activity"). For every draw we record what
it does to CultureVQA and how much it changes the site's activation relative to the detected
units on the same prompts (`circuits.evaluate.site_change`): a draw with ratio ~0 cannot change
any image, and then "random units change nothing" is no evidence.

Statistics. The empirical p of the detected condition among k draws, (1 + #draws at least as
extreme) / (k + 1), cannot go below 1/(k + 1) (1/11 for 10 draws). Beside it, a paired
per-prompt test: each prompt's detected outcome against the share of the k draws that judged
it correct (the draws pooled), Wilcoxon signed-rank over prompts (`circuits.stats.paired_prompt_test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from interp.errors import CultureLensError

from circuits import stats as sb
from circuits.results import jsonable

KINDS = {"uniform": None, "activity": "activity"}   # control name -> interp.random_units(match=...)
LABELS = {"uniform": "uniform random (paper)", "activity": "activity-matched random"}


@dataclass
class Control:
    """k draws of one control kind (each draw: the same count of units per culture as detected)."""

    kind: str
    draws: list[float]                 # CultureVQA per draw
    act_ratio: list[float]             # per draw: ||Δ site act|| / ||Δ site act, detected units||, all prompts
    silent: list[float]                # per draw: share of prompts whose site activation it leaves exactly unchanged
    noun: list[float] = field(default_factory=list)   # noun accuracy per draw (empty without a noun judge)
    p_empirical: float | None = None   # detected among the draws; floored at p_floor
    p_floor: float | None = None       # 1 / (k + 1)
    p_paired: float | None = None      # Wilcoxon over prompts: detected vs the pooled draws

    @property
    def k(self) -> int:
        return len(self.draws)

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.draws, dtype=torch.float64).mean()) if self.draws else float("nan")

    @property
    def sd(self) -> float:
        return float(torch.tensor(self.draws, dtype=torch.float64).std()) if len(self.draws) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return jsonable({**self.__dict__, "k": self.k, "mean": self.mean, "sd": self.sd})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Control":
        return cls(**{k: d[k] for k in ("kind", "draws", "act_ratio", "silent", "noun", "p_empirical", "p_floor", "p_paired")})

    def label(self) -> str:
        return f"{LABELS.get(self.kind, self.kind)} ({self.k} draws, mean ± sd)"

    def ratio_text(self) -> str:
        """Site change of the draws relative to the detected units: median [min, max], silent draws."""
        if not self.act_ratio:
            return "–"
        r = torch.tensor(self.act_ratio, dtype=torch.float64)
        dead = sum(x == 1.0 for x in self.silent)
        return (f"{r.median().item():.2f} [{r.min().item():.2f}, {r.max().item():.2f}]"
                + (f"; {dead}/{self.k} draws change nothing" if dead else ""))


def run_control(
    kind: str,
    k: int,
    score_draw: Callable[[int], Any],
    change_draw: Callable[[int], Tensor],
    detected: Any,
    detected_change: Tensor,
    lower_is_extreme: bool,
) -> Control:
    """Score `k` draws (`score_draw(r)` -> `Scored`, `change_draw(r)` -> per-prompt site change)
    and compare them with the detected condition (`detected`: its `Scored`). `lower_is_extreme`:
    masking (a draw at or below the detected accuracy counts against it); False for amplifying."""
    if kind not in KINDS:
        raise CultureLensError(f"unknown control {kind!r}; use one of {sorted(KINDS)}")
    if k < 1:
        raise CultureLensError(f"control {kind!r}: need at least 1 draw; got {k}")
    det_norm = float(detected_change.double().norm())
    if det_norm == 0:
        raise CultureLensError(f"control {kind!r}: the detected units leave the site unchanged on every prompt, "
                               "so no control can be compared with them (are the units ever active?)")
    draws, ratios, silent, nouns, pooled = [], [], [], [], torch.zeros(len(detected.correct), dtype=torch.float64)
    for r in range(k):
        s = score_draw(r)
        ch = change_draw(r).double()
        draws.append(s.correct.double().mean().item())
        pooled += s.correct.double()
        ratios.append(float(ch.norm()) / det_norm)
        silent.append(float((ch == 0).double().mean()))
        if s.noun_correct is not None:
            nouns.append(s.noun_correct.double().mean().item())
    pooled /= k
    rc = sb.random_control(detected.correct.double().mean().item(), draws, lower_is_extreme=lower_is_extreme)
    paired = sb.paired_prompt_p(pooled.tolist(), detected.correct.double().tolist())
    return Control(kind, draws, ratios, silent, nouns, rc["p_value"], rc["p_floor"], paired)
