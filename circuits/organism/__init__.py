"""CultureWorld, the model organism: a tiny text-to-image model trained here that has the
cultural gap (modifier prompts show a culture, local noun-only prompts mostly do not).

Modules (import what you need; nothing heavy is imported here):
- `render`: procedural 32×32 images (noun = silhouette, culture = palette + pattern).
- `prompts`: bundled CultureBench pairs of the 8 nouns, the training mix, `eval_prompts(kind, split)`.
- `model`, `pipeline`, `export`: the stock HF/diffusers parts, `CultureWorldPipeline`, folder I/O.
- `train`: resumable trainer; `judge`: the CNN CultureVQA judge; `evaluate`: the results table.
- `build`: `build(out_dir, train_steps, resume=True)`, also `culturelens organism-build --train-steps N`.
"""
