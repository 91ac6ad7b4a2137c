"""Command-line sub-commands of `sae`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's sub-commands to the `culturelens` parser."""
    p = sub.add_parser("sae-train", help="train a Top-K SAE on a text site of a local pipeline; "
                       "writes a SAELens folder, metrics log and plot")
    p.add_argument("--model", required=True, help="local diffusers pipeline folder")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--site", required=True, help="e.g. text.blocks.9.hook_resid_post")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=None, help="token budget (default 10 passes)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--aux-coef", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=int, default=None,
                   help="tokens without firing before a latent counts as dead "
                        "(default min(10M, tokens / 10), see sae.model.dead_tokens_for)")
    p.add_argument("--drop", choices=["special", "padding", "none"], default="special")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_train_cmd)


def _read_prompts(path: str) -> list[str]:
    from sae.errors import SAEError

    try:
        lines = open(path, encoding="utf-8").read().splitlines()
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
    from sae import ActivationStore, TopKSAE, downstream_error, evaluate, save_saelens, train
    from sae.plot import plot_metrics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = _read_prompts(args.prompts)
    model = interp.load(args.model, device=args.device)
    store = ActivationStore.build(out / "store", model, prompts, args.site, drop=args.drop)
    batch = min(args.batch_size, store.n_tokens)
    if batch < args.batch_size:
        print(f"note: store holds {store.n_tokens} tokens; batch size lowered to {batch}")
    tokens = args.tokens or 10 * store.n_tokens
    sae = TopKSAE(store.d, args.d_sae, args.k, dead_tokens=args.dead_tokens, seed=args.seed)
    rows = train(sae, store, batch_size=batch, total_tokens=tokens, lr=args.lr,
                 aux_coef=args.aux_coef, seed=args.seed, checkpoint_dir=out / "checkpoints",
                 checkpoint_every=args.checkpoint_every, resume=args.resume)
    sae.eval()
    quality = evaluate(sae, store.sample(min(store.n_tokens, 65_536), seed=args.seed + 7))
    quality["downstream"] = downstream_error(model, sae.to(args.device), args.site, prompts[:32])
    from interp import distributed

    if not distributed.is_main():  # under torchrun every rank holds the same SAE; rank 0 writes it
        return 0
    save_saelens(sae, out / "sae", hook_name=args.site, model_name=Path(args.model).name,
                 prompts_fingerprint=store.fingerprints["prompts"])
    if rows:
        plot_metrics(rows, out / "metrics.png", title=f"{args.site}  d_sae={args.d_sae} k={args.k}",
                     dead_tokens=sae.cfg.dead_tokens)
    (out / "summary.json").write_text(json.dumps(quality, indent=2))
    print(json.dumps(quality, indent=2))
    print(f"wrote {out / 'sae'} (SAELens), {out / 'checkpoints' / 'metrics.jsonl'}, {out / 'metrics.png'}")
    return 0
