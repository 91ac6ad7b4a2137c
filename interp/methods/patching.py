"""Activation patching: clean activations written into the corrupted run, for text and denoiser sites.

Text sites (`text.blocks.{l}...`): each condition (site × head group × position; heads at
attn.hook_q/k/v/z) is one nnsight trace of the encoder (write at one site, read the encoder
output), the same code path as `interp.capture`; the metric scores what the denoiser would receive.

Denoiser sites (`unet....`, `transformer....`): the clean prompts are generated once with every
site captured at every step ([T, C, B, ...]); then each *condition* (site × step group × head
group × position) is one patched copy of the corrupt prompts. Several conditions share one
generation as rows of the batch, each row with its own prompt's seed, so row k of a batch is the
corrupt run of its prompt with only its own condition patched (a boolean mask per site and step
selects its rows, CFG branch, heads and token positions). The metric scores each condition's
`Generation` (final latents and images).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from interp.checks import index_list, is_int
from interp.errors import CultureLensError, SiteError
from interp.interventions import BRANCH_CHOICES, InterventionBase, Replace
from interp.methods.capture import capture, trace_encoder
from interp.methods.generation import Generation, capture_generation, generate, prompt_seeds
from interp.model.sites import Site, parse
from interp.result_io import load_result, save_result, with_heading

# metric(out) -> scalar (or a tensor, averaged). `out` is what the patched run produced: for text
# sites the encoder output [B, S, d] (what the denoiser receives); for denoiser sites the
# `interp.Generation` of that condition's B prompts (`.latents` [B, C, h, w], `.images`).
Metric = Callable[[Any], Any]
Groups = None | str | Sequence[int | Sequence[int]]


@dataclass
class PatchResult:
    """Tidy table: one row per condition (site, step, head, position) with the metric value and
    the normalised effect (value - corrupt) / (clean - corrupt): 1 = fully restores the clean
    run, 0 = no effect. `step`/`head`/`position` are None (= all), an int, or a tuple (a group).
    `meta` records how the table was made (prompts, seed, steps, branch)."""

    rows: list[dict[str, Any]]
    clean_value: float
    corrupt_value: float
    meta: dict[str, Any] = field(default_factory=dict)

    KEYS = ("site", "step", "head", "position")

    def to_markdown(self, heading: str | None = None) -> str:
        """The table: one row per condition (its site, step / head when any row has one,
        position), the metric value and the effect; under `heading` when given."""
        cols = ["site"] + [k for k in ("step", "head") if any(r.get(k) is not None for r in self.rows)] + ["position"]
        lines = ["| " + " | ".join(cols) + " | value | effect |", "|" + "---|" * (len(cols) + 2)]
        for r in self.rows:
            cells = [_label(r.get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + f" | {r['value']:.4g} | {r['effect']:.3f} |")
        return with_heading("\n".join(lines), heading)

    def matrix(self, rows: str = "site", cols: str = "position") -> tuple[list[Any], list[Any], Tensor]:
        """(row labels, column labels, effect [n_rows, n_cols]) for plotting; `rows`/`cols` are
        "site", "step", "head" or "position". Conditions that share a cell (e.g. the heads of a
        site × step map) are averaged, NaNs ignored. Heads belong to their site: with several
        sites and no "site" axis, a "head" label is (site, head), so head h of one site is never
        averaged with head h of another."""
        for k in (rows, cols):
            if k not in self.KEYS:
                raise CultureLensError(f"PatchResult.matrix: {k!r} is not a table key; use one of {self.KEYS}")
        per_site = "site" not in (rows, cols) and len({_hashable(r.get("site")) for r in self.rows}) > 1

        def key(r: dict[str, Any], k: str) -> Any:
            if k == "head" and per_site and r.get("head") is not None:
                return SiteHead(_hashable(r.get("site")), _hashable(r["head"]))
            return _hashable(r.get(k))

        rl = list(dict.fromkeys(key(r, rows) for r in self.rows))
        cl = list(dict.fromkeys(key(r, cols) for r in self.rows))
        total = torch.zeros(len(rl), len(cl), dtype=torch.float64)
        count = torch.zeros_like(total)
        for r in self.rows:
            if not math.isnan(r["effect"]):
                i, j = rl.index(key(r, rows)), cl.index(key(r, cols))
                total[i, j] += r["effect"]
                count[i, j] += 1
        return rl, cl, torch.where(count > 0, total / count.clamp(min=1), torch.nan).float()

    def plot(self, path: str | Path | None = None, title: str = "activation patching", rows: str = "site",
             cols: str | None = None, vmin: float | None = None, vmax: float | None = None) -> Any:
        """Heat map of the normalised effect, `rows` × `cols` (default: sites × steps for denoiser
        results, sites × token positions for text, sites × heads for text patched per head
        without positions); e.g. rows="step", cols="head". The colour
        scale is symmetric around 0 and fits the data (single-head effects of 1e-4 stay visible)
        unless `vmin`/`vmax` are given."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if cols is None:
            per_head = all(r.get("position") is None for r in self.rows) and any(r.get("head") is not None
                                                                                 for r in self.rows)
            cols = "step" if self.meta.get("kind") == "denoiser" else "head" if per_head else "position"
        rl, cl, m = self.matrix(rows, cols)
        fig, ax = plt.subplots(figsize=(4.0 + 0.4 * len(cl), 1.5 + 0.35 * len(rl)), layout="constrained")
        finite = m[~torch.isnan(m)]
        top = float(finite.abs().max()) if finite.numel() else 1.0
        top = top if top > 0 else 1.0
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-top if vmin is None else vmin,
                       vmax=top if vmax is None else vmax, aspect="auto")
        ax.set_yticks(range(len(rl)), [_label(x) for x in rl], fontsize=7)
        ax.set_xticks(range(len(cl)), [_label(x) for x in cl], fontsize=7)
        ax.set_xlabel({"position": "token position", "step": "denoising step"}.get(cols, cols))
        ax.set_ylabel({"position": "token position", "step": "denoising step"}.get(rows, rows))
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="effect")
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig

    def save(self, folder: str | Path) -> Path:
        """`folder/patch.json` (the table, clean/corrupt values, meta) + `folder/patch.safetensors`
        (value and effect columns, float64, so NaN survives)."""
        keys = [{k: v for k, v in r.items() if k not in ("value", "effect")} for r in self.rows]
        meta = {"rows": keys, "clean_value": self.clean_value, "corrupt_value": self.corrupt_value, "meta": self.meta}
        t = {"value": torch.tensor([r["value"] for r in self.rows], dtype=torch.float64),
             "effect": torch.tensor([r["effect"] for r in self.rows], dtype=torch.float64),
             "clean_corrupt": torch.tensor([self.clean_value, self.corrupt_value], dtype=torch.float64)}
        return save_result(folder, "patch", meta, t)

    @classmethod
    def load(cls, folder: str | Path) -> "PatchResult":
        """Read back what `save` wrote."""
        meta, t = load_result(folder, "patch", "PatchResult.save")
        rows = []
        for r, v, e in zip(meta["rows"], t["value"].tolist(), t["effect"].tolist()):
            r = {k: (tuple(x) if isinstance(x, list) else x) for k, x in r.items()}
            rows.append({**r, "value": v, "effect": e})
        cc = t["clean_corrupt"].tolist()
        return cls(rows=rows, clean_value=cc[0], corrupt_value=cc[1], meta=meta["meta"])


