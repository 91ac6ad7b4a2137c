"""Command-line sub-commands of `sae`."""

from __future__ import annotations

import argparse

from interp.cli import Loader, positive_int
from sae.errors import SAEError


def register(sub: argparse._SubParsersAction, load: Loader | None = None) -> None:
    """Add this package's sub-commands to the `culturelens` parser (`load`: see `interp.cli.Loader`)."""
    p = sub.add_parser("sae-train", help="train a Top-K SAE on a text site of a local pipeline; "
                       "writes a SAELens folder, metrics log and plot")
    p.add_argument("--model", required=True, help="local diffusers pipeline folder")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only for folders you trust; "
                        "the shipped CultureWorld organism's code is recognised by fingerprint and needs no flag)")
    p.add_argument("--prompts", required=True, help="text file (UTF-8), one prompt per line")
    p.add_argument("--site", required=True, help="e.g. text.blocks.9.hook_resid_post")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--d-sae", type=positive_int, default=4096)
    p.add_argument("--k", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=4096)
    p.add_argument("--tokens", type=positive_int, default=None, help="token budget (default 10 passes)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--aux-coef", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=positive_int, default=None,
                   help="tokens without firing before a latent counts as dead "
                        "(default min(10M, tokens / 10), see sae.model.dead_tokens_for)")
    p.add_argument("--drop", choices=["special", "padding", "none"], default="special")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoints (refused if the settings differ); otherwise start over")
    p.add_argument("--heldout", type=_fraction, default=0.1, metavar="FRACTION",
                   help="share of the distinct prompts held out of training (a draw fixed by --seed, "
                        "at least one prompt); summary.json's FVU is on their tokens. 0: every prompt "
                        "trains and the FVU is on training tokens (summary.json says so)")
    p.add_argument("--eval-store", default=None, metavar="DIR",
                   help="an activation store of the same site (e.g. another run's OUT/heldout_store) to "
                        "report FVU on instead of a held-out split; every prompt then trains")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_train_cmd, load=load)

    p = sub.add_parser("browse", help="static HTML feature browser (opens from disk) and Neuronpedia-style "
                       "JSON for an SAE: top examples, histogram, density, optional steering previews")
    p.add_argument("--sae", required=True, help="SAELens folder (sae-train's OUT/sae)")
    p.add_argument("--model", required=True, help="local diffusers pipeline folder")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only folders you trust)")
    p.add_argument("--prompts", required=True, help="text file (UTF-8), one prompt per line: the examples")
    p.add_argument("--out", required=True, help="output folder (open OUT/index.html)")
    p.add_argument("--site", default=None, help="default: the SAE's hook_name")
    p.add_argument("--top-k", type=positive_int, default=10, help="examples per latent")
    p.add_argument("--per-page", type=positive_int, default=256, help="latents per index page")
    p.add_argument("--drop", choices=["special", "padding", "none"], default="special",
                   help="text sites: positions left out, as sae-train's store")
    p.add_argument("--steer", type=int, default=0, metavar="N",
                   help="steering previews (ablated, amplified) for the N densest latents; costly: "
                        "N x (1 + len(--lams)) generations")
    p.add_argument("--lams", type=float, nargs="+", default=[1.0, 4.0], help="amplify by (1 + λ)")
    p.add_argument("--steer-prompt", default=None, help="default: the first prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_browse_cmd, load=load)

    p = sub.add_parser("export-features", help="export chosen latents of an SAE as steering features "
                       "(features.safetensors: decoder rows; features.json: labels, module, activation scales)")
    p.add_argument("--sae", required=True, help="SAELens folder (sae-train's OUT/sae)")
    p.add_argument("--latents", required=True, type=int, nargs="+", help="latent indices to export")
    p.add_argument("--labels", nargs="+", default=None, help="one label per latent (default: 'latent N')")
    p.add_argument("--site", default=None, help="default: the SAE's hook_name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="local diffusers pipeline folder: features.json then names the site's module")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only folders you trust)")
    p.add_argument("--store", default=None,
                   help="the activation store the SAE was trained on (sae-train's OUT/store): "
                        "activation scales, firing rates and the kept positions")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_export_features_cmd, load=load)


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def heldout_split(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): round(fraction x distinct prompts) distinct prompts,
    at least one, drawn with `seed`, held out; a repeat of a held-out prompt is held out too, so
    no held-out text is ever trained on. fraction 0: every prompt trains."""
    import torch

    if fraction == 0:
        return list(prompts), []
    distinct = list(dict.fromkeys(prompts))
    k = max(1, round(fraction * len(distinct)))
    if k >= len(distinct):
        raise SAEError(f"--heldout {fraction}: {len(distinct)} distinct prompt(s) leave none to train on; "
                       f"give more prompts, --heldout 0 or --eval-store")
    perm = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {distinct[i] for i in perm[:k]}
    return [p for p in prompts if p not in held], [p for p in distinct if p in held]


def _read_prompts(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM must not become part of prompt 1
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise SAEError(f"--prompts {path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from e
    except OSError as e:
        raise SAEError(f"--prompts {path}: {e.strerror}") from e
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise SAEError(f"--prompts {path}: no non-empty lines")
    return prompts


def _train_cmd(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import interp
    from interp import distributed
    from sae import ActivationStore, TopKSAE, TrainConfig, downstream_error, evaluate, save_saelens, train
    from sae.plot import plot_metrics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = _read_prompts(args.prompts)
    if args.eval_store:
        eval_store = ActivationStore(args.eval_store)  # opened first: a wrong folder fails before any work
        if eval_store.fingerprints.get("site") != args.site:
            raise SAEError(f"--eval-store {args.eval_store}: a store of site {eval_store.fingerprints.get('site')!r}, "
                           f"not {args.site!r}")
        train_prompts, held = list(prompts), []
    else:
        train_prompts, held = heldout_split(prompts, args.heldout, args.seed)
    model = (args.load or interp.load)(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    store = ActivationStore.build(model, train_prompts, args.site, out / "store", drop=args.drop)
    if held:
        eval_store = ActivationStore.build(model, held, args.site, out / "heldout_store", drop=args.drop)
    batch = min(args.batch_size, store.n_tokens)
    if batch < args.batch_size:
        print(f"note: store holds {store.n_tokens} tokens; batch size lowered to {batch}")
    tokens = args.tokens or 10 * store.n_tokens
    sae = TopKSAE(store.d, args.d_sae, args.k, dead_tokens=args.dead_tokens, seed=args.seed)
    cfg = TrainConfig(batch_size=batch, total_tokens=tokens, lr=args.lr, aux_coef=args.aux_coef, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
    rows = train(sae, store, cfg, checkpoint_dir=out / "checkpoints", resume=args.resume)
    sae.eval()
    on_train = evaluate(sae, store.sample(min(store.n_tokens, 65_536), seed=args.seed + 7))
    if args.eval_store:
        quality = evaluate(sae, eval_store)
        quality["eval"] = f"--eval-store {args.eval_store}: {eval_store.n_tokens} tokens"
    elif held:
        quality = evaluate(sae, eval_store)
        quality["eval"] = (f"held out: {len(held)} of {len(dict.fromkeys(prompts))} distinct prompts "
                           f"(--heldout {args.heldout}, seed {args.seed}), never trained on; "
                           f"{eval_store.n_tokens} tokens in {out / 'heldout_store'}")
        quality["heldout_prompts"] = held
    else:
        quality = dict(on_train)
        quality["eval"] = "training tokens (--heldout 0): not a held-out FVU"
    quality["train"] = on_train
    quality["downstream"] = downstream_error(model, (held or prompts)[:32], sae.to(args.device), args.site)
    if not distributed.is_main():  # under torchrun every rank holds the same SAE; rank 0 writes it
        return 0
    save_saelens(sae, out / "sae", hook_name=args.site, model_name=Path(args.model).name,
                 prompts_fingerprint=store.fingerprints["prompts"])
    if rows:
        plot_metrics(rows, out / "metrics.png", title=f"{args.site}  d_sae={args.d_sae} k={args.k}",
                     dead_tokens=sae.cfg.dead_tokens)
    (out / "summary.json").write_text(json.dumps(quality, indent=2))
    print(json.dumps(quality, indent=2))
    print(f"FVU {quality['fvu']:.4f} on {quality['eval']} (training tokens: {on_train['fvu']:.4f})")
    print(f"wrote {out / 'sae'} (SAELens), {out / 'checkpoints' / 'metrics.jsonl'}, {out / 'metrics.png'}")
    return 0


def _export_features_cmd(args: argparse.Namespace) -> int:
    import interp
    from sae import ActivationStore, export_features
    from sae.saelens import load_saelens

    sae = load_saelens(args.sae, device=args.device)
    site = args.site or sae.saelens_cfg.get("metadata", {}).get("hook_name")
    if not site:
        raise SAEError(f"--sae {args.sae}: cfg.json names no hook_name; pass --site")
    bad = [i for i in args.latents if not 0 <= i < sae.d_sae]
    if bad or len(set(args.latents)) != len(args.latents):
        raise SAEError(f"--latents {args.latents}: need distinct indices in [0, {sae.d_sae}); "
                       f"{'out of range: ' + str(bad) if bad else 'repeats'}")
    labels = args.labels or [f"latent {i}" for i in args.latents]
    if len(labels) != len(args.latents):
        raise SAEError(f"--labels: {len(labels)} labels for {len(args.latents)} latents")
    model = None
    if args.model:
        model = (args.load or interp.load)(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    store = ActivationStore(args.store) if args.store else None
    out = export_features(sae, args.latents, labels, args.out, site=site, model=model, store=store)
    print(f"wrote {out / 'features.safetensors'} and {out / 'features.json'} ({len(args.latents)} latents of {site})")
    return 0


def _browse_cmd(args: argparse.Namespace) -> int:
    import interp
    from sae.browser import build_browser, denoiser_activations, steering_previews, text_activations
    from sae.saelens import load_saelens
    from interp.model.sites import DENOISER_PREFIXES

    sae = load_saelens(args.sae, device=args.device)
    site = args.site or sae.saelens_cfg.get("metadata", {}).get("hook_name")
    if not site:
        raise SAEError(f"--sae {args.sae}: cfg.json names no hook_name; pass --site")
    prompts = _read_prompts(args.prompts)
    model = (args.load or interp.load)(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    if site.split(".", 1)[0] in DENOISER_PREFIXES:
        acts = denoiser_activations(model, sae, site, prompts, seed=args.seed)
    else:
        acts = text_activations(model, sae, prompts, site, drop=args.drop)
    previews = {}
    if args.steer > 0:
        from sae.browser import latent_stats

        dens = sorted(latent_stats(acts, 1, 1), key=lambda s: (-s.frac_nonzero, s.index))[:args.steer]
        previews = steering_previews(model, sae, site, [s.index for s in dens], args.steer_prompt or prompts[0],
                                     seed=args.seed, lams=args.lams)
    built = build_browser(acts, args.out, title=f"SAE {site}", site=site, top_k=args.top_k,
                          per_page=args.per_page, steering=previews,
                          meta={"model": str(args.model), "sae": str(args.sae), "k": sae.k})
    print(f"wrote {built.index} ({len(built.latent_pages)} latent pages, {len(built.index_pages)} index pages) "
          f"and {built.features_json}")
    return 0
