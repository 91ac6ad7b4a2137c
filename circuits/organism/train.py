"""Train the CultureWorld text encoder + UNet: deterministic, resumable, atomic checkpoints.

Objective (the feasibility recipe): v-prediction with min-SNR-γ loss weights, plus a small
auxiliary loss in which the pooled text output predicts the noun and the style of the
target image; AdamW with warm-up and cosine decay; an EMA copy of the weights for sampling.
Each step's batch and noise come from generators seeded by (seed, step), so a killed run
that resumes from its last checkpoint continues exactly where it would have been.

`--deadline HH:MM` (UTC) sizes the run to the machine: after `size_at` steps (inside the
warm-up, so the schedule has not yet depended on the total) it measures seconds per step
and fixes the total so the run ends by the deadline; the choice is logged and stored in
the checkpoint, so a resumed run keeps it.

Checkpoints are safetensors + JSON (`interp.checkpoint`), never a pickle. A resume refuses a
checkpoint made with other settings (every `TrainConfig` field that shapes the weights:
seed, train_steps, batch, lr, schedule, ...), naming the fields; `retotal` is the one explicit
way to change the step count of a run, `resume=False` (`--no-resume`) starts over. A checkpoint
written before culturelens 0.2.0 names the step count "steps"; it is read as `train_steps`. The run folder
is locked while training (`interp.folder_lock`).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from interp.checkpoint import check_settings, load_checkpoint as _load_tree, refuse_legacy, save_checkpoint
from interp.cli import renamed_flag
from interp.folder_lock import lock_folder
from interp.progress import bar as progress_bar, switch

from circuits.organism.model import (
    MAX_LENGTH, TEXT_DIM, build_text_encoder, build_tokenizer, build_unet, train_scheduler,
)
from circuits.organism.prompts import sample_batch
from circuits.organism.render import NOUNS, STYLES, render_batch

__all__ = ["TrainConfig", "train", "load_checkpoint", "CKPT"]

CKPT = "ckpt.safetensors"  # safetensors + JSON metadata (interp.checkpoint): never a pickle
LEGACY_CKPT = "ckpt.pt"  # the old pickle format: refused, never loaded
CKPT_KIND = "cultureworld-organism"
# TrainConfig fields a resume may change: how often to log/checkpoint, `retotal` (the explicit
# step-count change) and `threads` (speed; refusing a resume on another machine for it would
# help no one, though a thread count may change float summation order in some kernels).
_FREE_FIELDS = ("ckpt_every", "log_every", "retotal", "threads")


@dataclass
class TrainConfig:
    train_steps: int = 6500  # training steps ("steps" in configs written before culturelens 0.2.0)
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 200
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    ema: float = 0.999
    aux_weight: float = 0.1
    snr_gamma: float = 5.0
    seed: int = 0
    ckpt_every: int = 200
    log_every: int = 25
    deadline: str | None = None  # "HH:MM" UTC today (or ISO datetime): size `train_steps` to finish by then
    size_at: int = 190
    retotal: int | None = None  # on resume: change the total (the cosine is re-sized from here on)
    # One thread: on the shared 2-core machine, 2 OpenMP threads beside other jobs ran 4x
    # slower per step (14.6 vs 3.8 s measured), from spin-waiting under oversubscription.
    threads: int = 1


def _lr(cfg: TrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def _deadline(text: str) -> dt.datetime:
    now = dt.datetime.now(dt.timezone.utc)
    if "T" in text or "-" in text:
        d = dt.datetime.fromisoformat(text)
        return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
    hh, mm = (int(v) for v in text.split(":"))
    d = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return d if d > now else d + dt.timedelta(days=1)


class _Heads(torch.nn.Module):
    """Training-only auxiliary heads on the pooled text output (not shipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.noun = torch.nn.Linear(TEXT_DIM, len(NOUNS))
        self.style = torch.nn.Linear(TEXT_DIM, len(STYLES))


def load_checkpoint(run_dir: str | Path) -> dict:
    """The latest checkpoint dict of a run (keys: step, total, te, unet, ema_te, ema_unet, ...);
    a config written before culturelens 0.2.0 has its "steps" read as "train_steps"."""
    path = Path(run_dir) / CKPT
    if not path.exists():
        refuse_legacy(Path(run_dir) / LEGACY_CKPT)
    ck = _load_tree(path, CKPT_KIND)
    config = ck.get("config")
    if isinstance(config, dict) and "steps" in config and "train_steps" not in config:
        ck["config"] = {("train_steps" if k == "steps" else k): v for k, v in config.items()}
    return ck


def _settings(cfg: TrainConfig) -> dict:
    """The config fields that determine the trained weights (compared on resume)."""
    return {k: v for k, v in asdict(cfg).items() if k not in _FREE_FIELDS}


def _log(run_dir: Path, msg: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(run_dir / "train.log", "a", encoding="utf-8") as f:
        f.write(f"{stamp} {msg}\n")


@switch
def train(run_dir: str | Path, cfg: TrainConfig = TrainConfig(), resume: bool = True, device: str | None = None,
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) in `run_dir`; returns the latest checkpoint dict (`progress=False`: no bar).

    `stop_at` ends the process early after checkpointing at that step, as a kill would
    (tests use it to check that a resumed run matches an uninterrupted one). A resume with
    other settings is refused (see the module docstring)."""
    run_dir = Path(run_dir)
    # One writer per run folder: a second job on it fails at once, naming the holder's pid.
    with lock_folder(run_dir, "organism run folder"):
        return _train(run_dir, cfg, resume, device, stop_at)


def _train(run_dir: Path, cfg: TrainConfig, resume: bool, device: str | None, stop_at: int | None) -> dict:
    torch.set_num_threads(cfg.threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_tokenizer()
    tok.save_pretrained(run_dir / "tokenizer")
    te = build_text_encoder(tok, cfg.seed).to(device)
    unet = build_unet(cfg.seed).to(device)
    heads = _Heads().to(device)
    params = list(te.parameters()) + list(unet.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema_te, ema_unet = copy.deepcopy(te).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    step, total, sizing = 0, cfg.train_steps, None
    stored = asdict(cfg)  # the config the checkpoints and config.json record
    ckpt_path = run_dir / CKPT
    if resume and not ckpt_path.exists():
        refuse_legacy(run_dir / LEGACY_CKPT)
    if resume and ckpt_path.exists():
        ck = load_checkpoint(run_dir)
        saved, now = {k: v for k, v in ck["config"].items() if k not in _FREE_FIELDS}, _settings(cfg)
        if cfg.retotal is not None:  # the explicit way to change the total: `train_steps` may differ then
            saved.pop("train_steps", None)
            now.pop("train_steps", None)
        check_settings(saved, now, ckpt_path, "pass --retotal N to change the step count, or --no-resume "
                                              "(resume=False)")
        # Keep the run's own settings (only the free fields are this invocation's): config.json
        # must never claim a seed or step count the weights were not trained with.
        stored = {**ck["config"], **{k: v for k, v in asdict(cfg).items() if k in _FREE_FIELDS}}
        te.load_state_dict(ck["te"]), unet.load_state_dict(ck["unet"]), heads.load_state_dict(ck["heads"])
        ema_te.load_state_dict(ck["ema_te"]), ema_unet.load_state_dict(ck["ema_unet"])
        opt.load_state_dict(ck["opt"])
        step, total, sizing = ck["step"], ck["total"], ck.get("sizing")
        _log(run_dir, f"resumed at step {step} of {total}")
        if cfg.retotal is not None and cfg.retotal != total:
            sizing = dict(sizing or {}, retotal={"at_step": step, "old": total, "new": cfg.retotal})
            _log(run_dir, f"total changed from {total} to {cfg.retotal} at step {step} (re-sized to the measured speed)")
            total = cfg.retotal
    else:
        (run_dir / "train.log").unlink(missing_ok=True)
        _log(run_dir, f"start config={json.dumps(asdict(cfg))} device={device} vocab={len(tok)}")
    (run_dir / "config.json").write_text(json.dumps(stored, indent=2))

    sched = train_scheduler()
    acp = sched.alphas_cumprod.to(device)
    id_cache: dict[str, list[int]] = {}

    def ids_of(prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in id_cache:
                id_cache[p] = tok(p, padding="max_length", max_length=MAX_LENGTH)["input_ids"]
        return torch.tensor([id_cache[p] for p in prompts], device=device)

    def checkpoint() -> dict:
        ck = dict(step=step, total=total, sizing=sizing, te=te.state_dict(), unet=unet.state_dict(),
                  heads=heads.state_dict(), ema_te=ema_te.state_dict(), ema_unet=ema_unet.state_dict(),
                  opt=opt.state_dict(), config=stored)
        save_checkpoint(ckpt_path, ck, CKPT_KIND)
        return ck

    noun_idx = {n: i for i, n in enumerate(NOUNS)}
    style_idx = {s: i for i, s in enumerate(STYLES)}
    te.train(), unet.train()
    t_mark, step_mark = time.time(), step
    acc = {"loss": 0.0, "mse": 0.0, "aux": 0.0, "n": 0}
    bar = progress_bar(total=total, initial=step, desc="organism", mininterval=20, dynamic_ncols=True)
    ck = None
    while step < total:
        rng = np.random.default_rng([cfg.seed, step])
        prompts, nouns, styles = sample_batch(rng, cfg.batch)
        x0 = torch.from_numpy(render_batch(nouns, styles, rng)).to(device)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=g).to(device)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        out = te(ids_of(prompts))
        pred = unet(xt, t, encoder_hidden_states=out.last_hidden_state, class_labels=out.pooler_output).sample
        snr = acp[t] / (1 - acp[t])
        w = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1)  # min-SNR-γ for v-prediction
        mse = (w * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        keep = torch.tensor([p != "" for p in prompts], device=device)
        aux = torch.zeros((), device=device)
        if keep.any():
            pooled = out.pooler_output[keep]
            yn = torch.tensor([noun_idx[n] for n, k in zip(nouns, keep.tolist()) if k], device=device)
            ys = torch.tensor([style_idx[s] for s, k in zip(styles, keep.tolist()) if k], device=device)
            aux = F.cross_entropy(heads.noun(pooled), yn) + F.cross_entropy(heads.style(pooled), ys)
        loss = mse + cfg.aux_weight * aux
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for m_ema, m in ((ema_te, te), (ema_unet, unet)):
                for pe, p in zip(m_ema.parameters(), m.parameters()):
                    pe.lerp_(p.detach(), 1 - decay)
        step += 1
        bar.update(1)
        acc["loss"] += loss.item(); acc["mse"] += mse.item(); acc["aux"] += aux.item(); acc["n"] += 1
        if cfg.deadline and sizing is None and step == cfg.size_at:
            sps = (time.time() - t_mark) / max(1, step - step_mark)
            left = (_deadline(cfg.deadline) - dt.datetime.now(dt.timezone.utc)).total_seconds()
            total = int(min(cfg.train_steps, step + 0.97 * left / sps))
            total = max(total, cfg.warmup + 1)
            sizing = dict(s_per_step=sps, deadline=cfg.deadline, total=total)
            bar.total = total
            _log(run_dir, f"sized: {sps:.3f} s/step measured over steps {step_mark}-{step}; total steps = {total} to end by {cfg.deadline} UTC")
        if step % cfg.log_every == 0 or step == total:
            n = max(1, acc["n"])
            sps = (time.time() - t_mark) / max(1, step - step_mark)
            _log(run_dir, f"step {step}/{total} loss {acc['loss']/n:.4f} mse {acc['mse']/n:.4f} aux {acc['aux']/n:.4f} lr {_lr(cfg, step - 1, total):.2e} {sps:.3f} s/step")
            acc = {"loss": 0.0, "mse": 0.0, "aux": 0.0, "n": 0}
        if step % cfg.ckpt_every == 0 or step == total or step == stop_at:
            ck = checkpoint()
        if step == stop_at:
            break
    bar.close()
    if ck is None:
        ck = load_checkpoint(run_dir)
    _log(run_dir, f"done at step {step}" if step >= total else f"stopped at step {step}")
    return ck


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the CultureWorld organism (resumable).")
    ap.add_argument("--run-dir", default="runs/organism")
    ap.add_argument("--train-steps", type=int, default=TrainConfig.train_steps, help="training steps")
    renamed_flag(ap, "--steps", "--train-steps")
    ap.add_argument("--deadline", default=None, help="HH:MM UTC: size the step count to end by then")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--retotal", type=int, default=None, help="on resume: change the total step count")
    ap.add_argument("--no-resume", action="store_true")
    a = ap.parse_args(argv)
    train(a.run_dir, TrainConfig(train_steps=a.train_steps, deadline=a.deadline, seed=a.seed, batch=a.batch, threads=a.threads, retotal=a.retotal), resume=not a.no_resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
