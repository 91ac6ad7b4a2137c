"""The CultureWorld judge: a small CNN that plays CultureVQA on the organism's images.

Heads: style over 15 cultures + neutral + junk (17), and noun (8). Junk is trained on
off-distribution mush (blends, half/half chimeras, heavy blur, heavy noise, shuffled
patches, colour fields) so that such images land in "unrecognisable" instead of the
nearest culture. As a project judge it returns [N, 16] over `culturebench.LABELS`, where
"unrecognisable" = P(neutral) + P(junk); `predict_full` keeps the distinction and the noun.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from safetensors.torch import load_file

from circuits.organism.render import CULTURES, NEUTRAL, NOUNS, SIZE, STYLES, render_batch
from circuits.data.culturebench import LABELS
from circuits.data.judges.base import Judge, JudgeError, load_images
from interp.checks import renamed
from interp.progress import bar, switch
from interp.result_io import atomic_save_file

__all__ = ["JUNK", "JUDGE_STYLES", "JudgeNet", "CultureWorldJudge", "junk_batch", "train_judge", "clean_accuracy", "junk_rejection"]

JUNK = "junk"
JUDGE_STYLES: tuple[str, ...] = STYLES + (JUNK,)  # 15 cultures, neutral, junk
WEIGHTS, CONFIG = "judge.safetensors", "judge_config.json"


class JudgeNet(torch.nn.Module):
    """3 conv blocks (32→16→8→4) and two linear heads; input [N, 3, 32, 32] in [-1, 1]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(2 * w * 16, 128), torch.nn.ReLU(),
        )
        self.style = torch.nn.Linear(128, len(JUDGE_STYLES))
        self.noun = torch.nn.Linear(128, len(NOUNS))

    def forward(self, x: Float[torch.Tensor, "n 3 32 32"]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.style(h), self.noun(h)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [n, 3, H, W] images (reflect padding)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    h = sum(k[i] * p[:, :, :, i : i + SIZE] for i in range(2 * r + 1))
    return sum(k[i] * h[:, :, i : i + SIZE, :] for i in range(2 * r + 1))


def junk_batch(rng: np.random.Generator, n: int) -> Float[np.ndarray, "n 3 32 32"]:
    """Off-distribution images in [-1, 1]: each one of six kinds of mush."""
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        kind = rng.integers(6)
        na, sa = rng.integers(len(NOUNS)), rng.integers(len(STYLES))
        # the second image differs in noun and style, so a blend or chimera is never a clean render
        nb = (na + rng.integers(1, len(NOUNS))) % len(NOUNS)
        sb = (sa + rng.integers(1, len(STYLES))) % len(STYLES)
        a, b = render_batch([NOUNS[na], NOUNS[nb]], [STYLES[sa], STYLES[sb]], rng)
        if kind == 0:  # blend of two different renders
            lam = rng.uniform(0.35, 0.65)
            img = lam * a + (1 - lam) * b
        elif kind == 1:  # half/half chimera (left/right or top/bottom)
            img = a.copy()
            cut = rng.integers(12, 21)
            if rng.random() < 0.5:
                img[:, :, cut:] = b[:, :, cut:]
            else:
                img[:, cut:, :] = b[:, cut:, :]
        elif kind == 2:  # heavy blur
            img = _blur(a[None], rng.uniform(2.0, 3.5))[0]
        elif kind == 3:  # heavy noise
            img = a + rng.normal(0, rng.uniform(0.6, 1.2), a.shape)
        elif kind == 4:  # shuffled 8×8 patches
            tiles = a.reshape(3, 4, 8, 4, 8).transpose(1, 3, 0, 2, 4).reshape(16, 3, 8, 8)
            tiles = tiles[rng.permutation(16)]
            img = tiles.reshape(4, 4, 3, 8, 8).transpose(2, 0, 3, 1, 4).reshape(3, SIZE, SIZE)
        else:  # colour field: a flat colour, a gradient or coloured noise
            c = rng.uniform(-1, 1, (3, 1, 1))
            sub = rng.integers(3)
            if sub == 0:
                img = np.broadcast_to(c, a.shape).copy()
            elif sub == 1:
                ramp = np.linspace(-1, 1, SIZE)[None, None, :] if rng.random() < 0.5 else np.linspace(-1, 1, SIZE)[None, :, None]
                img = c + rng.uniform(0.3, 1.0, (3, 1, 1)) * ramp
            else:
                img = _blur(rng.uniform(-1, 1, (1, 3, SIZE, SIZE)), rng.uniform(0.5, 2.0))[0] + c
        out[i] = np.clip(img, -1, 1)
    return out


def _mild(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generation-like imperfections a clean label must survive: slight blur and noise."""
    n = len(x)
    blur_mask = rng.random(n) < 0.3
    if blur_mask.any():
        x[blur_mask] = _blur(x[blur_mask], rng.uniform(0.4, 0.8))
    x = x + rng.normal(0, 1, x.shape) * rng.uniform(0, 0.08, (n, 1, 1, 1))
    return np.clip(x, -1, 1).astype(np.float32)


def _batch(rng: np.random.Generator, n: int, junk_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_junk = int(round(n * junk_frac))
    n_clean = n - n_junk
    nouns = [NOUNS[i] for i in rng.integers(len(NOUNS), size=n_clean)]
    styles = [STYLES[i] for i in rng.integers(len(STYLES), size=n_clean)]
    x = np.concatenate([_mild(render_batch(nouns, styles, rng), rng), junk_batch(rng, n_junk)])
    ys = np.array([JUDGE_STYLES.index(s) for s in styles] + [JUDGE_STYLES.index(JUNK)] * n_junk)
    yn = np.array([NOUNS.index(s) for s in nouns] + [-100] * n_junk)  # no noun for junk
    return x, ys, yn


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    arr = []
    for i, im in enumerate(images):
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.BILINEAR)
        arr.append(np.asarray(im.convert("RGB"), dtype=np.float32))
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) / 127.5 - 1.0


class CultureWorldJudge(Judge):
    """The organism's CultureVQA judge: `judge(images)` -> [N, 16] over `culturebench.LABELS`."""

    name = "cultureworld-cnn"

    def __init__(self, net: JudgeNet | None = None) -> None:
        self.net = (net or JudgeNet()).eval()

    @torch.no_grad()
    def predict_tensor(self, x: Float[torch.Tensor, "n 3 32 32"], batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(style probs [N, 17] over JUDGE_STYLES, noun probs [N, 8]) for pixels in [-1, 1]."""
        if x.ndim != 4 or x.shape[1:] != (3, SIZE, SIZE):
            raise JudgeError(f"judge input has shape {tuple(x.shape)}, expected [N, 3, {SIZE}, {SIZE}]")
        s, n = zip(*(self.net(x[i : i + batch].float()) for i in range(0, len(x), batch))) if len(x) else ((torch.zeros(0, 17),), (torch.zeros(0, 8),))
        return torch.cat(s).softmax(-1), torch.cat(n).softmax(-1)

    def predict_full(self, images: Sequence) -> dict[str, list]:
        """Per image: style label (a culture, "neutral" or "junk") and noun label, with probs."""
        ps, pn = self.predict_tensor(_to_tensor(load_images(images)))
        return {
            "style": [JUDGE_STYLES[i] for i in ps.argmax(1).tolist()],
            "noun": [NOUNS[i] for i in pn.argmax(1).tolist()],
            "style_probs": ps, "noun_probs": pn,
        }

    @staticmethod
    def to_labels(style_probs: Float[torch.Tensor, "n 17"]) -> Float[torch.Tensor, "n 16"]:
        """Fold neutral and junk into "unrecognisable": [N, 17] -> [N, 16] over LABELS."""
        assert list(LABELS[:15]) == list(CULTURES)
        return torch.cat([style_probs[:, :15], style_probs[:, 15:].sum(1, keepdim=True)], 1)

    def _probs(self, images: list[Image.Image]) -> Float[torch.Tensor, "n 16"]:
        return self.to_labels(self.predict_tensor(_to_tensor(images))[0])

    def save(self, folder: str | Path) -> None:
        """`judge.safetensors` + `judge_config.json` (labels, nouns, input convention)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_file(folder / WEIGHTS, {k: v.contiguous() for k, v in self.net.state_dict().items()})
        cfg = {"class": "CultureWorldJudge", "width": self.net.features[0].out_channels, "styles": list(JUDGE_STYLES),
               "nouns": list(NOUNS), "labels": list(LABELS), "input": "RGB 32x32, scaled to [-1, 1]",
               "unrecognisable": "P(neutral) + P(junk)"}
        (folder / CONFIG).write_text(json.dumps(cfg, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "CultureWorldJudge":
        folder = Path(folder)
        if not (folder / WEIGHTS).exists() or not (folder / CONFIG).exists():
            raise JudgeError(f"{folder} is not a CultureWorld judge folder (needs {WEIGHTS} and {CONFIG})")
        cfg = json.loads((folder / CONFIG).read_text())
        if cfg.get("styles") != list(JUDGE_STYLES) or cfg.get("nouns") != list(NOUNS):
            raise JudgeError(f"{folder / CONFIG}: labels differ from this code's styles/nouns")
        net = JudgeNet(cfg["width"])
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
        return cls(net)


def _pool(rng: np.random.Generator, n_clean: int, n_junk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed training pool: rendering is the costly part on CPU, so it is done once."""
    chunks = [_batch(rng, 256, n_junk / (n_clean + n_junk)) for _ in bar(range((n_clean + n_junk) // 256), desc="judge data", mininterval=10)]
    return tuple(np.concatenate(c) for c in zip(*chunks))


@renamed(steps="train_steps")
@switch
def train_judge(train_steps: int = 1500, batch: int = 64, pool: int = 16384, junk_frac: float = 0.25, lr: float = 3e-3,
                width: int = 16, seed: int = 0, progress: bool = True) -> CultureWorldJudge:
    """Train the judge for `train_steps` steps on a seeded pool of renders (with mild blur/noise) and junk."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    x, ys, yn = _pool(rng, int(pool * (1 - junk_frac)), int(pool * junk_frac))
    x, ys, yn = torch.from_numpy(x), torch.from_numpy(ys), torch.from_numpy(yn)
    net = JudgeNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=train_steps, pct_start=0.1)
    net.train()
    g = torch.Generator().manual_seed(seed)
    for _ in bar(range(train_steps), desc="judge", mininterval=10):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        s, n = net(xb)
        loss = F.cross_entropy(s, ys[idx]) + F.cross_entropy(n, yn[idx], ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return CultureWorldJudge(net.eval())


def clean_accuracy(judge: CultureWorldJudge, per_cell: int = 8, seed: int = 123) -> dict[str, float]:
    """Style and noun accuracy on fresh jittered clean renders (every noun × style)."""
    rng = np.random.default_rng([seed])
    nouns = [n for n in NOUNS for _ in STYLES for _ in range(per_cell)]
    styles = [s for _ in NOUNS for s in STYLES for _ in range(per_cell)]
    ps, pn = judge.predict_tensor(torch.from_numpy(render_batch(nouns, styles, rng)))
    style_ok = np.array([JUDGE_STYLES[i] == s for i, s in zip(ps.argmax(1).tolist(), styles)])
    noun_ok = np.array([NOUNS[i] == n for i, n in zip(pn.argmax(1).tolist(), nouns)])
    cult = np.array([s != NEUTRAL for s in styles])
    return {"n": len(nouns), "style_acc": float(style_ok.mean()), "culture_acc": float(style_ok[cult].mean()),
            "neutral_acc": float(style_ok[~cult].mean()), "noun_acc": float(noun_ok.mean())}


def junk_rejection(judge: CultureWorldJudge, n: int = 600, seed: int = 321) -> dict[str, float]:
    """Share of fresh junk images judged junk, and judged not-a-culture (junk or neutral)."""
    x = torch.from_numpy(junk_batch(np.random.default_rng([seed]), n))
    pred = judge.predict_tensor(x)[0].argmax(1)
    return {"n": n, "junk": float((pred == JUDGE_STYLES.index(JUNK)).float().mean()),
            "unrecognisable": float((pred >= len(CULTURES)).float().mean())}
