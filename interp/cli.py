"""Command-line sub-commands of `interp`."""

from __future__ import annotations

import argparse
from typing import Any, Callable

# `load(path, device=..., trust_remote_code=..., **kw) -> Model`: how a command opens a --model folder.
# `interp.load` by default; the `culturelens` entry point passes one that also trusts folders whose
# code is the shipped organism's (circuits.io.load_pipeline: interp cannot know circuits' fingerprints).
Loader = Callable[..., Any]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (the message names the value; argparse adds the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


class _RenamedFlag(argparse.Action):
    """A flag renamed in culturelens 0.2.0: using it is a usage error naming the new flag."""

    def __init__(self, option_strings: list[str], dest: str, new: str, what: str, **kw: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="*", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.new, self.what = new, what

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        note = ("; --steps now only lists denoising-step indices (patch, attribution, effect-map)"
                if option_string == "--steps" else "")
        parser.error(f"{option_string} was renamed {self.new} in culturelens 0.2.0 ({self.what}){note}")


def renamed_flag(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Make `old` (e.g. --steps, a denoising count before 0.2.0) a usage error naming `new`
    (--num-steps, or --train-steps for training iterations)."""
    what = "the number of training steps" if new == "--train-steps" else "the number of denoising steps"
    p.add_argument(old, action=_RenamedFlag, new=new, what=what)


def _demo(args: argparse.Namespace) -> int:
    import torch

    import interp
    from interp.demo import run_demo

    load = args.load or interp.load
    model = load(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                 trust_remote_code=args.trust_remote_code) if args.model else None
    report = run_demo(args.out, model=model, family=args.family, seed=args.seed, num_steps=args.num_steps, k=args.k)
    print(f"wrote {report}")
    return 0


# -- patch, attribution, effect-map ------------------------------------------------------------

PATCH_METRICS = ("encoder-distance", "latent-distance", "image-distance")


def step_groups(values: list[str] | None, what: str) -> None | str | list[int]:
    """`--steps` / `--heads` as `interp.patch` takes them: absent -> None (all at once), `each`
    -> "each" (one condition per index), whole numbers -> one condition per listed index."""
    from interp.errors import CultureLensError

    if values is None:
        return None
    if values == ["each"]:
        return "each"
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise CultureLensError(f"patch: {what} {values}: give 'each' or whole numbers (e.g. {what} 0 1)") from None
    if any(v < 0 for v in out):
        raise CultureLensError(f"patch: {what} {out}: indices count from 0")
    return out


def unit_spec(text: str) -> tuple[str, list[int]]:
    """argparse type of `--mask SITE:UNITS`: a site name, ':' and comma-separated unit indices or
    ranges (`3,17,40-42`)."""
    site, sep, units = text.rpartition(":")
    if not sep or not site or not units:
        raise argparse.ArgumentTypeError(f"expected SITE:UNITS (e.g. text.blocks.1.mlp.hook_post:3,17,40-42), "
                                         f"got {text!r}")
    idx: list[int] = []
    try:
        for part in units.split(","):
            a, dash, b = part.strip().partition("-")
            idx += list(range(int(a), int(b) + 1)) if dash else [int(a)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"units {units!r} in {text!r}: comma-separated whole numbers or "
                                         "ranges a-b") from None
    return site, idx


def amplify_spec(text: str) -> tuple[str, list[int], float]:
    """argparse type of `--amplify SITE:UNITS:LAM` (scale the units by 1 + LAM)."""
    head, sep, lam = text.rpartition(":")
    try:
        value = float(lam)
    except ValueError:
        value = None
    if not sep or value is None:
        raise argparse.ArgumentTypeError(f"expected SITE:UNITS:LAM (e.g. text.blocks.1.mlp.hook_post:3,17:6), "
                                         f"got {text!r}")
    site, idx = unit_spec(head)
    return site, idx, value


def _open_model(args: argparse.Namespace) -> Any:
    """`--model` through the command's loader, else a tiny random pipeline of `--family` (weights seed 0)."""
    import torch

    import interp

    dtype = getattr(torch, args.dtype)
    if args.model:
        load = args.load or interp.load
        return load(args.model, device=args.device, dtype=dtype, trust_remote_code=args.trust_remote_code)
    return interp.tiny(args.family, seed=0, dtype=dtype).to(args.device)


def _check_sites(model: Any, names: list[str], command: str) -> list[Any]:
    """Every site name resolved up front (an unknown one names the valid ones: `model.sites()`)."""
    from interp.errors import SiteError
    from interp.model.sites import parse

    out = []
    for n in names:
        try:
            out.append(parse(model, n))
        except SiteError as e:
            raise SiteError(f"{command}: {e}") from None
    return out


def patch_metric(model: Any, kind: str, clean: list[str], encoder: str | None, *, seed: int = 0,
                 num_steps: int | None = None, guidance: float | None = None, truncate: bool = False
                 ) -> Callable[[Any], Any]:
    """The metric `culturelens patch --metric KIND` scores with: minus the mean squared distance
    to the clean run, 0 on the clean run itself. encoder-distance (text sites): of the encoder
    output (what the denoiser reads, `interp.encoder_output`); latent-distance / image-distance
    (denoiser sites): of the final latents / images (pixels in [0, 1]) of the clean prompts'
    generation with the same seeds and settings as `interp.patch` uses."""
    import numpy as np
    import torch

    import interp

    if kind == "encoder-distance":
        target = interp.encoder_output(model, clean, encoder or "text", truncate=truncate)
        return lambda out: -(out - target).pow(2).mean()
    ref = interp.generate(model, clean, seed=seed, num_steps=num_steps, guidance=guidance, truncate=truncate)
    if kind == "latent-distance":
        lat = ref.latents
        return lambda gen: -(gen.latents - lat).pow(2).mean()

    def pixels(images: list[Any]) -> Any:
        return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0)
                            for im in images])

    img = pixels(ref.images)
    return lambda gen: -(pixels(gen.images) - img).pow(2).mean()


