"""The README recipe: steer a plain diffusers pipeline from exported SAE features, with no
culturelens import in the recipe. The exports say which module, which rows (CFG branch,
positions) and which activation scale; the recipe's image equals culturelens' own Steer."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
from sae import ActivationStore, Steer, TopKSAE, TrainConfig, export_features, load_saelens, save_saelens, train

SITE = "unet.down.0.attn.0.attn2.hook_out"
PROMPTS = [f"a {c} {n}" for c in ("red", "old", "big", "blue") for n in ("cat", "dog", "box")]

# The README recipe ("Steer a plain diffusers pipeline from exported features"), read from the
# README itself so the two cannot drift; PIPELINE is the pipeline folder, EXPORT the
# export_features folder.
README = Path(__file__).resolve().parents[2] / "README.md"
RECIPE = re.search(r"^```py\n(# Steer a plain diffusers pipeline.*?)^```", README.read_text(encoding="utf-8"),
                   flags=re.S | re.M).group(1)


@pytest.fixture(scope="module")
def exported(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    store = ActivationStore.build(tiny_sd, PROMPTS, SITE, root / "store", batch_size=6, seeds=[0],
                                  shard_tokens=1024, progress=False)
    sae = TopKSAE(16, 32, 4, seed=0, dead_tokens=2 * store.n_tokens)
    train(sae, store, TrainConfig(batch_size=128, total_tokens=128 * 200, lr=3e-3), progress=False)
    fires = sae.encode(store.all()).detach().gt(0).float().mean(0)
    latents = fires.argsort(descending=True)[:2].tolist()  # two latents that fire often
    export_features(sae, latents, ["a", "b"], root / "export", site=SITE, model=tiny_sd, store=store)
    tiny_sd.save_pretrained(root / "pipe")
    return root, store, sae, latents


def test_exports_are_self_describing(tiny_sd, exported):
    root, store, sae, latents = exported
    meta = json.loads((root / "export" / "features.json").read_text())
    mod = meta["module"]
    assert mod["component"] == "unet" and mod["module_path"] == "unet." + mod["path"]
    assert mod["path"] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2" and mod["class"] == "Attention"
    assert mod["hook"] == "forward_output" and mod["feature_axis"] == -1
    pol = meta["position_policy"]
    assert pol["branch"] == "cond" and pol["steps"] == "all" and pol["positions"] == "all" and pol["num_steps"] == 2
    rows = store.all()
    assert meta["activation_scale"]["mean_norm"] == pytest.approx(float(rows.norm(dim=-1).mean()), rel=1e-5)
    z = sae.encode(rows).detach()
    for f in meta["features"]:
        zj = z[:, f["latent"]]
        assert f["max_activation"] == pytest.approx(float(zj.max()), rel=1e-5)
        assert f["typical_activation"] == pytest.approx(float(zj[zj > 0].median()), rel=1e-5)
        assert 0 < f["firing_rate"] <= 1 and f["coefficient_scale"] == f["typical_activation"]
    assert meta["steering"]["coefficient_scale"] > 0
    # SAELens folder: the same description in cfg.json metadata, SAELens' sparsity file beside
    out = save_saelens(sae, root / "saelens", SITE, model=tiny_sd, store=store)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["module"] == mod and cfg["metadata"]["position_policy"] == pol
    assert cfg["metadata"]["hook_name"] == SITE and (out / "sparsity.safetensors").exists()
    assert torch.equal(load_saelens(out).W_dec, sae.W_dec.detach())
    # text stores record which tokens were kept
    text = ActivationStore.build(tiny_sd, PROMPTS[:4], "text.blocks.0.hook_resid_post", root / "text", progress=False)
    t = export_features(TopKSAE(32, 16, 4, seed=0), [0], ["x"], root / "text_export",
                        site="text.blocks.0.hook_resid_post", model=tiny_sd, store=text)
    tp = json.loads((t / "features.json").read_text())
    assert tp["position_policy"]["drop"] == "special" and tp["position_policy"]["special_ids"]
    assert tp["module"]["component"] == "text_encoder" and tp["module"]["path"].endswith("layers.0")


def test_recipe_steers_a_plain_pipeline_like_culturelens(tiny_sd, exported):
    root, _, sae, latents = exported
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(RECIPE)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert imported == {"json", "pathlib", "torch", "diffusers", "safetensors"}
    env = {"PIPELINE": str(root / "pipe"), "EXPORT": str(root / "export")}
    exec(compile(RECIPE, "README recipe", "exec"), env)
    plain, steered = np.asarray(env["plain"], dtype=int), np.asarray(env["steered"], dtype=int)
    assert np.abs(steered - plain).max() > 10  # the steering changed the image
    # the same edit through culturelens
    meta = json.loads((root / "export" / "features.json").read_text())
    add = [4.0 * f["typical_activation"] for f in meta["features"]]
    ref = interp.generate(tiny_sd, ["a cat"], seed=0, interventions=[Steer(sae, SITE, latents, add=add)]).images[0]
    base = interp.generate(tiny_sd, ["a cat"], seed=0).images[0]
    assert np.abs(np.asarray(base, dtype=int) - plain).max() <= 1
    assert np.abs(np.asarray(ref, dtype=int) - steered).max() <= 2
