"""Command-line sub-commands of `circuits` (the culture analyses). Each writes a results
folder with JSON, figures and a Markdown summary; heavy imports stay inside the functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.cli import positive_int, renamed_flag


def _common(p: argparse.ArgumentParser, judge: bool = False, units: bool = False) -> None:
    p.add_argument("--model", required=True, help="pipeline folder, or tiny:<family>[:<layers>]")
    p.add_argument("--pairs", default="bundled", help="bundled | bundled_ood | CultureBench folder or samples file")
    p.add_argument("--split", default=None, help="use only this split (train/test/probe)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many records per culture")
    p.add_argument("--english", action="store_true", help="use the English prompts")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a pipeline folder that ships its own pipeline.py (only for folders you trust; the "
                        "shipped CultureWorld organism's code is recognised by its fingerprint and needs no flag)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--n-boot", type=positive_int, default=1000)
    if judge:
        p.add_argument("--judge", required=True, help="clip:PATH | vlm:PATH | py:FILE.py:FACTORY | module:FACTORY")
        p.add_argument("--num-steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
        renamed_flag(p, "--steps", "--num-steps")
    if units:
        p.add_argument("--units", required=True, help="folder written by find-units")
        p.add_argument("--sae", default=None, help="SAELens folder, when the units are SAE latents")


def _settings(args):
    """The generation and judging settings of a judged command (--seed, --num-steps, --batch-size,
    --n-boot) as one `circuits.ScoreSettings`."""
    from circuits.evaluate import ScoreSettings

    return ScoreSettings(seed=args.seed, num_steps=args.num_steps, batch_size=args.batch_size, n_boot=args.n_boot)


def _load(args):
    from circuits.io import load_model, load_records
    from circuits.pairs import as_pairs

    model = load_model(args.model, args.device, args.trust_remote_code)
    recs = load_records(args.pairs, args.split, args.limit, args.seed)
    pairs = as_pairs(recs, english=args.english) if args.english else recs
    from interp import distributed

    out = distributed.output_dir(args.out)  # under torchrun only rank 0 writes into --out
    out.mkdir(parents=True, exist_ok=True)
    return model, recs, pairs, out


def cmd_layer_scan(args) -> int:
    from circuits.runner import scan_markdown, write_summary
    from circuits.locate.scan import culture_layer_scan

    model, _, pairs, out = _load(args)
    scan = culture_layer_scan(model, pairs, direction=args.direction, seeds=args.seeds, n_boot=args.n_boot,
                              encoders=args.encoders, batch_size=max(16, args.batch_size))
    scan.save(out / "layer_scan.json")
    scan.plot(out / "layer_scan.png")
    write_summary(out, "Culture-layer scan", [scan_markdown(scan)])
    print(f"chosen layer: {scan.chosen} -> {out}")
    return 0


def cmd_find_units(args) -> int:
    from circuits.io import load_sae
    from circuits.runner import units_markdown, write_summary
    from circuits.locate.units import culture_units, neuron_basis, sae_basis

    model, _, pairs, out = _load(args)
    sae = load_sae(args.sae)
    basis = sae_basis(sae, args.site or f"text.blocks.{args.layer}.hook_resid_post") if sae is not None else \
        (args.site or neuron_basis(args.layer).site)
    units = culture_units(model, basis, pairs, eps=args.eps, beta=args.beta, rho=args.rho, k=args.k, k_max=args.k_max,
                          select=args.select)
    units.save(out)
    units.plot(out)
    write_summary(out, "Culture units", [units_markdown(units)])
    print(f"units for {len(units.cultures)} cultures -> {out}")
    return 0


def cmd_validate(args) -> int:
    from circuits.io import load_judge, load_units
    from circuits.runner import validation_markdown, write_summary
    from circuits.causal.validate import validate_units

    judge = load_judge(args.judge, args.device)
    units = load_units(args.units, args.sae)
    model, _, pairs, out = _load(args)
    v = validate_units(model, units, pairs, judge, n_random=args.n_random, settings=_settings(args))
    v.save(out / "validation.json")
    v.plot(out / "validation.png")
    write_summary(out, "Causal validation", [validation_markdown(v)])
    print(v.table())
    return 0


def cmd_amplify(args) -> int:
    from circuits.causal.amplify import lambda_sweep
    from circuits.io import load_judge, load_units
    from circuits.runner import sweep_markdown, write_summary

    judge = load_judge(args.judge, args.device)
    units = load_units(args.units, args.sae)
    model, _, pairs, out = _load(args)
    sw = lambda_sweep(model, units, pairs, judge, lams=args.lams, n_random=args.n_random, keep_error=not args.replace,
                      settings=_settings(args))
    sw.save(out / "lambda_sweep.json")
    sw.plot(out / "lambda_sweep.png")
    write_summary(out, "Zero-training amplifier", [sweep_markdown(sw)])
    print(f"best λ = {sw.best_lam:g} -> {out}")
    return 0


def cmd_enhance(args) -> int:
    from circuits.causal.enhancer import EnhancerConfig, random_other_layer, train_enhancer
    from circuits.io import load_judge
    from circuits.results import write_json
    from circuits.runner import enhancer_markdown, evaluate_enhancer, write_summary

    model, recs, _, out = _load(args)
    layers = [("culture layer", args.layer)]
    if args.control:
        layers.append(("random other layer", random_other_layer(model.encoders["text"].n_layers, args.layer, args.seed)))
    rows, runs = {}, {}
    judge = load_judge(args.judge, args.device) if args.judge else None
    if judge is not None:
        from circuits.pairs import take_split

        eval_recs = take_split(recs, args.eval_split, "enhancer evaluation")
        rows["none (baseline)"] = (None, evaluate_enhancer(model, None, eval_recs, judge, settings=_settings(args)))
    cfg = EnhancerConfig(train_steps=args.train_steps, lr=args.lr, batch_size=args.train_batch, objective=args.objective,
                         seed=args.seed, checkpoint_every=args.checkpoint_every)
    for name, l in layers:
        run = train_enhancer(model, recs, layer=l, out=out / f"enhancer_layer{l}", cfg=cfg, split=args.train_split,
                             resume=not args.restart)
        runs[name] = run.to_json()
        run.plot(out / f"enhancer_layer{l}" / "loss.png")
        if judge is not None:
            rows[name] = (l, evaluate_enhancer(model, run.enhancer, eval_recs, judge, settings=_settings(args)))
    write_json(out / "enhancer.json", {"runs": runs, "culturevqa": {k: {"layer": l, "rate": r} for k, (l, r) in rows.items()}})
    write_summary(out, "Layer enhancer", [enhancer_markdown(rows) if rows else "## Layer enhancer\n\nTrained (no judge given).\n"])
    print(f"enhancer(s) -> {out}")
    return 0


def cmd_causal_sweep(args) -> int:
    from circuits.io import load_judge, load_layer_saes, load_records
    from circuits.pairs import as_pairs
    from circuits.runner import causal_markdown, write_summary
    from circuits.causal.sweep import causal_sweep

    model, _, pairs, out = _load(args)
    probe = load_records(args.pairs, args.probe_split, args.limit, args.seed)
    probe = as_pairs(probe, english=True) if args.english else probe
    saes = load_layer_saes(args.sae)
    cs = causal_sweep(model, probe, pairs, load_judge(args.judge, args.device), n_units=args.n_units,
                      layers=sorted(saes) if saes else None, basis_for=saes, chosen=args.chosen, rho=args.rho,
                      settings=_settings(args), allow_overlap=args.allow_overlap)
    cs.save(out / "causal_sweep.json")
    cs.plot(out / "causal_sweep.png")
    write_summary(out, "Exhaustive causal sweep", [causal_markdown(cs)])
    print(f"causal ranking {cs.ranking} -> {out}")
    return 0


def cmd_circuits(args) -> int:
    from circuits.io import load_judge
    from circuits.runner import RunConfig, run_all

    model, recs, pairs, out = _load(args)
    kw = dict(sae_path=args.sae, num_steps=args.num_steps, seed=args.seed, batch_size=args.batch_size, skip=tuple(args.skip),
              probe_split=args.probe_split, eval_split=args.eval_split, train_split=args.train_split,
              allow_overlap=args.allow_overlap, sweep_saes=tuple(args.sweep_sae or ()))
    cfg = RunConfig.quick(**kw) if args.quick else RunConfig(**kw)
    run_all(model, pairs, load_judge(args.judge, args.device), out, cfg)
    print(f"circuits analysis -> {out / 'summary.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the circuits sub-commands to the `culturelens` parser."""
    p = sub.add_parser("layer-scan", help="ΔCA per text-encoder layer and the culture layer")
    _common(p)
    p.add_argument("--direction", default=None, choices=["modifier->noun", "noun->modifier", "both"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoders", nargs="+", default=None)
    p.set_defaults(func=cmd_layer_scan)

    p = sub.add_parser("find-units", help="culture units by WFS (SAE latents or MLP neurons)")
    _common(p)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--site", default=None, help="override the site (default: layer output for an SAE, MLP neurons otherwise)")
    p.add_argument("--sae", default=None, help="SAELens folder: units are its latents")
    p.add_argument("--eps", type=float, default=0.0)
    p.add_argument("--beta", type=float, default=1e-6)
    p.add_argument("--rho", type=float, default=0.5)
    p.add_argument("--k", type=positive_int, default=None, help="fixed K instead of the elbow")
    p.add_argument("--k-max", type=positive_int, default=64)
    p.add_argument("--select", default="wfs", choices=["wfs", "specific"],
                   help="rank by WFS_cult, or by WFS_cult minus the max over the other cultures (culture-specific)")
    p.set_defaults(func=cmd_find_units)

    p = sub.add_parser("validate-units", help="baseline vs Top-K masked vs random masked (CultureVQA)")
    _common(p, judge=True, units=True)
    p.add_argument("--n-random", type=positive_int, default=10)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("amplify-sweep", help="zero-training amplifier: CultureVQA per λ vs random units")
    _common(p, judge=True, units=True)
    p.add_argument("--lams", type=float, nargs="+", default=[0, 2, 4, 6, 7, 8])
    p.add_argument("--n-random", type=positive_int, default=3)
    p.add_argument("--replace", action="store_true", help="paper-literal F' = decode(Z_enh) (drop the SAE error)")
    p.set_defaults(func=cmd_amplify)

    p = sub.add_parser("train-enhancer", help="fine-tuned layer enhancer (+ random-layer control)")
    _common(p)
    p.add_argument("--judge", default=None, help="evaluate with this judge (see validate-units)")
    p.add_argument("--num-steps", type=positive_int, default=None, help="denoising steps for evaluation")
    renamed_flag(p, "--steps", "--num-steps")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--control", action="store_true", help="also train at a random other layer")
    p.add_argument("--train-steps", type=positive_int, default=2000, help="training steps of each enhancer")
    p.add_argument("--train-batch", type=positive_int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--objective", default="denoise", choices=["denoise", "pixel"])
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--restart", action="store_true",
                   help="start the enhancer training over instead of resuming its checkpoint in --out")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="test")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("causal-sweep", help="mask top units at every layer: the causal ground truth for the scan")
    _common(p, judge=True)
    p.add_argument("--probe-split", default="probe", help="split to find units on (default: probe)")
    p.add_argument("--n-units", type=positive_int, default=8)
    p.add_argument("--chosen", type=int, default=None, help="the ΔCA-chosen layer to rank")
    p.add_argument("--rho", type=float, default=0.5)
    p.add_argument("--sae", action="append", default=None, metavar="LAYER=PATH",
                   help="an SAELens folder per layer (repeat): sweep those layers' SAE latents, the basis detection "
                        "uses; default: every layer's MLP neurons")
    p.add_argument("--allow-overlap", action="store_true",
                   help="allow probe and evaluation records that share prompts (the summary says so)")
    p.set_defaults(func=cmd_causal_sweep, split="test")

    p = sub.add_parser("circuits", help="all circuits steps into one results folder")
    _common(p, judge=True)
    p.add_argument("--sae", default=None, help="SAELens folder at the culture layer (default: MLP neurons)")
    p.add_argument("--quick", action="store_true", help="small bootstrap/draw counts and a 4-step enhancer")
    p.add_argument("--skip", nargs="*", default=[], choices=["validate", "amplify", "enhancer", "causal"])
    p.add_argument("--probe-split", default="probe", help="split for the scan and the units")
    p.add_argument("--eval-split", default="test", help="split every CultureVQA table is measured on")
    p.add_argument("--train-split", default="train", help="split the enhancer trains on")
    p.add_argument("--allow-overlap", action="store_true",
                   help="allow probe and evaluation records that share prompts (the summary says so)")
    p.add_argument("--sweep-sae", action="append", default=None, metavar="LAYER=PATH",
                   help="an SAELens folder per layer (repeat) for the causal sweep (default: MLP neurons)")
    p.set_defaults(func=cmd_circuits)

    from circuits.organism.cli import register_organism
    from circuits.analysis.cli import register_analysis, register_real_encoder, register_spread

    register_organism(sub)
    register_analysis(sub)
    register_spread(sub)
    register_real_encoder(sub)