def _patch_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    import interp
    from interp.errors import CultureLensError, SiteError
    from interp.result_io import atomic_write_text

    if len(args.clean) != len(args.corrupt):
        raise CultureLensError(f"patch: {len(args.clean)} --clean prompts but {len(args.corrupt)} --corrupt prompts; "
                               "give one corrupt prompt per clean prompt")
    steps, heads = step_groups(args.steps, "--steps"), step_groups(args.heads, "--heads")
    model = _open_model(args)
    sites = _check_sites(model, args.sites, "patch")
    text = [s for s in sites if not s.denoiser]
    if text and len(text) != len(sites):
        raise SiteError(f"patch: text sites {[s.name for s in text]} and denoiser sites "
                        f"{[s.name for s in sites if s.denoiser]} are scored on different outputs; "
                        "run patch once per kind")
    encoders = sorted({s.encoder for s in text})
    if len(encoders) > 1:
        raise SiteError(f"patch: text sites of encoders {encoders} in one call; each encoder's output has its own "
                        "clean target, so run patch once per encoder")
    metric = args.metric or ("encoder-distance" if text else "latent-distance")
    if text and metric != "encoder-distance":
        raise CultureLensError(f"patch: --metric {metric} scores a generation, but text sites are scored on the "
                               "encoder output: use --metric encoder-distance (the default for text sites)")
    if not text and metric == "encoder-distance":
        raise CultureLensError("patch: --metric encoder-distance is for text sites; denoiser sites are scored on the "
                               "generation: use --metric latent-distance (default) or image-distance")
    fn = patch_metric(model, metric, args.clean, encoders[0] if encoders else None, seed=args.seed,
                      num_steps=args.num_steps, guidance=args.guidance, truncate=args.truncate)
    res = interp.patch(model, args.clean, args.corrupt, args.sites, fn, steps=steps, heads=heads,
                       positions=args.positions, seed=args.seed, num_steps=args.num_steps, guidance=args.guidance,
                       branch=args.branch, batch_size=args.batch_size, truncate=args.truncate)
    res.meta["metric"] = metric
    out = res.save(args.out)
    table = Path(out) / "patch.md"
    atomic_write_text(table, f"# activation patching ({metric}: effect 1 = restores the clean run)\n\n"
                      + res.to_markdown() + "\n")
    res.plot(Path(out) / "patch.png", title=f"patch corrupt ← clean ({metric}, normalised effect)")
    print(f"wrote {table}")
    return 0


