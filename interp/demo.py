"""`culturelens demo`: trace, patch, mask and generate on a pipeline, then write a short report.

It runs on a tiny random pipeline by default (seconds, offline), or on any pipeline folder with
`--model PATH`. Numbers on a random model only show the machinery works; the organism analysis
(`circuits`) is where they mean something.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interp.checks import renamed
from interp.result_io import atomic_write_text


PAIRS = [("a Japanese-style box", "a box"), ("a Thai-style hat", "a hat"), ("a French vase", "a vase")]


def _grid(images: list[Any], rows: int, path: Path, scale: int = 4) -> None:
    from PIL import Image

    w, h = images[0].size
    cols = (len(images) + rows - 1) // rows
    grid = Image.new("RGB", (cols * w * scale, rows * h * scale), "white")
    for i, im in enumerate(images):
        grid.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    grid.save(path)


@renamed(steps="num_steps")
def run_demo(out: str | Path, model: Any = None, family: str = "sd", seed: int = 0, num_steps: int | None = None,
             k: int = 8) -> Path:
    """Write images, plots and `report.md` under `out`; returns the report path. `num_steps`:
    denoising steps of each generation (None: the model's default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import interp

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = interp.tiny(family, seed=seed)
    enc = model.encoders["text"]
    mod = [p[0] for p in PAIRS]
    plain = [p[1] for p in PAIRS]
    lines = [f"# culturelens demo\n\nModel: `{model!r}`; {len(model.sites())} sites.\n"]

    # 1. Trace: residual stream difference between modifier and noun-only prompts, per layer.
    resid = [f"text.blocks.{l}.hook_resid_post" for l in range(enc.n_layers)]
    a = interp.capture(model, mod, resid + ["text.blocks.0.attn.hook_pattern"])
    b = interp.capture(model, plain, resid)
    diff = [float((a[s][:, -1] - b[s][:, -1]).norm(dim=-1).mean()) for s in resid]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(range(enc.n_layers), diff, marker="o")
    ax[0].set_xlabel("layer")
    ax[0].set_ylabel("‖Δ resid‖ at last token")
    ax[1].imshow(a["text.blocks.0.attn.hook_pattern"][0, 0].numpy(), cmap="viridis")
    ax[1].set_title(f"layer 0 head 0 pattern: {mod[0]!r}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "trace.png", dpi=110)
    plt.close(fig)
    lines.append("## Trace\n\n| layer | ‖Δ resid_post‖ (modifier − noun-only, last token) |\n|---|---|")
    lines += [f"| {l} | {d:.4f} |" for l, d in enumerate(diff)]
    lines.append("\n![trace](trace.png)\n")

    # 2. Patching: which layer's attention / MLP output, patched from modifier into noun-only,
    # restores the output. Whole sequences, not per token position: the two prompts differ in
    # token length, so their positions do not line up (interp.patch refuses positions= then). Not
    # hook_resid_post: the whole residual stream of any layer carries everything downstream, so
    # every layer would restore the clean output (effect 1) by construction.
    parts = [f"text.blocks.{l}.{hook}" for l in range(enc.n_layers) for hook in ("hook_attn_out", "mlp.hook_post")]
    target = interp.encoder_output(model, mod)
    res = interp.patch(model, mod, plain, parts, metric=lambda o: -(o - target).pow(2).mean())
    res.plot(out / "patching.png", title="patch modifier → noun-only (normalised effect)")
    lines.append("## Activation patching (attention and MLP outputs per layer)\n\n" + res.to_markdown()
                 + "\n\n![patching](patching.png)\n")

    # 3. Mask the k MLP units that differ most between the prompt sets vs k random units.
    layer = enc.n_layers // 2
    site = f"text.blocks.{layer}.mlp.hook_post"
    acts = interp.capture(model, mod + plain, [site])[site][:, -1]
    score = (acts[: len(mod)].mean(0) - acts[len(mod):].mean(0)).abs()
    top = interp.Units(site, score.topk(min(k, enc.d_mlp)).indices.sort().values, label="top-Δ")
    rand = interp.random_units(top, seed=seed, model=model)
    base_out = interp.encoder_output(model, mod)
    shift = {
        "top-Δ mask": float((interp.encoder_output(model, mod, interventions=[interp.Mask(top)]) - base_out).norm()),
        "random mask": float((interp.encoder_output(model, mod, interventions=[interp.Mask(rand)]) - base_out).norm()),
        "amplify λ=2": float((interp.encoder_output(model, mod, interventions=[interp.Amplify(top, 2.0)])
                              - base_out).norm()),
    }
    lines.append(f"## Masking at `{site}`\n\nunits {top.indices.tolist()} (random control "
                 f"{rand.indices.tolist()}).\n\n| intervention | ‖Δ encoder output‖ |\n|---|---|")
    lines += [f"| {name} | {v:.4f} |" for name, v in shift.items()]

    # 4. Generate with and without interventions (same seed).
    conditions = {"baseline": [], "mask top-Δ": [interp.Mask(top)], "mask random": [interp.Mask(rand)],
                  "amplify λ=2": [interp.Amplify(top, 2.0)]}
    images, lat = [], {}
    for name, ivs in conditions.items():
        g = interp.generate(model, mod, seed=seed, num_steps=num_steps, interventions=ivs)
        images += g.images
        lat[name] = g.latents
    _grid(images, rows=len(conditions), path=out / "images.png")
    lines.append("\n## Generation\n\nRows: " + ", ".join(conditions) + "; columns: " + ", ".join(map(repr, mod))
                 + ".\n\n![images](images.png)\n\n| condition | mean abs Δ latent vs baseline |\n|---|---|")
    lines += [f"| {n} | {float((v - lat['baseline']).abs().mean()):.4f} |" for n, v in lat.items()]
    summary = {"layer_diff": diff, "patch": res.rows, "mask_shift": shift,
               "units": top.indices.tolist(), "random_units": rand.indices.tolist()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
