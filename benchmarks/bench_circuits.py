"""Benchmark: the culture-layer scan over N prompt pairs on a 24-layer XLM-R-large-shaped
random encoder (d 1024, 16 heads, MLP 4096, 77 tokens) inside a tiny AltDiffusion pipeline.

Reports seconds per pair and ratios against a reference in the same run: one plain
transformers forward of the same prompts, padded to 77 as the pipeline pads, with
`output_attentions=True` (eager), i.e. the cost of forming the attention probabilities at
all. `trim=False` measures our overhead (nnsight capture, spans, CA reduction, bootstrap);
the default `trim=True` cuts padding where that is exact (the encoder gets the attention
mask, `use_attention_mask=True` here as in a masked XLM-R pipeline).

    python benchmarks/bench_circuits.py [--pairs 200] [--batch-size 16] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import time


def build(device: str):
    import torch
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig, RobertaSeriesModelWithTransformation,
    )

    import interp
    from interp.model.model import Model
    from interp.model.tiny import _eager, build_pipeline

    pipe = build_pipeline("altdiffusion", seed=0)
    tok = pipe.tokenizer
    tok.model_max_length = 77
    torch.manual_seed(0)
    cfg = RobertaSeriesConfig(
        vocab_size=len(tok), hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=514, project_dim=768, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, type_vocab_size=1, layer_norm_eps=1e-5, use_attention_mask=True,
    )
    pipe.text_encoder = _eager(RobertaSeriesModelWithTransformation(cfg)).to(device)
    del interp  # the Model wraps the pipeline as any loaded one
    return Model.from_pipeline(pipe, defaults={"steps": 2, "guidance": 7.5})


def make_pairs(n: int):
    from circuits.data.culturebench import CULTURE_NAMES

    nouns = ["box", "bowl", "vase", "hat", "lamp", "jar", "dress", "house", "building", "cup", "chair", "table", "fan"]
    cultures = list(CULTURE_NAMES)
    out = []
    for i in range(n):
        c, noun = cultures[i % len(cultures)], nouns[(i // len(cultures)) % len(nouns)]
        adj = CULTURE_NAMES[c]
        out.append((f"a photo of a {adj}-style {noun} number {i}", f"a photo of a {noun} number {i}", f"{adj}-style", noun, c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scan-only", action="store_true", help="time only the default (trimmed) scan: no reference, no ratio")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import circuits

    t0 = time.perf_counter()
    model = build(args.device)
    te = model.encoders["text"]
    print(f"encoder: {te.arch}, {te.n_layers} layers, d {te.d_model}, {te.n_heads} heads, MLP {te.d_mlp}, "
          f"{te.max_length} tokens, {sum(p.numel() for p in te.module.parameters()) / 1e6:.0f}M params "
          f"(built in {time.perf_counter() - t0:.1f} s); threads {torch.get_num_threads()}, device {args.device}")
    pairs = make_pairs(args.pairs)
    prompts = [p[0] for p in pairs] + [p[1] for p in pairs]
    lens = model.tokenize(prompts)["attention_mask"].sum(1).float()
    # The random model's tokenizer is the tiny 300-piece one, so prompts are longer than with
    # XLM-R's real vocabulary: the trimmed scan's gain here is a lower bound.
    print(f"real tokens per prompt: mean {lens.mean():.1f}, max {int(lens.max())} (padded to {te.max_length})")

    # Warm-up (first-call allocations, nnsight wrapper), then the reference: plain forward
    # passes forming attention probabilities, same batches.
    circuits.culture_layer_scan(model, pairs[:2], batch_size=args.batch_size, n_boot=10)
    if args.scan_only:
        t0 = time.perf_counter()
        e = circuits.culture_layer_scan(model, pairs, batch_size=args.batch_size, n_boot=1000).encoders["text"]
        t = time.perf_counter() - t0
        print(f"culture_layer_scan trim=True ({args.pairs} pairs, {e.direction}, 1000 bootstrap resamples): "
              f"{t:.2f} s = {1000 * t / args.pairs:.1f} ms/pair; chosen layer {e.chosen}")
        return
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(prompts), args.batch_size):
            b = model.tokenize(prompts[s : s + args.batch_size])
            te.module(b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True)
    ref = time.perf_counter() - t0

    times = {}
    for trim in (False, True):
        t0 = time.perf_counter()
        scan = circuits.culture_layer_scan(model, pairs, batch_size=args.batch_size, n_boot=1000, trim=trim)
        times[trim] = time.perf_counter() - t0
        e = scan.encoders["text"]
        assert len(e.delta) == te.n_layers and e.n_pairs == args.pairs
    print(f"reference (HF forward at 77 tokens, output_attentions): {ref:.2f} s = {1000 * ref / args.pairs:.1f} ms/pair")
    for trim, t in times.items():
        print(f"culture_layer_scan trim={trim} ({args.pairs} pairs, {e.direction}, 1000 bootstrap resamples): "
              f"{t:.2f} s = {1000 * t / args.pairs:.1f} ms/pair; ratio to reference {t / ref:.2f}x")
    print(f"chosen layer {e.chosen}")

if __name__ == "__main__":
    main()