def _attribution_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    import interp
    from interp.result_io import atomic_write_text

    model = _open_model(args)
    maps = interp.attribution(model, args.prompt, args.words, seed=args.seed, steps=args.steps,
                              num_steps=args.num_steps, guidance=args.guidance, truncate=args.truncate)
    out = Path(maps.save(args.out))
    table = out / "attribution.md"
    atomic_write_text(table, maps.to_markdown() + "\n")
    maps.plot(out / "attribution.png")
    print(f"wrote {table}")
    return 0


def _effect_map_cmd(args: argparse.Namespace) -> int:
    from pathlib import Path

    import interp
    from interp.errors import CultureLensError
    from interp.result_io import atomic_write_text

    if not args.mask and not args.amplify:
        raise CultureLensError("effect-map: no interventions given; name at least one --mask SITE:UNITS or "
                               "--amplify SITE:UNITS:LAM")
    model = _open_model(args)
    _check_sites(model, [m[0] for m in args.mask] + [a[0] for a in args.amplify], "effect-map")
    ivs = effect_interventions(args.mask, args.amplify, steps=args.steps, branch=args.branch)
    em = interp.effect_map(model, args.prompt, interventions=ivs, seed=args.seed, num_steps=args.num_steps,
                           guidance=args.guidance, truncate=args.truncate)
    out = Path(em.save(args.out))
    table = out / "effect_map.md"
    atomic_write_text(table, em.to_markdown() + "\n")
    em.plot(out / "effect_map.png")
    print(f"wrote {table}")
    return 0


def effect_interventions(mask: list[tuple[str, list[int]]], amplify: list[tuple[str, list[int], float]], *,
                         steps: list[int] | None = None, branch: str = "cond") -> list[Any]:
    """`--mask` / `--amplify` as interventions: `interp.Mask` (zero) and `interp.Amplify`."""
    import interp

    out: list[Any] = [interp.Mask(interp.Units(site, idx), steps=steps, branch=branch) for site, idx in mask]
    out += [interp.Amplify(interp.Units(site, idx), lam, steps=steps, branch=branch) for site, idx, lam in amplify]
    return out


def _model_args(p: argparse.ArgumentParser, load: Loader | None) -> None:
    """--model / --family / --trust-remote-code / --device / --dtype, as `demo` has them."""
    p.add_argument("--model", default=None, help="a local diffusers pipeline folder (default: a tiny random one)")
    p.add_argument("--family", default="sd", choices=["sd", "sdxl", "altdiffusion", "sd3", "flux"],
                   help="family of the tiny pipeline when --model is not given")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only for folders you trust)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=0, help="generation seed (prompt i of a list gets seed + i)")
    p.add_argument("--num-steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--truncate", action="store_true", help="truncate prompts longer than the text encoder's window")
    p.set_defaults(load=load)


