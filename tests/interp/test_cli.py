"""The interp sub-commands: `demo` writes a report, images and plots; `patch`, `attribution` and
`effect-map` write result folders that load back equal to the Python API's results."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import interp
from circuits.cli import DEBUG_ENV, main
from interp import cli
from interp.demo import run_demo


def test_demo_report(tiny_sd, tmp_path):
    report = run_demo(tmp_path, model=tiny_sd, num_steps=1, k=4)
    text = report.read_text()
    for part in ("## Trace", "## Activation patching", "## Masking", "## Generation", "images.png"):
        assert part in text
    for f in ("images.png", "trace.png", "patching.png", "summary.json"):
        assert (tmp_path / f).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["units"]) == 4 and not set(summary["units"]) & set(summary["random_units"])
    assert summary["mask_shift"]["top-Δ mask"] > 0
    # the patch map shows a real effect: not every site restores the clean output (effect 1)
    effects = [r["effect"] for r in summary["patch"]]
    assert len(effects) == 4 and len({round(e, 6) for e in effects}) > 1
    assert not all(abs(e - 1.0) < 1e-6 for e in effects) and max(abs(e) for e in effects) > 1e-3


def test_demo_is_registered():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", "x", "--family", "sdxl", "--num-steps", "1"])
    assert args.func is cli._demo and args.family == "sdxl" and args.num_steps == 1


# -- patch, attribution, effect-map (issue 21 item 5) -------------------------------------------

CLEAN, CORRUPT = ["a Japanese-style box", "a Thai-style hat"], ["a box", "a hat"]
TEXT_SITES = ["text.blocks.0.hook_attn_out", "text.blocks.1.mlp.hook_post"]
Z = "unet.down.0.attn.0.attn2.hook_z"


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("culturelens: error: ") and "Traceback" not in err, err
    assert needle in err, err


def _same_rows(got: interp.PatchResult, want: interp.PatchResult) -> None:
    assert [r["site"] for r in got.rows] == [r["site"] for r in want.rows]
    assert [(r["step"], r["head"], r["position"]) for r in got.rows] == \
        [(r["step"], r["head"], r["position"]) for r in want.rows]
    for a, b in zip(got.rows, want.rows):
        assert a["value"] == pytest.approx(b["value"], rel=1e-5, abs=1e-7)
        assert a["effect"] == pytest.approx(b["effect"], rel=1e-4, abs=1e-6) or (math.isnan(a["effect"])
                                                                                and math.isnan(b["effect"]))
    assert got.clean_value == pytest.approx(want.clean_value, abs=1e-7)
    assert got.corrupt_value == pytest.approx(want.corrupt_value, rel=1e-5)


def test_patch_text_sites_match_the_api(tiny_sd, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["patch", "--clean", *CLEAN, "--corrupt", *CORRUPT, "--sites", *TEXT_SITES, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'patch.md'}"
    for f in ("patch.json", "patch.safetensors", "patch.md", "patch.png"):
        assert (out / f).stat().st_size > 0
    got = interp.PatchResult.load(out)
    target = interp.encoder_output(tiny_sd, CLEAN)
    want = interp.patch(tiny_sd, CLEAN, CORRUPT, TEXT_SITES, lambda o: -(o - target).pow(2).mean())
    _same_rows(got, want)
    assert got.meta["metric"] == "encoder-distance"
    assert "| text.blocks.0.hook_attn_out |" in (out / "patch.md").read_text()


def test_patch_denoiser_heads_and_steps_match_the_api(tiny_sd, tmp_path):
    out = tmp_path / "d"
    assert main(["patch", "--clean", CLEAN[0], "--corrupt", CORRUPT[0], "--sites", Z, "--heads", "0", "1",
                 "--steps", "each", "--num-steps", "2", "--seed", "3", "--out", str(out)]) == 0
    got = interp.PatchResult.load(out)
    ref = interp.generate(tiny_sd, CLEAN[:1], seed=3, num_steps=2).latents
    want = interp.patch(tiny_sd, CLEAN[:1], CORRUPT[:1], [Z], lambda g: -(g.latents - ref).pow(2).mean(),
                        steps="each", heads=[0, 1], seed=3, num_steps=2)
    _same_rows(got, want)
    assert len(got.rows) == 4 and got.meta["metric"] == "latent-distance" and got.meta["kind"] == "denoiser"
    assert (out / "patch.png").stat().st_size > 0


@pytest.mark.parametrize("argv, needle, code", [
    (["--clean", "a box", "--corrupt", "a hat", "a vase", "--sites", TEXT_SITES[0]],
     "patch: 1 --clean prompts but 2 --corrupt prompts", 1),
    (["--clean", "a box", "--corrupt", "a hat", "--sites", "unet.nowhere.hook_out"],
     "patch: unknown site 'unet.nowhere.hook_out' for this sd model. Text sites: text.blocks.0.", 1),
    (["--clean", "a box", "--corrupt", "a hat", "--sites", TEXT_SITES[0], "--metric", "latent-distance"],
     "use --metric encoder-distance", 1),
    (["--clean", "a box", "--corrupt", "a hat", "--sites", Z, "--heads", "first"],
     "patch: --heads ['first']: give 'each' or whole numbers", 1),
    (["--clean", "a box", "--corrupt", "a hat", "--sites", TEXT_SITES[0], "--branch", "left"],
     "argument --branch: invalid choice", 2),
])
def test_patch_bad_input_is_one_line(argv, needle, code, tmp_path, capsys):
    assert main(["patch", *argv, "--out", str(tmp_path / "o")]) == code
    _one_line_error(capsys, needle)


def test_attribution_matches_the_api(tiny_sd, tmp_path, capsys):
    out = tmp_path / "a"
    prompt, words = "a Japanese-style box", ["Japanese", "box"]
    assert main(["attribution", "--prompt", prompt, "--words", *words, "--seed", "2", "--num-steps", "2",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'attribution.md'}"
    got = interp.AttributionMaps.load(out)
    want = interp.attribution(tiny_sd, prompt, words, seed=2, num_steps=2)
    assert got.words == words and got.tokens == want.tokens
    torch.testing.assert_close(got.raw, want.raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.maps, want.maps, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.image, want.image)
    for f in ("attribution.md", "attribution.png"):
        assert (out / f).stat().st_size > 0


def test_attribution_bad_word_is_one_line(tmp_path, capsys):
    assert main(["attribution", "--prompt", "a box", "--words", "vase", "--out", str(tmp_path / "a")]) == 1
    _one_line_error(capsys, "attribution: no tokens for 'vase' in 'a box'")


def test_effect_map_matches_the_api(tiny_sd, tmp_path, capsys):
    out = tmp_path / "e"
    mlp, xattn = "text.blocks.1.mlp.hook_post", "unet.down.0.attn.0.attn2.hook_out"
    assert main(["effect-map", "--prompt", CLEAN[0], "--mask", f"{mlp}:0-3,9", "--amplify", f"{xattn}:1,2:3",
                 "--num-steps", "2", "--seed", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'effect_map.md'}"
    got = interp.EffectMap.load(out)
    ivs = [interp.Mask(interp.Units(mlp, [0, 1, 2, 3, 9])), interp.Amplify(interp.Units(xattn, [1, 2]), 3.0)]
    want = interp.effect_map(tiny_sd, CLEAN[0], interventions=ivs, seed=1, num_steps=2)
    torch.testing.assert_close(got.per_step, want.per_step, rtol=1e-5, atol=1e-6)
    assert got.per_step.shape[0] == 2 and float(got.total.max()) > 0
    assert torch.equal(got.image, want.image) and torch.equal(got.edited, want.edited)
    assert got.meta["interventions"] == want.meta["interventions"]
    for f in ("effect_map.md", "effect_map.png"):
        assert (out / f).stat().st_size > 0


@pytest.mark.parametrize("argv, needle, code", [
    ([], "effect-map: no interventions given", 1),
    (["--mask", "text.blocks.1.mlp.hook_post"], "argument --mask: expected SITE:UNITS", 2),
    (["--amplify", "text.blocks.1.mlp.hook_post:1,2:x"], "argument --amplify: expected SITE:UNITS:LAM", 2),
    (["--mask", "text.blocks.7.mlp.hook_post:1"],
     "effect-map: site 'text.blocks.7.mlp.hook_post': layer 7 out of range", 1),
])
def test_effect_map_bad_input_is_one_line(argv, needle, code, tmp_path, capsys):
    assert main(["effect-map", "--prompt", "a box", *argv, "--out", str(tmp_path / "e")]) == code
    _one_line_error(capsys, needle)


def test_patch_with_a_model_folder(tiny_sd, tmp_path):
    folder = tmp_path / "pipe"
    tiny_sd.save_pretrained(folder)
    out = tmp_path / "p"
    assert main(["patch", "--model", str(folder), "--clean", *CLEAN, "--corrupt", *CORRUPT,
                 "--sites", TEXT_SITES[1], "--positions", "0", "1", "--out", str(out)]) == 1  # unequal token lengths
    clean, corrupt = ["a red box"], ["a big box"]  # equal token lengths
    assert main(["patch", "--model", str(folder), "--clean", *clean, "--corrupt", *corrupt,
                 "--sites", TEXT_SITES[1], "--positions", "0", "1", "--out", str(out)]) == 0
    model = interp.load(folder)
    target = interp.encoder_output(model, clean)
    want = interp.patch(model, clean, corrupt, [TEXT_SITES[1]], lambda o: -(o - target).pow(2).mean(), positions=[0, 1])
    _same_rows(interp.PatchResult.load(out), want)


def test_method_commands_are_registered():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["effect-map", "--prompt", "p", "--out", "x", "--mask", "s.a:1,3-4",
                              "--amplify", "s.b:2:0.5"])
    assert args.func is cli._effect_map_cmd and args.mask == [("s.a", [1, 3, 4])]
    assert args.amplify == [("s.b", [2], 0.5)]
    args = parser.parse_args(["patch", "--clean", "a", "--corrupt", "b", "--sites", "s", "--out", "x",
                              "--family", "sd3"])
    assert args.func is cli._patch_cmd and args.branch == "both" and args.metric is None and args.family == "sd3"
