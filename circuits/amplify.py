"""Unit interventions (mask, amplify) over either basis, the zero-training amplifier
(PAPER.md Step 4a) and its lambda sweep with the random-units control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import CultureLensError

from .pairs import as_pairs, by_concept
from .results import jsonable, write_json
from .units import CultureUnits, as_culture_units, UnitBasis


def scale_units(basis: UnitBasis, indices: Sequence[int], lam: float, keep_error: bool = True, label: str | None = None) -> Any:
    """An intervention scaling `indices` by (1 + lam) at the basis site: lam = -1 masks them.

    Native neurons: `interp.Mask` (lam = -1) or `interp.Amplify`. SAE latents: `sae.Steer`,
    which keeps the SAE error by default (decision 4: lam = 0 is then exactly the identity);
    `keep_error=False` is the paper-literal replacement F' = decode(Z_enh)."""
    import interp

    idx = [int(i) for i in indices]
    if basis.kind == "sae":
        import sae as sae_pkg

        return sae_pkg.Steer(basis.sae, basis.site, idx, lam, keep_error=keep_error)
    units = interp.Units(basis.site, idx, label=label)
    if lam == -1:
        return interp.Mask(units)
    return interp.Amplify(units, lam)


def random_indices(basis: UnitBasis, model, indices: Sequence[int], seed: int) -> list[int]:
    """Same count, same site, disjoint from `indices`, seeded (`interp.random_units`); the pool
    is the site's units for native neurons and the SAE's d_sae latents for SAE units."""
    import interp

    u = interp.Units(basis.site, list(indices))
    if basis.kind == "sae":
        r = interp.random_units(u, seed=seed, disjoint=True, dim=basis.sae.d_sae)
    else:
        r = interp.random_units(u, seed=seed, disjoint=True, model=model)
    return r.indices.tolist()


def target_culture(culture: str | None = None, language: str | None = None) -> str:
    """Decision 8: the culture is given, or read from the prompt's language by the fixed map."""
    from interp.culturebench import LANGUAGE_TO_CULTURE

    if culture is not None:
        return culture
    if language is None:
        raise CultureLensError("amplify: give the target culture or the prompt's language")
    key = language.lower()
    if key not in LANGUAGE_TO_CULTURE:
        raise CultureLensError(f"amplify: language {language!r} has no culture in the map; valid: {sorted(LANGUAGE_TO_CULTURE)}")
    return LANGUAGE_TO_CULTURE[key]


def amplify(
    units: CultureUnits | dict[str, Any],
    lam: float = 6.0,
    culture: str | None = None,
    language: str | None = None,
    keep_error: bool = True,
    random_seed: int | None = None,
    model: Any = None,
) -> Any:
    """The zero-training amplifier for one target culture: that culture's units x (1 + lam).
    `random_seed` swaps in random units (same count and site) for the control."""
    units = as_culture_units(units)
    c = target_culture(culture, language)
    if c not in units.cultures:
        raise CultureLensError(f"amplify: no units for culture {c!r}; have {sorted(units.cultures)}")
    idx = units.cultures[c].indices
    if not idx:
        raise CultureLensError(f"amplify: culture {c!r} has no units (all dropped by the noun filter?)")
    if random_seed is not None:
        idx = random_indices(units.basis, model, idx, random_seed)
    return scale_units(units.basis, idx, lam, keep_error, label=f"{c}:amplify")


@dataclass
class Rate:
    """An accuracy with its bootstrap CI."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, correct, n_boot: int = 1000, seed: int = 0) -> "Rate":
        from .stats_bridge import accuracy_ci

        return cls(*accuracy_ci([bool(x) for x in correct], n_boot=n_boot, seed=seed))


@dataclass
class LambdaSweep:
    """CultureVQA (and noun score) per lambda for the detected units and for random units."""

    lams: list[float]
    detected: list[Rate]
    random_mean: list[float]
    random_sd: list[float]
    random_draws: list[list[float]]
    noun_detected: list[Rate | None]
    noun_random_mean: list[float | None]
    best_lam: float
    n_prompts: int
    prompt: str

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def save(self, path) -> None:
        write_json(path, self)

    def plot(self, path) -> None:
        from .plots import plot_lines

        sd = torch.tensor(self.random_sd)
        rm = torch.tensor(self.random_mean)
        series = {
            "detected units": ([r.mean for r in self.detected], [r.low for r in self.detected], [r.high for r in self.detected]),
            "random units (mean ± sd)": (rm.tolist(), (rm - sd).tolist(), (rm + sd).tolist()),
        }
        if self.noun_detected and self.noun_detected[0] is not None:
            series["noun score (detected)"] = tuple(
                [getattr(r, k) for r in self.noun_detected] for k in ("mean", "low", "high"))
        plot_lines(self.lams, series, path, "λ", "CultureVQA", "amplifier λ sweep", mark=self.best_lam)


def lambda_sweep(
    model,
    units: CultureUnits | dict[str, Any],
    pairs: Sequence[Any],
    judge: Callable,
    lams: Sequence[float] = (0, 2, 4, 6, 7, 8),
    n_random: int = 3,
    prompt: str = "noun",
    noun_judge: Callable | None = None,
    keep_error: bool = True,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    n_boot: int = 1000,
) -> LambdaSweep:
    """Amplify each prompt's culture units (culture from the pair's label) at every lambda and
    judge CultureVQA; the same with `n_random` random unit sets at the same lambda."""
    from .evaluate import score

    units = as_culture_units(units)
    groups = by_concept(as_pairs(pairs))
    missing = [c for c in groups if c not in units.cultures]
    if missing:
        raise CultureLensError(f"lambda_sweep: no units for cultures {missing}")
    det, rmean, rsd, rdraws, ndet, nrand = [], [], [], [], [], []
    for lam in tqdm(list(lams), desc="λ sweep"):
        s = score(model, groups, judge, lambda c: [amplify(units, lam, culture=c, keep_error=keep_error)], prompt,
                  noun_judge, seed, steps, batch_size, desc=f"λ={lam}")
        det.append(Rate.of(s.correct, n_boot, seed))
        ndet.append(Rate.of(s.noun_correct, n_boot, seed) if s.noun_correct is not None else None)
        draws, ndraws = [], []
        # λ = 0 leaves any unit set unchanged (the SAE error kept), so every random draw would
        # regenerate exactly the detected row's images: reuse them.
        identity = lam == 0 and keep_error
        for r in range(n_random):
            sr = s if identity else score(
                model, groups, judge,
                lambda c: [amplify(units, lam, culture=c, keep_error=keep_error, random_seed=seed + 1 + r, model=model)],
                prompt, noun_judge, seed, steps, batch_size, desc=f"λ={lam} random {r}")
            draws.append(sr.correct.float().mean().item())
            if sr.noun_correct is not None:
                ndraws.append(sr.noun_correct.float().mean().item())
        t = torch.tensor(draws or [float("nan")], dtype=torch.float64)
        rdraws.append(draws)
        rmean.append(t.mean().item())
        rsd.append(t.std(unbiased=True).item() if len(draws) > 1 else 0.0)
        nrand.append(sum(ndraws) / len(ndraws) if ndraws else None)
    best = list(lams)[max(range(len(det)), key=lambda i: det[i].mean)]
    n = sum(len(v) for v in groups.values())
    return LambdaSweep([float(l) for l in lams], det, rmean, rsd, rdraws, ndet, nrand, float(best), n, prompt)
