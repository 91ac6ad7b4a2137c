"""The real-size workload: what a researcher's first run does on a full-size pipeline, timed.

Shared by `benchmarks/bench_realsize.py` (CPU table), `benchmarks/gpu_smoke.py` (one CUDA GPU)
and `tests/circuits/test_realsize.py`: load, capture of every text site vs a plain encoder forward,
plain vs masked (and amplified) generation, activation patching on a few text sites, a
culture-layer scan, and optionally Top-K SAE training on culture-layer tokens. Every phase
records wall time and peak memory (process RSS; CUDA peak allocated when on a GPU).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch

import interp
from circuits.data.culturebench import bundled
from circuits.plots import pyplot, save_figure
from interp.checks import renamed
from interp.result_io import DataclassResult, Stored, from_fields, read_json, with_heading

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Overhead goals of the issue: capture within 1.3x of a plain forward, masked generation
#: within 1.1x of plain generation.
GOALS = {"capture/forward": 1.3, "masked/plain generation": 1.1}


def rss_gb() -> float:
    """Resident set size of this process now (GB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e9


class Peak:
    """Peak RSS (sampled every 20 ms) and peak CUDA memory over a `with` block."""

    def __init__(self, device: str = "cpu"):
        self.device, self.rss, self.gpu = device, 0.0, None
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.rss = max(self.rss, rss_gb())
            time.sleep(0.02)

    def __enter__(self) -> "Peak":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss = rss_gb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.gpu = torch.cuda.max_memory_allocated() / 1e9
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, rss_gb())


@dataclass
class RealSizeRun(DataclassResult):
    """Timings of one architecture: `rows` (phase, seconds, peak RSS / GPU GB), `ratios` and
    `checks`. `save(folder)` writes realsize.json (the fields) and an empty realsize.safetensors."""

    result_name: ClassVar[str] = "realsize"

    name: str
    device: str
    dtype: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def measure(self, phase: str, fn: Callable[[], Any]) -> Any:
        """Run `fn`, record its wall time and peak memory as row `phase`, return its result."""
        gc.collect()
        with Peak(self.device) as peak:
            t0 = time.perf_counter()
            out = fn()
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        self.rows.append(dict(phase=phase, seconds=round(dt, 3), peak_rss_gb=round(peak.rss, 2),
                              peak_gpu_gb=None if peak.gpu is None else round(peak.gpu, 2)))
        return out

    def seconds(self, phase: str) -> float:
        return next(r["seconds"] for r in self.rows if r["phase"] == phase)

    def to_markdown(self, heading: str | None = None) -> str:
        """The phases (seconds, peak RSS, peak GPU when measured) and the ratios against their
        goals; under `heading` (a Markdown heading line) when given."""
        gpu = any(r["peak_gpu_gb"] is not None for r in self.rows)
        head = "| phase | seconds | peak RSS GB |" + (" peak GPU GB |" if gpu else "")
        lines = [f"**{self.name}** ({self.device}, {self.dtype}; {json.dumps(self.settings)})", "", head,
                 "|---|---:|---:|" + ("---:|" if gpu else "")]
        for r in self.rows:
            lines.append(f"| {r['phase']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} |"
                         + (f" {r['peak_gpu_gb']} |" if gpu else ""))
        for k, v in self.ratios.items():
            goal = GOALS.get(k)
            lines.append(f"| ratio {k} | {v:.3f}× | goal {goal}× |" + (" |" if gpu else "") if goal else
                         f"| ratio {k} | {v:.3f}× | |" + (" |" if gpu else ""))
        return with_heading("\n".join(lines), heading)

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """Read back what `save` wrote. A path to a JSON file of another name is the old form
        (one file holding the fields), still read, with a DeprecationWarning."""
        path = Path(folder)
        if path.suffix == ".json" and path.name != f"{cls.result_name}.json" and path.is_file():
            warnings.warn(f"{path}: a RealSizeRun file of the old form (one JSON file); save it again to get a "
                          f"folder with {cls.result_name}.json and {cls.result_name}.safetensors",
                          DeprecationWarning, stacklevel=2)
            meta = read_json(path)
            return from_fields(cls, meta, "", Stored.of(meta, {}, str(path)))
        return super().load(folder)

    def plot(self, path: str | Path | None = None) -> Figure:
        """Wall time per phase, one horizontal bar each, in the order measured."""
        fig, ax = pyplot().subplots(figsize=(7, 0.35 * len(self.rows) + 1))
        ax.barh([r["phase"] for r in self.rows], [r["seconds"] for r in self.rows])
        ax.set_xlabel("seconds")
        ax.set_title(f"{self.name} ({self.device}, {self.dtype})")
        ax.invert_yaxis()
        fig.tight_layout()
        return save_figure(fig, path)