def _register_methods(sub: argparse._SubParsersAction, load: Loader | None) -> None:
    from interp.interventions import BRANCH_CHOICES

    p = sub.add_parser("patch", help="activation patching (interp.patch): clean activations into the corrupt run, "
                       "site by site; writes patch.json/.safetensors, patch.md and patch.png")
    p.add_argument("--clean", nargs="+", required=True, metavar="PROMPT", help="clean prompts")
    p.add_argument("--corrupt", nargs="+", required=True, metavar="PROMPT", help="corrupt prompts (one per clean)")
    p.add_argument("--sites", nargs="+", required=True, metavar="SITE",
                   help="text sites (text.blocks.L...) or denoiser sites (unet..., transformer...), not both")
    p.add_argument("--positions", type=int, nargs="+", default=None, metavar="I",
                   help="token positions, one condition each (clean and corrupt of equal token length)")
    p.add_argument("--heads", nargs="+", default=None, metavar="H",
                   help="sites with heads (q/k/v/z/pattern; text: attn.hook_q/k/v/z): head indices, one "
                        "condition each, or 'each' (default: all at once)")
    p.add_argument("--steps", nargs="+", default=None, metavar="I",
                   help="denoiser sites: step indices, one condition each, or 'each' (default: all at once)")
    p.add_argument("--branch", default="both", choices=list(BRANCH_CHOICES),
                   help="classifier-free-guidance rows to patch (denoiser sites)")
    p.add_argument("--metric", default=None, choices=list(PATCH_METRICS),
                   help="minus the squared distance to the clean run of: the encoder output (text sites, default) "
                        "or the final latents (denoiser sites, default) / images")
    p.add_argument("--batch-size", type=positive_int, default=16, help="most prompts one generation holds")
    p.add_argument("--out", required=True, help="output folder")
    _model_args(p, load)
    p.set_defaults(func=_patch_cmd)

    p = sub.add_parser("attribution", help="per-word DAAM heat maps (interp.attribution) of one generation; "
                       "writes attribution.json/.safetensors, attribution.md and attribution.png")
    p.add_argument("--prompt", required=True)
    p.add_argument("--words", nargs="+", required=True, metavar="W", help="substrings of --prompt")
    p.add_argument("--steps", type=int, nargs="+", default=None, metavar="I",
                   help="denoising step indices to aggregate (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    _model_args(p, load)
    p.set_defaults(func=_attribution_cmd)

    p = sub.add_parser("effect-map", help="where interventions change the denoiser's prediction (interp.effect_map); "
                       "writes effect_map.json/.safetensors, effect_map.md and effect_map.png")
    p.add_argument("--prompt", required=True)
    p.add_argument("--mask", type=unit_spec, action="append", default=[], metavar="SITE:UNITS",
                   help="zero these units (e.g. text.blocks.1.mlp.hook_post:3,17,40-42); repeatable")
    p.add_argument("--amplify", type=amplify_spec, action="append", default=[], metavar="SITE:UNITS:LAM",
                   help="scale these units by 1 + LAM; repeatable")
    p.add_argument("--steps", type=int, nargs="+", default=None, metavar="I",
                   help="denoising steps the interventions act at (default: all)")
    p.add_argument("--branch", default="cond", choices=list(BRANCH_CHOICES),
                   help="classifier-free-guidance rows the interventions edit")
    p.add_argument("--out", required=True, help="output folder")
    _model_args(p, load)
    p.set_defaults(func=_effect_map_cmd)


def register(sub: argparse._SubParsersAction, load: Loader | None = None) -> None:
    """Add this package's sub-commands to the `culturelens` parser (`load`: see `Loader`)."""
    p = sub.add_parser("demo", help="trace, patch, mask and generate on a tiny (or given) pipeline; write a report")
    p.add_argument("--out", required=True, help="output folder (report.md, images.png, plots)")
    p.add_argument("--model", default=None, help="a local diffusers pipeline folder (default: a tiny random one)")
    p.add_argument("--family", default="sd", choices=["sd", "sdxl", "altdiffusion", "sd3"],
                   help="family of the tiny pipeline when --model is not given")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only for folders you trust)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    renamed_flag(p, "--steps", "--num-steps")
    p.add_argument("--k", type=positive_int, default=8, help="number of units to mask")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(func=_demo, load=load)
    _register_methods(sub, load)
