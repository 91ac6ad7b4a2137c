"""The sae package on a real (tiny) pipeline through interp: store, splice, steer, CLI."""

import json

import pytest
import torch

import interp
from sae import (ActivationStore, SAEError, Steer, TopKSAE, TrainConfig, downstream_error, evaluate, load_saelens,
                 train)
from sae.store import prompts_fingerprint, token_keep_mask

SITE = "text.blocks.0.hook_resid_post"
# the tiny pipelines take 16 tokens of a character-level vocabulary: short prompts
PROMPTS = [f"{a} {b}" for a in ("red", "old", "big", "blue", "tall", "new")
           for b in ("house", "soup", "dress", "tea", "cat")]


@pytest.fixture(scope="module")
def trained(tiny_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    store = ActivationStore.build(tiny_sd, PROMPTS, SITE, path, batch_size=8, shard_tokens=64,
                                  progress=False)
    sae = TopKSAE(store.d, 64, 8, dead_tokens=2 * store.n_tokens, seed=0)
    train(sae, store, TrainConfig(batch_size=32, total_tokens=32 * 150, lr=3e-3), progress=False)
    return store, sae


def test_store_keeps_only_real_tokens(tiny_sd, trained):
    store, _ = trained
    tok = tiny_sd.tokenize(PROMPTS)
    keep = token_keep_mask(tok["input_ids"], tok["attention_mask"],
                           tiny_sd.encoders["text"].tokenizer.all_special_ids, "special")
    assert store.n_tokens == int(keep.sum()) > len(PROMPTS)
    acts = interp.capture(tiny_sd, PROMPTS, sites=[SITE])[SITE]
    torch.testing.assert_close(store.all(), acts[keep].float())
    assert store.fingerprints["site"] == SITE
    # a different prompt set must not silently reuse this store
    with pytest.raises(SAEError, match="prompts: store has"):
        ActivationStore.build(tiny_sd, PROMPTS[:-1], SITE, store.path, progress=False)
    with pytest.raises(SAEError, match="site: store has"):
        ActivationStore.build(tiny_sd, PROMPTS, "text.blocks.1.hook_resid_post", store.path,
                              progress=False)


def test_downstream_error_splice(tiny_sd, trained):
    _, sae = trained
    r = downstream_error(tiny_sd, PROMPTS[:6], sae, SITE)
    assert r["with_error"] == 0.0 and r["max_abs_with_error"] == 0.0
    assert 0.0 < r["relative_error"] < 1.0
    untrained = downstream_error(tiny_sd, PROMPTS[:6], TopKSAE(sae.d_in, 64, 8, seed=5), SITE)
    assert untrained["relative_error"] > r["relative_error"]


def test_model_first_order_and_old_order_refused(tiny_sd, trained, tmp_path):
    """build(model, prompts, site, path) and downstream_error(model, prompts, sae, site), the order
    of interp.capture(model, prompts, sites); the old orders fail naming the new one."""
    store, sae = trained
    built = ActivationStore.build(tiny_sd, PROMPTS[:4], SITE, path=tmp_path / "kw", progress=False)
    assert built.fingerprints["site"] == SITE and built.n_tokens > 0
    with pytest.raises(SAEError, match=r"build\(model, prompts, site, path"):
        ActivationStore.build(tmp_path / "old", tiny_sd, PROMPTS[:4], SITE, progress=False)
    with pytest.raises(SAEError, match=r"build\(model, prompts, site, path"):
        ActivationStore.build(str(tmp_path / "old"), tiny_sd, PROMPTS[:4], SITE, progress=False)
    assert not (tmp_path / "old").exists()
    with pytest.raises(SAEError, match=r"downstream_error\(model, prompts, sae, site\)"):
        downstream_error(tiny_sd, sae, SITE, PROMPTS[:6])


def test_steer_in_generate(tiny_sd, trained):
    _, sae = trained
    codes = sae.encode(interp.capture(tiny_sd, PROMPTS[:1], sites=[SITE])[SITE])
    latent = int(codes[0].ne(0).sum(0).argmax())
    base = interp.generate(tiny_sd, PROMPTS[:1], seed=0, num_steps=2).latents
    same = interp.generate(tiny_sd, PROMPTS[:1], seed=0, num_steps=2,
                           interventions=[Steer(sae, SITE, [latent], 0.0)]).latents
    assert torch.equal(base, same)
    moved = interp.generate(tiny_sd, PROMPTS[:1], seed=0, num_steps=2,
                            interventions=[Steer(sae, SITE, [latent], 8.0)]).latents
    assert not torch.allclose(base, moved)


def test_cli_sae_train(tiny_sd, tmp_path, capsys):
    from circuits.cli import main

    tiny_sd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "run"
    rc = main(["sae-train", "--model", str(tmp_path / "pipe"), "--prompts",
               str(tmp_path / "prompts.txt"), "--site", SITE, "--out", str(out), "--d-sae", "64",
               "--k", "8", "--batch-size", "64", "--tokens", "3840", "--lr", "3e-3",
               "--checkpoint-every", "20"])
    assert rc == 0
    sae = load_saelens(out / "sae")
    assert (sae.d_sae, sae.k, sae.saelens_cfg["metadata"]["hook_name"]) == (64, 8, SITE)
    assert (out / "metrics.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fvu"] < 0.5 and summary["downstream"]["with_error"] == 0.0
    assert (out / "checkpoints" / "metrics.jsonl").exists()
    # The reported FVU is on prompts the trainer never saw: the training store holds exactly the
    # other prompts, and the number is the SAE's FVU on the held-out store.
    held = summary["heldout_prompts"]
    assert len(held) == 3 and set(held) <= set(PROMPTS) and summary["eval"].startswith("held out: 3 of 30")
    train_store = ActivationStore(out / "store")
    assert train_store.fingerprints["prompts"] == prompts_fingerprint([p for p in PROMPTS if p not in held])
    assert sae.saelens_cfg["metadata"]["prompts_fingerprint"] == train_store.fingerprints["prompts"]
    held_store = ActivationStore(out / "heldout_store")
    assert held_store.fingerprints["prompts"] == prompts_fingerprint(held)
    acts = interp.capture(tiny_sd, held, sites=[SITE])[SITE]
    tok = tiny_sd.tokenize(held)
    keep = token_keep_mask(tok["input_ids"], tok["attention_mask"],
                           tiny_sd.encoders["text"].tokenizer.all_special_ids, "special")
    assert summary["fvu"] == pytest.approx(evaluate(sae, acts[keep].float())["fvu"], rel=1e-5)
    assert summary["fvu"] != summary["train"]["fvu"]
    assert "held out" in capsys.readouterr().out

    # --eval-store: every prompt trains, the FVU is on the given store
    rc = main(["sae-train", "--model", str(tmp_path / "pipe"), "--prompts", str(tmp_path / "prompts.txt"),
               "--site", SITE, "--out", str(tmp_path / "run2"), "--d-sae", "64", "--k", "8", "--batch-size", "64",
               "--tokens", "640", "--eval-store", str(out / "heldout_store")])
    assert rc == 0
    s2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert s2["eval"].startswith("--eval-store") and "heldout_prompts" not in s2
    assert ActivationStore(tmp_path / "run2" / "store").fingerprints["prompts"] == prompts_fingerprint(PROMPTS)
    assert s2["fvu"] == pytest.approx(evaluate(load_saelens(tmp_path / "run2" / "sae"), held_store)["fvu"], rel=1e-5)