def prompts_of(n_pairs: int) -> tuple[list[Any], list[str]]:
    """`n_pairs` bundled pairs spread over the cultures, and their noun-only + modifier prompts."""
    recs = bundled()
    pairs = recs[:: max(1, len(recs) // n_pairs)][:n_pairs]
    return pairs, [p for r in pairs for p in (r.noun_only, r.modifier_noun)]


# The text hooks the real-size workload captures: the same workload as the runs recorded before the
# per-head q/k/v/z sites existed, so the measured times stay comparable.
WORKLOAD_TEXT_HOOKS = ("hook_resid_post", "attn.hook_pattern", "hook_attn_out", "mlp.hook_post")


def text_sites(model: Any) -> list[str]:
    """Every layer's WORKLOAD_TEXT_HOOKS on every text encoder."""
    return [s for s in model.sites() if s.split(".", 1)[0] in model.encoders
            and s.split(".", 3)[3] in WORKLOAD_TEXT_HOOKS]


def culture_site(model: Any) -> str:
    """The middle layer of the first encoder (where the paper finds culture units)."""
    return f"text.blocks.{model.encoders['text'].n_layers // 2}.hook_resid_post"


@torch.no_grad()
def plain_forward(model: Any, prompts: list[str]) -> None:
    """Every text encoder once, as the pipeline calls it, without any hooks."""
    for prefix, enc in model.encoders.items():
        batch = model.tokenize(prompts, prefix)
        kw = {"attention_mask": batch["attention_mask"]} if enc.uses_attention_mask else {}
        enc.module(batch["input_ids"], **kw)


def _gen_kwargs(num_steps: int, size: int, guidance: float | None) -> dict[str, Any]:
    kw: dict[str, Any] = dict(num_steps=num_steps, height=size, width=size)
    if guidance is not None:
        kw["guidance"] = guidance
    return kw


@renamed(steps="num_steps")
def run(model: Any, name: str, *, num_steps: int, size: int, guidance: float | None = None, n_pairs: int = 16,
        n_patch: int = 3, n_units: int = 32, n_capture: int = 8, scan: bool = True, amplify: bool = True, sae_tokens: int = 0,
        sae_dir: str | Path | None = None, record: RealSizeRun | None = None) -> RealSizeRun:
    """Time the workload on a loaded `model` (generations of `num_steps` denoising steps at `size`
    pixels); `record` continues a record (e.g. with its load row)."""
    device = str(model.device)
    rec = record or RealSizeRun(name, device, str(model.dtype).replace("torch.", ""), {})
    rec.settings.update(num_steps=num_steps, size=size, guidance=guidance, n_pairs=n_pairs)
    pairs, prompts = prompts_of(n_pairs)
    batch = prompts[:n_capture]
    sites = text_sites(model)
    plain_forward(model, batch[:1])  # warm-up of both paths: first calls allocate, nnsight wraps once
    interp.capture(model, batch[:1], sites)
    rec.measure(f"plain text forward ({len(batch)} prompts)", lambda: plain_forward(model, batch))
    acts = rec.measure(f"capture {len(sites)} text sites ({len(batch)} prompts)",
                       lambda: interp.capture(model, batch, sites))
    rec.checks["captured_sites"] = len(acts)
    rec.checks["captured_finite"] = bool(all(torch.isfinite(a.float()).all() for a in acts.values()))
    del acts
    rec.ratios["capture/forward"] = rec.rows[-1]["seconds"] / rec.rows[-2]["seconds"]

    kw = _gen_kwargs(num_steps, size, guidance)
    units = interp.Units(culture_site(model), list(range(n_units)))
    prompt = [pairs[0].noun_only]
    gen_plain = rec.measure("plain generation", lambda: interp.generate(model, prompt, seed=0, **kw))
    gen_mask = rec.measure("masked generation", lambda: interp.generate(model, prompt, seed=0,
                                                                        interventions=[interp.Mask(units)], **kw))
    rec.ratios["masked/plain generation"] = rec.seconds("masked generation") / rec.seconds("plain generation")
    rec.checks["mask_changes_latents"] = not torch.equal(gen_plain.latents, gen_mask.latents)
    rec.checks["latents_finite"] = bool(torch.isfinite(gen_mask.latents.float()).all())
    if amplify:
        gen_amp = rec.measure("amplified generation", lambda: interp.generate(
            model, prompt, seed=0, interventions=[interp.Amplify(units, lam=6)], **kw))
        rec.ratios["amplified/plain generation"] = rec.seconds("amplified generation") / rec.seconds("plain generation")
        rec.checks["amplify_changes_latents"] = not torch.equal(gen_plain.latents, gen_amp.latents)
    del gen_plain, gen_mask

    enc = model.encoders["text"]
    layers = sorted({0, enc.n_layers // 2, enc.n_layers - 1})[:n_patch]
    patch_sites = [f"text.blocks.{l}.hook_resid_post" for l in layers]
    clean, corrupt = [r.modifier_noun for r in pairs[:2]], [r.noun_only for r in pairs[:2]]
    target = interp.encoder_output(model, clean)
    res = rec.measure(f"patch {len(patch_sites)} text sites", lambda: interp.patch(
        model, clean, corrupt, patch_sites, lambda out: float(-(out.float() - target.float()).pow(2).mean())))
    rec.checks["patch_rows"] = len(res.rows)
    if scan:
        import circuits

        out = rec.measure(f"culture-layer scan ({n_pairs} pairs)", lambda: circuits.culture_layer_scan(
            model, pairs, n_boot=200))
        rec.checks["scan_layers"] = {k: len(v.delta) for k, v in out.encoders.items()}
        rec.checks["scan_chosen"] = {k: v.chosen for k, v in out.encoders.items()}
    if sae_tokens:
        rec.ratios.update(_sae(model, rec, sae_tokens, sae_dir))
    return rec


def _sae(model: Any, rec: RealSizeRun, tokens: int, folder: str | Path | None) -> dict[str, float]:
    """Top-K SAE on `tokens` culture-layer activations (padding kept: what the denoiser reads)."""
    import tempfile

    import sae

    site = culture_site(model)
    per_prompt = model.encoders["text"].max_length
    _, base = prompts_of(360)
    prompts = (base * (tokens // (per_prompt * len(base)) + 1))[: -(-tokens // per_prompt)]
    folder = Path(folder or tempfile.mkdtemp(prefix="realsize-sae-"))
    store = rec.measure(f"activation store ({tokens:,} tokens)", lambda: sae.ActivationStore.build(
        model, prompts, site, folder / "store", batch_size=128, drop="none", progress=False))
    d = model.encoders["text"].d_model
    s = sae.TopKSAE(d_in=d, d_sae=8 * d, k=32).to(model.device)
    logs = rec.measure(f"SAE training ({tokens:,} tokens)", lambda: sae.train(
        s, _OnDevice(store, model.device), sae.TrainConfig(batch_size=4096, total_tokens=tokens), progress=False))
    rec.checks["sae_final_fvu"] = float(logs[-1].get("fvu", float("nan"))) if logs else None
    return {"sae tokens/s": tokens / rec.seconds(f"SAE training ({tokens:,} tokens)")}


class _OnDevice:
    """An activation store whose batches and samples arrive on `device` (sae.train feeds the
    store's CPU rows to the SAE as they come; on a GPU they must be moved first)."""

    def __init__(self, store: Any, device: Any):
        self._store, self._device = store, device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def batches(self, *args: Any, **kwargs: Any) -> Any:
        for b in self._store.batches(*args, **kwargs):
            yield b.to(self._device, non_blocking=True)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        return self._store.sample(*args, **kwargs).to(self._device)