class SiteHead(NamedTuple):
    """A head label that keeps its site (`PatchResult.matrix` with several sites)."""

    site: Any
    head: Any


def _hashable(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def _label(x: Any) -> str:
    if x is None:
        return "all"
    if isinstance(x, SiteHead):
        return f"{_label(x.site)} head {_label(x.head)}"
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], str):  # a group of sites patched together
        return " + ".join(x) if len(x) <= 2 else f"{len(x)} sites: {x[0]} … {x[-1]}"
    if isinstance(x, (tuple, list)):
        if len(x) > 2 and list(x) == list(range(x[0], x[0] + len(x))):  # a run of steps: "0-4"
            return f"{x[0]}-{x[-1]}"
        return ",".join(str(i) for i in x)
    return str(x)


def _scalar(value: Any) -> float:
    """The metric's one number; a vector is refused (averaging it silently would hide which
    element moved)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.numel() != 1:
        raise CultureLensError(f"patch: the metric returned {t.numel()} values (shape {list(t.shape)}); it must "
                               "return one number: reduce it yourself (e.g. .mean() or one element)")
    return float(t.reshape(()))


def _check_contrast(clean: float, corrupt: float) -> None:
    """Warn when the metric does not tell the clean run from the corrupt one: every effect,
    (value − corrupt) / (clean − corrupt), is then NaN or float noise."""
    if abs(clean - corrupt) <= 1e-6 * max(abs(clean), abs(corrupt), 1e-12):
        warnings.warn(f"patch: the metric gives the clean and corrupt runs the same value ({clean:.6g} vs "
                      f"{corrupt:.6g}); the effects are meaningless: choose prompts or a metric that differ",
                      stacklevel=4)


def _effect(value: float, clean: float, corrupt: float, where: str) -> float:
    denom = clean - corrupt
    effect = (value - corrupt) / denom if denom != 0 else math.nan
    if math.isnan(effect):
        why = "clean and corrupt values are equal" if denom == 0 else f"the metric gave {value}"
        warnings.warn(f"patch: effect is NaN for {where} ({why})", stacklevel=4)
    return effect


def patch(model: Any, clean: str | Sequence[str], corrupt: str | Sequence[str], sites: Sequence[str | Sequence[str]],
          metric: Metric, steps: Groups = None, heads: Groups = None, positions: Sequence[int] | None = None, *,
          seed: int | Sequence[int] = 0, num_steps: int | None = None, guidance: float | None = None,
          branch: str = "both", batch_size: int = 16, truncate: bool = False) -> PatchResult:
    """Patch each site (× step group × head group × token position) from the `clean` run into the
    `corrupt` run and score it with `metric` (see `Metric`: the encoder output for text sites, the
    condition's `Generation` for denoiser sites). A list inside `sites` is a group of denoiser
    sites patched together (one condition), e.g. every `attn2.hook_out`.

    `steps` (denoiser sites only) / `heads` (sites with heads: q/k/v/z/pattern on the denoiser,
    attn.hook_q/k/v/z on text encoders): None = all at once (one condition); "each" = one
    condition per step / head; a list of ints = one condition per listed step / head; a list of
    lists = one condition per group. E.g. `sites=[f"text.blocks.{l}.attn.hook_z" for l in
    layers], heads="each"` and `result.matrix("site", "head")` give a layers × heads effect map.
    `positions`: token positions, one condition each (text sites;
    on denoiser sites only where there is a token axis: cross-attention `hook_pattern` keys and
    `attn2.hook_k` / `hook_v`); clean and corrupt prompts must then have equal token lengths. On
    SD3/FLUX joint attention (`transformer...attn.hook_q/k/v/z/pattern`) positions index the joint
    sequence N (pattern: its keys), exactly as `Replace(positions=)` does there
    (`Model.joint_positions()` gives the text and image ranges).
    `branch`: which classifier-free-guidance rows to patch (`interp.interventions.BRANCH_CHOICES`:
    "cond", "uncond", "both"); the default here is "both" (an intervention's default is "cond").
    `seed`, `num_steps`, `guidance` are passed to every generation; `batch_size` is the most
    prompts one generation holds (conditions are packed as rows, so a grid of conditions costs
    about ceil(n × B / batch_size) generations).
    """
    clean = [clean] if isinstance(clean, str) else list(clean)
    corrupt = [corrupt] if isinstance(corrupt, str) else list(corrupt)
    if len(clean) != len(corrupt):
        raise CultureLensError(f"patch: {len(clean)} clean prompts but {len(corrupt)} corrupt prompts")
    if not clean:
        raise CultureLensError("patch: no prompts given")
    if not sites:
        raise CultureLensError("patch: no sites given")
    groups = [tuple(parse(model, n) for n in ([g] if isinstance(g, str) else g)) for g in sites]
    if any(not g for g in groups):
        raise CultureLensError("patch: an empty site group in sites=")
    parsed = list({s.name: s for g in groups for s in g}.values())
    text = [s for s in parsed if s.encoder in model.encoders]
    if text and len(text) != len(parsed):
        raise SiteError(f"patch: text sites {[s.name for s in text]} and denoiser sites "
                        f"{[s.name for s in parsed if s not in text]} in one call are scored on different outputs "
                        "(encoder output vs generation); call patch once per kind")
    for s in parsed:
        if not s.writable:
            raise SiteError(f"patch: {s.name!r} cannot be patched (text attention patterns are read-only)")
    # Joint-sequence positions (SD3/FLUX) index the padded joint sequence, the same length in both
    # runs, as Replace(positions=) does: no token-length check for them alone.
    joint_only = not text and all(s.kind in JOINT_KINDS for s in parsed)
    if positions is not None and not joint_only:
        _check_lengths(model, clean, corrupt, sorted({s.encoder for s in text} or set(model.encoders)))
    if heads is not None:
        nohead = [s.name for s in parsed if s.head_axis is None]
        if nohead:
            raise SiteError(f"patch: heads= given but {nohead[0]!r} has no heads (q/k/v/z/pattern sites have; on "
                            "text encoders the writable ones are attn.hook_q/k/v/z)")
    if text:
        if steps is not None:
            raise SiteError(f"patch: steps= applies to denoiser sites only; {text[0].name!r} is a text-encoder "
                            "site (it runs once per prompt, not per denoising step)")
        if any(len(g) > 1 for g in groups):
            raise SiteError("patch: site groups (lists of sites patched together) are for denoiser sites only")
        return _patch_text(model, clean, corrupt, text, metric, heads, positions, truncate)
    return _patch_denoiser(model, clean, corrupt, groups, metric, steps, heads, positions, seed, num_steps, guidance,
                           branch, batch_size, truncate)


def _check_lengths(model: Any, clean: list[str], corrupt: list[str], encoders: Sequence[str]) -> None:
    """Token positions mean the same thing in both runs only if the prompts tokenize to equal lengths."""
    for prefix in encoders:
        tok = model.encoders[prefix].tokenizer
        a = [len(x) for x in tok(clean, truncation=False)["input_ids"]]
        b = [len(x) for x in tok(corrupt, truncation=False)["input_ids"]]
        bad = [(i, n, m) for i, (n, m) in enumerate(zip(a, b)) if n != m]
        if bad:
            i, n, m = bad[0]
            raise CultureLensError(
                f"patch: positions= given but clean and corrupt prompt {i} have different token lengths in the "
                f"{prefix} encoder ({n} vs {m}: {clean[i]!r} / {corrupt[i]!r}); positions would not line up. "
                "Use prompts of equal token length, or patch without positions")


def _patch_text(model: Any, clean: list[str], corrupt: list[str], parsed: list[Site], metric: Metric,
                heads: Groups, positions: Sequence[int] | None, truncate: bool) -> PatchResult:
    head_groups = {s.name: _groups(heads, s.dim, "heads", f"site {s.name!r}") for s in parsed}  # checked first
    clean_acts = capture(model, clean, [s.name for s in parsed], truncate=truncate)
    outputs: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, Any]] = []
    for s in parsed:
        if s.encoder not in outputs:
            _, c_out = trace_encoder(model, s.encoder, model.tokenize(clean, s.encoder, truncate=truncate), [], {},
                                     want_output=True)
            _, x_out = trace_encoder(model, s.encoder, model.tokenize(corrupt, s.encoder, truncate=truncate), [], {},
                                     want_output=True)
            outputs[s.encoder] = (_scalar(metric(c_out)), _scalar(metric(x_out)))
            _check_contrast(*outputs[s.encoder])
        c_val, x_val = outputs[s.encoder]
        batch = model.tokenize(corrupt, s.encoder, truncate=truncate)
        if positions is not None:
            n = batch["input_ids"].shape[1]
            bad = [p for p in positions if not -n <= p < n]
            if bad:
                raise SiteError(f"patch: positions {bad} out of range for sequence length {n}")
        # One condition per head group × position: the clean value at those heads (q/k/v/z:
        # axis 2 of [B, S, H, d]) and positions, the corrupt run's everywhere else.
        for group in head_groups[s.name]:
            head = _group_label(group)
            for pos in ([None] if positions is None else list(positions)):
                iv = Replace(s.name, clean_acts[s.name], positions=None if pos is None else [pos],
                             heads=None if group is None else list(group))
                _, out = trace_encoder(model, s.encoder, batch, [], {s.name: [iv]}, want_output=True)
                value = _scalar(metric(out))
                where = f"site {s.name!r}, head {_label(head)}, position {_label(pos)}"
                rows.append({"site": s.name, "layer": s.layer, "kind": s.kind, "step": None, "head": head,
                             "position": pos, "value": value, "effect": _effect(value, c_val, x_val, where)})
    first = outputs[parsed[0].encoder]
    return PatchResult(rows=rows, clean_value=first[0], corrupt_value=first[1],
                       meta={"kind": "text", "clean": clean, "corrupt": corrupt})


# -- denoiser sites ---------------------------------------------------------------------------

def _groups(spec: Groups, n: int, what: str, where: str) -> list[tuple[int, ...] | None]:
    """None -> [None] (all at once); "each" -> one group per index; a list of ints -> one group
    each; a list of lists -> those groups. Indices are checked as interventions check theirs
    (`interp.checks.index_list`: a lone int, a float or a bool is refused, not read as a count or
    truncated) and against the range."""
    if spec is None:
        return [None]
    if isinstance(spec, str):
        if spec != "each":
            raise CultureLensError(f"patch: {what}={spec!r}; use None, 'each', a list of indices or a list of lists")
        return [(i,) for i in range(n)]
    if is_int(spec):
        hint = " (a count of denoising steps is num_steps=)" if what == "steps" else ""
        raise CultureLensError(f"patch: {what}={int(spec)} is a single integer, but {what}= takes indices: "
                               f"[{int(spec)}] patches {what[:-1]} {int(spec)} alone, 'each' every {what[:-1]} "
                               f"in turn{hint}")
    if isinstance(spec, Tensor):
        spec = spec.tolist() if spec.ndim > 0 else [spec]
    if not hasattr(spec, "__iter__"):
        raise CultureLensError(f"patch: {what}= expected None, 'each' or a list of indices; got {type(spec).__name__}")
    out: list[tuple[int, ...]] = []
    for j, g in enumerate(spec):
        is_group = (isinstance(g, Sequence) and not isinstance(g, str)) or (isinstance(g, Tensor) and g.ndim > 0)
        idx = tuple(index_list(g if is_group else [g], f"patch: {what}[{j}]"))
        if not idx:
            raise CultureLensError(f"patch: {what}[{j}] is an empty group")
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise CultureLensError(f"patch: {what} {bad} out of range for {where}; valid {what} are 0..{n - 1}")
        out.append(idx)
    if not out:
        raise CultureLensError(f"patch: {what}= is an empty list")
    return out


def _group_label(g: tuple[int, ...] | None) -> int | tuple[int, ...] | None:
    return g[0] if g is not None and len(g) == 1 else g


JOINT_KINDS = ("jattn_q", "jattn_k", "jattn_v", "jattn_z", "jattn_pattern")


def _token_axis(site: Site) -> int | None:
    """Axis (of the activation, batch first) that `positions=` selects, or None: the key axis of a
    UNet cross-attention pattern, the token axis of its k / v, and on MMDiT joint attention
    (SD3/FLUX `attn.hook_q/k/v/z/pattern`) the joint axis N, as `Replace(positions=)` reads it
    (`Model.joint_positions()` says which are text and which image). Elsewhere positions are
    pixels, which clean/corrupt token positions do not describe."""
    if site.name.endswith(("attn2.hook_pattern", "attn2.hook_k", "attn2.hook_v")) or site.kind in JOINT_KINDS:
        return site.position_axis
    return None


class _MaskedReplace(InterventionBase):
    """At one step, rows/heads/positions where `mask` is true take the clean `value`."""

    branch = "both"  # the mask already selects the CFG rows

    def __init__(self, site: str, step: int, value: Tensor, mask: Tensor) -> None:
        self.site, self.steps, self.value, self.mask = site, [step], value, mask

    def apply(self, act: Tensor) -> Tensor:
        if act.shape != self.value.shape:
            raise CultureLensError(f"patch: site {self.site!r} at step {self.steps[0]} has shape {tuple(act.shape)} "
                                   f"in the patched run but {tuple(self.value.shape)} in the clean capture")
        return torch.where(self.mask.to(act.device), self.value.to(act.device, act.dtype), act)


@dataclass
class _Condition:
    sites: tuple[Site, ...]  # patched together
    steps: tuple[int, ...] | None
    heads: tuple[int, ...] | None
    position: int | None


def _patch_denoiser(model: Any, clean: list[str], corrupt: list[str], groups: list[tuple[Site, ...]], metric: Metric,
                    steps: Groups, heads: Groups, positions: Sequence[int] | None, seed: Any, num_steps: int | None,
                    guidance: float | None, branch: str, batch_size: int, truncate: bool) -> PatchResult:
    if branch not in BRANCH_CHOICES:
        raise CultureLensError(f"patch: branch={branch!r}; use one of {', '.join(map(repr, BRANCH_CHOICES))} "
                               "(patch's default is 'both')")
    n_prompts = len(clean)
    T = int(num_steps if num_steps is not None else model.defaults["steps"])
    step_groups = _groups(steps, T, "steps", f"a {T}-step run")
    parsed = list({s.name: s for g in groups for s in g}.values())
    for s in parsed:
        if positions is not None and _token_axis(s) is None:
            raise SiteError(f"patch: positions= index text tokens, but {s.name!r} has no token axis (cross-attention "
                            "hook_pattern, attn2.hook_k and attn2.hook_v have; on SD3/FLUX joint attention "
                            "attn.hook_q/k/v/z/pattern, positions index the joint sequence)")
    conds = [_Condition(sg, g, h, p) for sg in groups for g in step_groups
             for h in _groups(heads, min(s.dim for s in sg), "heads", f"site {sg[0].name!r}")
             for p in ([None] if positions is None else list(positions))]
    gen_kw = dict(num_steps=T, guidance=guidance, truncate=truncate)
    seeds = prompt_seeds(seed, n_prompts)
    clean_gen = capture_generation(model, clean, [s.name for s in parsed], seed=seeds, **gen_kw)
    corrupt_gen = generate(model, corrupt, seed=seeds, **gen_kw)
    c_val, x_val = _scalar(metric(clean_gen)), _scalar(metric(corrupt_gen))
    _check_contrast(c_val, x_val)
    acts = clean_gen.acts
    first = acts[parsed[0].name]
    if first.shape[0] != T:
        raise CultureLensError(f"patch: the pipeline called the denoiser {first.shape[0]} times for {T} steps; "
                               "patching needs one call per step")
    n_rows = first.shape[1]
    if branch != "both" and n_rows == 1:
        if model.family == "flux":
            raise CultureLensError(
                f"patch: branch={branch!r} on FLUX: FLUX's guidance is embedded (guidance= is an input of the "
                "transformer, not classifier-free guidance), so each prompt has one row, the conditional one, and "
                "there are no CFG branches to choose from; use branch='both' (patch runs without true_cfg_scale)")
        raise CultureLensError(f"patch: branch={branch!r} but this run has no classifier-free guidance (one row per "
                               "prompt); use branch='both' or guidance > 1")
    if positions is not None:
        for s in parsed:
            n_tok = acts[s.name].shape[2:][_token_axis(s)]
            bad = [p for p in positions if not -n_tok <= p < n_tok]
            if bad:
                raise SiteError(f"patch: positions {bad} out of range for {n_tok} tokens at {s.name!r}")
    per_gen = max(1, batch_size // n_prompts)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(conds), per_gen):
        chunk = conds[start:start + per_gen]
        ivs = _chunk_interventions(acts, chunk, n_prompts, branch)
        gen = generate(model, corrupt * len(chunk), seed=seeds * len(chunk), interventions=ivs, **gen_kw)
        for k, c in enumerate(chunk):
            part = Generation(images=gen.images[k * n_prompts:(k + 1) * n_prompts],
                              latents=gen.latents[k * n_prompts:(k + 1) * n_prompts])
            value = _scalar(metric(part))
            step, head = _group_label(c.steps), _group_label(c.heads)
            one = len(c.sites) == 1
            name = c.sites[0].name if one else tuple(s.name for s in c.sites)
            where = f"site {name!r}, step {_label(step)}, head {_label(head)}, position {_label(c.position)}"
            rows.append({"site": name, "layer": c.sites[0].layer if one else tuple(s.layer for s in c.sites),
                         "kind": c.sites[0].kind if one else tuple(s.kind for s in c.sites), "step": step,
                         "head": head, "position": c.position, "value": value,
                         "effect": _effect(value, c_val, x_val, where)})
    meta = {"kind": "denoiser", "clean": clean, "corrupt": corrupt, "seeds": seeds, "num_steps": T,
            "guidance": float(guidance if guidance is not None else model.defaults["guidance"]), "branch": branch,
            "generations": -(-len(conds) // per_gen)}
    return PatchResult(rows=rows, clean_value=c_val, corrupt_value=x_val, meta=meta)


def _condition_mask(site: Site, c: _Condition, k: int, n: int, n_prompts: int, clean: Tensor,
                    branch: str) -> Tensor:
    """Where condition k (of n in the batch) patches `site`: a bool tensor broadcastable to
    [C, n*B, *rest], true on its own batch rows, CFG branch, heads and token position."""
    C = clean.shape[1]
    shape = (C, n * n_prompts, *clean.shape[3:])
    nd = len(shape)

    def along(axis: int, idx: Any) -> Tensor:
        v = torch.zeros(shape[axis], dtype=torch.bool)
        v[idx] = True
        view = [1] * nd
        view[axis] = shape[axis]
        return v.view(view)

    sel = along(1, slice(k * n_prompts, (k + 1) * n_prompts))
    if C == 2 and branch != "both":
        sel = sel & along(0, 0 if branch == "uncond" else 1)
    if c.heads is not None:  # activation axes are batch first; [C, rows, *rest] has one more
        sel = sel & along(site.head_axis % (nd - 1) + 1, list(c.heads))
    if c.position is not None:
        sel = sel & along(_token_axis(site) % (nd - 1) + 1, c.position)
    return sel


def _chunk_interventions(acts: dict[str, Tensor], chunk: list[_Condition], n_prompts: int,
                         branch: str) -> list[_MaskedReplace]:
    """One masked replacement per (site, step) used by the chunk: condition k owns batch rows
    k*B..(k+1)*B-1 of each CFG block, and within them its branch, heads and token position."""
    n = len(chunk)
    masks: dict[tuple[str, int], Tensor] = {}
    for k, c in enumerate(chunk):
        for site in c.sites:
            clean = acts[site.name]  # [T, C, B, *rest]
            sel = _condition_mask(site, c, k, n, n_prompts, clean, branch)
            for t in (range(clean.shape[0]) if c.steps is None else c.steps):
                key = (site.name, t)
                masks[key] = masks[key] | sel if key in masks else sel
    ivs = []
    for (name, t), mask in masks.items():
        clean = acts[name][t]  # [C, B, *rest] -> one copy per condition along the batch, CFG blocks kept
        value = clean.repeat(1, n, *([1] * (clean.ndim - 2)))
        flat = (-1, *value.shape[2:])
        ivs.append(_MaskedReplace(name, t, value.reshape(flat), mask.expand(value.shape).reshape(flat)))
    return ivs
