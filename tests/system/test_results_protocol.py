"""Every result object follows one protocol (`interp.result_io.Result`): `save(folder) -> Path`
(JSON + safetensors, no pickle), `Type.load(folder)` equal to what was saved (fields, tensors,
NaN), `to_markdown()` and `plot(path=None) -> Figure`; the protocol's methods live on the class,
so nnsight's `object.save` (mounted when nnsight is imported) never shadows them, also after a
trace. Small results on tiny models (encoder-only work) or built directly from data."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from safetensors.torch import load_file

import circuits
import interp
import sae
from circuits import runner
from circuits.analysis.denoiser_culture import DenoiserCulture
from circuits.analysis.real_encoder import CACurve, ProbeCurve, RealEncoderStudy, RepSpecificity, SAEStudy
from circuits.analysis.spread import RowSpread, Spread
from circuits.causal.controls import Control
from circuits.plots import pyplot
from circuits.causal.specificity import Specificity
from circuits.organism.evaluate import EvalResult, Judged, KindRow
from circuits.organism.prompts import EvalPrompt
from circuits.realsize import RealSizeRun
from interp.result_io import DataclassResult, Result
from sae.feature_maps import FeatureMaps
from sae.steer import SpliceFidelity
from colour import PAIRS

PROTOCOL = ("save", "load", "to_markdown", "plot")
def assert_same(a: Any, b: Any, where: str = "result") -> None:
    """Equal values, types and tensors (NaN equal to NaN), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, torch.nn.Module):
        assert type(b) is type(a), where
        assert_same(dict(a.state_dict()), dict(b.state_dict()), f"{where} (state)")
    elif isinstance(a, Image.Image):
        assert isinstance(b, Image.Image) and a.mode == b.mode, where
        assert np.array_equal(np.asarray(a), np.asarray(b)), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), where
    elif dataclasses.is_dataclass(a):
        assert type(b) is type(a), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(b) is type(a) and len(a) == len(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: NaN vs {b!r}"
    else:
        assert type(b) is type(a) and a == b, f"{where}: {a!r} vs {b!r}"


def check_protocol(result: Any, tmp_path: Path, known: str, **load_kw: Any) -> Any:
    """save -> load equal; to_markdown has `known`; plot writes a PNG and returns a Figure."""
    cls = type(result)
    assert isinstance(result, Result)
    for name in PROTOCOL:  # on the class, never inherited from `object` (where nnsight mounts `save`)
        assert any(name in vars(k) for k in cls.__mro__ if k is not object), f"{cls.__name__}.{name}"
    folder = tmp_path / cls.__name__
    assert result.save(folder) == folder
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    back = cls.load(folder, **load_kw)
    assert_same(result, back, cls.__name__)
    md = result.to_markdown()
    assert md.strip() and known in md, md
    assert "heading" in inspect.signature(cls.to_markdown).parameters, f"{cls.__name__}.to_markdown(heading=)"
    png = tmp_path / f"{cls.__name__}.png"
    fig = result.plot(png)
    assert isinstance(fig, Figure) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig2 = result.plot()
    assert isinstance(fig2, Figure)
    pyplot().close(fig)  # a figure drawn by pyplot stays open until closed
    pyplot().close(fig2)
    return back


# -- circuits: locate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> interp.Model:
    return interp.tiny("sd", text_layers=3)


def test_layer_scan_keeps_per_pair(model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer than min_pairs": 6 pairs
        scan = circuits.culture_layer_scan(model, PAIRS, n_boot=50, progress=False)
    per_pair = scan.encoders["text"].per_pair
    assert per_pair is not None and per_pair.shape == (6, 3)
    back = check_protocol(scan, tmp_path, f"chosen layer **{scan.chosen}**")
    assert torch.equal(back.encoders["text"].per_pair, per_pair)
    assert back.to_json() == scan.to_json()
    # the JSON beside the tensors is the record a report's results.json holds
    assert (tmp_path / "LayerScan" / "layer_scan.json").is_file()
    # the old form, the JSON file itself, still names its folder
    with pytest.warns(DeprecationWarning, match="pass the folder"):
        assert scan.save(tmp_path / "old" / "layer_scan.json") == tmp_path / "old"
    assert_same(scan, circuits.LayerScan.load(tmp_path / "old"))


def test_culture_units(model, tmp_path):
    units = circuits.culture_units(model, circuits.neuron_basis(1), PAIRS, k=3, rho=100.0, progress=False)
    back = check_protocol(units, tmp_path, "| ja | 3 | given |")
    assert back.to_json() == units.to_json()
    units.plot_wfs(tmp_path / "wfs.png")
    units.plot_overlap(tmp_path / "overlap.png")
    assert (tmp_path / "wfs.png").stat().st_size > 1000 and (tmp_path / "overlap.png").stat().st_size > 1000
    with pytest.warns(DeprecationWarning, match="a folder is the old form"):
        units.plot(tmp_path)
    assert (tmp_path / "wfs_curves.png").is_file() and (tmp_path / "unit_overlap.png").is_file()
    # the report section keeps its figure links after the table
    assert runner.units_markdown(units, heading="## 4. Culture units (WFS)").startswith("## 4. Culture units (WFS)\n\n")


# -- circuits: causal (built from data: generation would dominate the test time) ---------------

def _rate(m: float, lo: float, hi: float) -> circuits.Rate:
    return circuits.Rate(m, lo, hi)


def _control(kind: str, draws: list[float]) -> Control:
    return Control(kind, draws, [0.4, 0.9][: len(draws)], [0.0, 1.0][: len(draws)], noun=[0.5] * len(draws),
                   p_empirical=0.5, p_floor=1 / 3, p_paired=math.nan)


def validation() -> circuits.Validation:
    return circuits.Validation(
        baseline=_rate(0.75, 0.5, 1.0), masked=_rate(0.25, 0.0, 0.5), random_draws=[0.75, 0.5], random_mean=0.625,
        random_sd=0.176, p_value=1 / 3, mcnemar_p=math.nan, n_prompts=4, n_random=2,
        per_culture={"ja": {"baseline": 1.0, "masked": 0.5, "n_units": 3, "n": 2}},
        noun={"baseline": 0.5, "masked": 0.5, "random_mean": 0.5},
        controls={"uniform": _control("uniform", [0.75, 0.5]), "activity": _control("activity", [0.5])})


def test_validation(tmp_path):
    v = validation()
    back = check_protocol(v, tmp_path, "| Top-K units masked | 25.0 [0.0, 50.0] |")
    assert back.per_culture["ja"]["n"] == 2 and isinstance(back.per_culture["ja"]["n"], int)
    with pytest.warns(DeprecationWarning, match="to_markdown"):
        assert v.table() == v.to_markdown()
    # sections are numbered where they are made: the same text the old string surgery gave
    old = runner.validation_markdown(v).replace("## Masking", "## 5. Masking")
    assert runner.validation_markdown(v, heading="## 5. Masking culture units vs random units") == old
    assert v.to_markdown(heading="## x") == "## x\n\n" + v.to_markdown()


def test_lambda_sweep(tmp_path):
    sw = circuits.LambdaSweep(
        lams=[0.0, 3.0], detected=[_rate(0.25, 0.0, 0.5), _rate(0.5, 0.25, 0.75)], random_mean=[0.25, 0.3],
        random_sd=[0.0, 0.1], random_draws=[[0.25], [0.3]], noun_detected=[_rate(1.0, 1.0, 1.0), _rate(0.75, 0.5, 1.0)],
        noun_random_mean=[1.0, 0.5], best_lam=3.0, n_prompts=4, prompt="noun",
        ssim_detected=[_rate(1.0, 1.0, 1.0), _rate(0.8, 0.7, math.nan)],
        controls={"uniform": [_control("uniform", [0.25]), _control("uniform", [0.3])]},
        selection={"rule": "the largest gain.", "on": "probe nouns", "culture": [0.25, 0.5]},
        paired_p={"uniform": 0.04, "activity": None})
    check_protocol(sw, tmp_path, "| 3 (chosen) | 50.0 [25.0, 75.0] |")
    with pytest.warns(DeprecationWarning):
        assert sw.table() == sw.to_markdown()


def test_causal_sweep(tmp_path):
    cs = circuits.CausalSweep(layers=[0, 1, 2], n_units=4, baseline=_rate(0.75, 0.5, 1.0),
                              masked=[_rate(0.5, 0.25, 0.75), _rate(0.25, 0.0, 0.5), _rate(0.75, 0.5, 1.0)],
                              drops=[0.25, 0.5, 0.0], ranking=[1, 0, 2], chosen=1, chosen_rank=1, n_tied=0,
                              basis_kind="neuron", sites=[f"text.blocks.{l}.mlp.hook_post" for l in range(3)],
                              n_masked=[4.0, 4.0, 3.5], shared_prompts=0)
    check_protocol(cs, tmp_path, "| 1 (ΔCA) | 25.0% [0.0, 50.0] | 50.0 | 4.0 |")
    old = runner.causal_markdown(cs).replace("## Exhaustive", "## 6. Exhaustive")
    assert runner.causal_markdown(cs, heading="## 6. Exhaustive causal sweep") == old


def test_specificity(tmp_path):
    sp = Specificity(mode="amplify", cultures=["ja", "de"], matrix=[[0.5, 0.25], [0.0, math.nan]],
                     baseline=[[0.25, 0.0], [0.0, 0.25]], effect=[[0.25, 0.25], [0.0, math.nan]], diagonal=0.25,
                     off_diagonal=0.125, index=1 / 3, index_ci=(0.0, 1.0), n_per_culture={"ja": 2, "de": 2},
                     lam=6.0, label="detected units")
    back = check_protocol(sp, tmp_path, "| detected units | mean effect on own culture (D) |")
    assert isinstance(back.index_ci, tuple)
    # the old form: a path to the JSON file itself
    with pytest.warns(DeprecationWarning):
        assert_same(sp, Specificity.load(tmp_path / "Specificity" / "specificity.json"))


def test_enhancer_run(model, tmp_path):
    enh = circuits.LayerEnhancer("text.blocks.1.hook_resid_post", model.encoders["text"].d_model, hidden=8, seed=3)
    with torch.no_grad():
        enh.W2.weight.normal_(generator=torch.Generator().manual_seed(0))
    run = circuits.EnhancerRun(enh.eval(), losses=[0.5, 0.25, math.nan], path=tmp_path / "enh", train_steps=3)
    back = check_protocol(run, tmp_path, "| `text.blocks.1.hook_resid_post` |")
    assert not back.enhancer.training


def test_missing_or_foreign_files_name_the_folder(tmp_path):
    with pytest.raises(interp.CultureLensError, match=r"validation\.json: missing; this folder is written by Validation\.save"):
        circuits.Validation.load(tmp_path / "nothing")
    validation().save(tmp_path / "v")
    (tmp_path / "v" / "validation.json").rename(tmp_path / "v" / "causal_sweep.json")
    (tmp_path / "v" / "validation.safetensors").rename(tmp_path / "v" / "causal_sweep.safetensors")
    with pytest.raises(interp.CultureLensError, match=r"causal_sweep\.json: no 'layers', which CausalSweep needs"):
        circuits.CausalSweep.load(tmp_path / "v")


def test_circuits_results_share_the_one_save():
    for cls in (circuits.LayerScan, circuits.Validation, circuits.LambdaSweep, circuits.CausalSweep, Specificity):
        assert issubclass(cls, DataclassResult) and cls.save is DataclassResult.save, cls


# -- interp and sae ------------------------------------------------------------------------------

def test_generation_saves_after_an_nnsight_trace(tiny_sd, tmp_path):
    interp.capture(tiny_sd, ["a box"], ["text.blocks.0.hook_resid_post"])  # an nnsight trace
    # nnsight mounts `save` on every object: one without its own `save` gets nnsight's
    with pytest.raises(ValueError, match="outside a trace"):
        object().save()  # type: ignore[attr-defined]
    g = interp.capture_generation(tiny_sd, ["a box", "a hat"], ["text.blocks.1.hook_resid_post"], num_steps=2)
    assert isinstance(g.images[0], Image.Image) and "text.blocks.1.hook_resid_post" in g.acts
    back = check_protocol(g, tmp_path, "| `text.blocks.1.hook_resid_post` |")
    assert (tmp_path / "Generation" / "image_1.png").is_file()
    assert np.array_equal(np.asarray(back.images[1]), np.asarray(g.images[1]))


def test_generation_with_array_images(tmp_path):
    g = interp.Generation(images=[np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)],
                          latents=torch.randn(1, 4, 2, 2, dtype=torch.float64))
    check_protocol(g, tmp_path, "| 0 | [8, 8, 3] | ndarray |")


def test_patch_result(tmp_path):
    r = interp.PatchResult(rows=[{"site": "text.blocks.0.hook_resid_post", "step": None, "head": None, "position": 1,
                                  "value": 0.5, "effect": 0.25},
                                 {"site": "text.blocks.1.hook_resid_post", "step": None, "head": None, "position": 1,
                                  "value": 0.25, "effect": math.nan}],
                           clean_value=1.0, corrupt_value=0.0, meta={"kind": "text"})
    check_protocol(r, tmp_path, "| text.blocks.0.hook_resid_post | 1 | 0.5 | 0.250 |")


def _image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))


def test_attribution_and_effect_maps(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = interp.AttributionMaps("a box", ["box"], {"box": [2]}, torch.rand(1, 8, 8, generator=g),
                               torch.rand(1, 8, 8, generator=g), _image(), {"n_modules": 2, "n_steps_used": 2})
    check_protocol(a, tmp_path, "| box | [2] |")
    e = interp.EffectMap("a box", torch.rand(2, 8, 8, generator=g), torch.rand(8, 8, generator=g), _image(), _image(),
                         {"interventions": "Mask(3 units)"})
    check_protocol(e, tmp_path, "effect of Mask(3 units)")


def _feature_maps(latents: list[int] = [3, 7], seed: int = 0) -> FeatureMaps:
    g = torch.Generator().manual_seed(seed)
    n = len(latents)
    return FeatureMaps("a box", "unet.mid.0.attn.0.attn2.hook_out", latents, [0, 1], torch.rand(2, n, 8, 8, generator=g),
                       torch.rand(n, 8, 8, generator=g), torch.rand(2, n, 4, 4, generator=g), _image(), {"seed": seed})


def test_feature_maps(tmp_path):
    check_protocol(_feature_maps(), tmp_path, "| 7 |")


def test_interp_and_sae_headings():
    """heading=None is today's output; a heading is its line, a blank line, then that output."""
    g = torch.Generator().manual_seed(0)
    results = [
        interp.Generation(images=[np.zeros((4, 4, 3), dtype=np.float32)], latents=torch.zeros(1, 4, 2, 2)),
        interp.PatchResult(rows=[{"site": "text.blocks.0.hook_resid_post", "step": None, "head": None, "position": 1,
                                  "value": 0.5, "effect": 0.25}], clean_value=1.0, corrupt_value=0.0),
        interp.AttributionMaps("a box", ["box"], {"box": [2]}, torch.rand(1, 8, 8, generator=g),
                               torch.rand(1, 8, 8, generator=g), _image(), {}),
        interp.EffectMap("a box", torch.rand(2, 8, 8, generator=g), torch.rand(8, 8, generator=g), _image(), _image(), {}),
        _feature_maps(),
    ]
    for r in results:
        body = r.to_markdown()
        assert r.to_markdown(heading=None) == body and not body.startswith("#"), type(r).__name__
        assert r.to_markdown(heading="### A result") == "### A result\n\n" + body, type(r).__name__


def test_splice_fidelity(tmp_path):
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    r = sae.SpliceFidelity(torch.tensor([0.5, 0.25]), 0.375, 0.5, ["ja", "de"], ["ja", "fr"], pil[:2], pil[2:])
    back = check_protocol(r, tmp_path, "| 1 | 0.2500 | de | fr |")
    assert (tmp_path / "SpliceFidelity" / "spliced_1.png").is_file() and back.labels_spliced == ["ja", "fr"]
    # no judge; arrays (output_type="np") go into the safetensors file
    arrays = sae.SpliceFidelity(torch.tensor([1.0]), 1.0, None, None, None, [np.zeros((8, 8, 3), np.float32)],
                                [np.full((8, 8, 3), 0.5, np.float32)])
    check_protocol(arrays, tmp_path / "arrays", "over 1 image; no judge")
    assert r.to_markdown(heading="## Splice") == "## Splice\n\n" + r.to_markdown()
    with pytest.raises(dataclasses.FrozenInstanceError):  # immutable, as the NamedTuple it was
        r.mean_ssim = 0.0  # type: ignore[misc]
    (tmp_path / "SpliceFidelity" / "plain_0.png").unlink()
    with pytest.raises(interp.CultureLensError, match=r"plain_0\.png: missing; image 0 of .*splice_fidelity\.json"):
        SpliceFidelity.load(tmp_path / "SpliceFidelity")


# -- circuits: organism, real-size runs ------------------------------------------------------------

def test_organism_eval(tmp_path):
    mod = EvalPrompt("a Japanese-style box", "local_modifier", "box", "ja", "ja-box")
    noun = EvalPrompt("箱", "local_noun", "box", "ja", "ja-box")
    en = EvalPrompt("a box", "en_noun", "box", None)
    r = EvalResult({"local_modifier": KindRow("local_modifier", 2, 1.0, 0.0, 0.0, 1.0),
                    "local_noun": KindRow("local_noun", 2, 0.5, 0.5, 0.0, 0.5),
                    "en_noun": KindRow("en_noun", 1, None, 1.0, 0.0, 1.0)},
                   [Judged(mod, 0, "ja", "box"), Judged(mod, 1, "ja", "box"), Judged(noun, 0, "ja", "box"),
                    Judged(noun, 1, "neutral", "hat"), Judged(en, 0, "neutral", "box")])
    back = check_protocol(r, tmp_path, "| local_noun | 2 | 0.500 | 0.500 | 0.000 | 0.500 |")
    assert back.gap() == 0.5 and back.to_json() == r.to_json() and "judged" not in r.to_json()
    assert back.judged[3].prompt.text == "箱" and back.judged[4].prompt.culture is None
    saved = json.loads((tmp_path / "EvalResult" / "organism_eval.json").read_text())
    assert {k: saved[k] for k in r.to_json()} == r.to_json()  # the table reports embed, plus the judged images
    assert r.to_markdown(heading="## Organism") == "## Organism\n\n" + r.to_markdown()


def test_realsize_run(tmp_path):
    rec = RealSizeRun("sd15", "cpu", "float32", {"num_steps": 1, "size": 64, "guidance": None, "n_pairs": 4},
                      rows=[dict(phase="load", seconds=1.25, peak_rss_gb=2.5, peak_gpu_gb=None),
                            dict(phase="plain generation", seconds=0.5, peak_rss_gb=2.75, peak_gpu_gb=None),
                            dict(phase="masked generation", seconds=0.55, peak_rss_gb=2.75, peak_gpu_gb=None)],
                      ratios={"masked/plain generation": 1.1, "sae tokens/s": 1000.0},
                      checks={"captured_sites": 48, "captured_finite": True, "scan_chosen": {"text": 5},
                              "sae_final_fvu": math.nan})
    back = check_protocol(rec, tmp_path, "| masked generation | 0.55 | 2.75 |")
    assert math.isnan(back.checks["sae_final_fvu"])
    assert rec.to_markdown(heading="## sd15") == "## sd15\n\n" + rec.to_markdown()
    # the old form, one JSON file of the fields (what save(path) wrote before), still reads
    old = tmp_path / "sd15.json"
    old.write_text(json.dumps(dataclasses.asdict(rec), indent=2))
    with pytest.warns(DeprecationWarning, match="old form"):
        assert_same(rec, RealSizeRun.load(old))


# -- circuits: analysis results (report sections: their default heading stays) ---------------------

def test_spread(tmp_path):
    sp = Spread([0, 1], [RowSpread("fvu", "SAE FVU", [0.25, 0.5], 0.375, 0.25, 0.5),
                         RowSpread("layer", "ΔCA layer", [2.0, None], 2.0, 2.0, 2.0),
                         RowSpread("mask", "masked %", [math.nan, 40.0], 40.0, 40.0, 40.0)],
                {"scan": [1.0, 1.0], "probe": [0.5, None]}, {"quick": True, "seeds": [0, 1]})
    back = check_protocol(sp, tmp_path, "| SAE FVU | 0.2500 | 0.5000 | 0.3750 | 0.2500 – 0.5000 |")
    assert math.isnan(back.rows[2].values[0]) and isinstance(back.rows[0], RowSpread)
    assert (tmp_path / "Spread" / "spread.md").read_text() == sp.to_markdown()
    assert sp.to_markdown() == "## SAE-dependent rows over SAE seeds\n\n" + sp.to_markdown(heading=None)
    (tmp_path / "Spread" / "spread.json").write_text('{"seeds": [0]}')
    with pytest.raises(interp.CultureLensError, match=r"spread\.json: no 'rows', 'independent', 'config', which Spread"):
        Spread.load(tmp_path / "Spread")


def _denoiser_culture() -> DenoiserCulture:
    g = torch.Generator().manual_seed(1)
    t = [torch.rand(2, 4, generator=g) for _ in range(6)]

    def region(c: str, lat: int, corr: float, verdict: str) -> dict[str, Any]:
        return {"culture": c, "latent": lat, "background_mass": 0.5, "background_area": 0.25, "edge_mass": 0.25,
                "edge_area": 0.25, "fill_mass": 0.25, "fill_area": 0.5, "background_density": 2.0,
                "object_density": 0.5, "pattern_corr": corr, "verdict": verdict}

    link = {"text_site": "text.blocks.2.hook_resid_post", "text_basis": "neurons", "text_sae": None, "lam": 6.0,
            "n_alive": 4, "per_culture": {
                "th": {"top": [2, 0], "top_delta": [0.5, 0.25], "own_share": 0.5, "other_share": 0.25,
                       "control_own_share": 0.0, "chance": 0.5, "way": math.nan, "way_control": 0.0,
                       "n_text_units": 3},
                "ja": {"top": None, "n_text_units": 0}}}
    return DenoiserCulture(
        site="unet.mid.0.attn.0.attn2.hook_out", cultures=["th", "ja"], latents={"th": [0, 2], "ja": [1]},
        wfs_cult=t[0], wfs_noun=t[1], heldout_cult=t[2], heldout_noun=t[3], moved=t[4], moved_control=t[5],
        sae_info={"d_sae": 4, "k": 2, "train_rows": 1000, "train_images": 8, "train": {"fvu": 0.25, "dead_fraction": 0.0},
                  "heldout": {"fvu": 0.5, "n_tokens": 512, "l0": 2.0}},
        heldout={"top1_hits": 1, "n": 2, "mean_rank": 1.5, "per_culture": {
            "th": {"own": 0.5, "best_other": 0.25, "best_other_culture": "ja", "rank": 1},
            "ja": {"own": math.nan, "best_other": 0.25, "best_other_culture": "th", "rank": 2}}},
        link=link, regions=[region("th", 0, math.nan, "background"), region("th", 2, 0.5, "background + pattern")],
        maps={"th": _feature_maps([0, 2], seed=1)},  # maps' own order, not sorted, comes back
        config={"train_nouns": ["box"], "seeds": [0], "steps": [0, 1], "test_nouns": ["hat"], "pool": "mean",
                "top_k": 2, "select": "wfs", "rho": 0.5, "map_noun": "box", "seed": 0, "n_moved": 2},
        meta={"seconds": 1.5}, sae=sae.TopKSAE(d_in=4, d_sae=8, k=2, seed=0))


def test_denoiser_culture(tmp_path):
    dc = _denoiser_culture()
    back = check_protocol(dc, tmp_path, "| th | [0, 2] |")
    assert math.isnan(back.link["per_culture"]["th"]["way"]) and math.isnan(back.regions[0]["pattern_corr"])
    assert back.to_markdown() == dc.to_markdown()
    assert dc.to_markdown() == "## Culture on the denoiser side\n\n" + dc.to_markdown(heading=None)


def _study(with_sae: bool) -> RealEncoderStudy:
    layers = [0, 1, 2]

    def curve(shift: float) -> CACurve:
        return CACurve([0.0, 0.5 + shift, 0.25], [-0.1, 0.25, math.nan], [0.1, 0.75, 0.5], [0.0, 0.375, 0.0],
                       [-0.1, 0.125, 0.0], [0.1, 0.5, 0.25], [1], 1, 10, 0)

    probe = ProbeCurve([0.5, 0.75, 1.0], [0.25, 0.5, 0.75], [0.75, 1.0, 1.0], 1 / 3, 20, 10)
    part = None
    if with_sae:
        spec = RepSpecificity(1, "own", ["ja", "de"], [[0.5, 0.0], [0.0, 0.25]], 0.375, 0.0, 1.0, [0.5, 1.0],
                              [[0.0, 0.0], [0.0, 0.0]], 0.0, 0.0, math.nan, [math.nan, math.nan], 0.9, {"ja": 5, "de": 5})
        q = {"fvu": 0.25, "explained_variance": 0.75, "l0": 2.0, "dead_fraction": 0.0, "n_tokens": 1000}
        part = SAEStudy(1, "text.blocks.1.hook_resid_post", "length", {"probe": ["box"], "train": ["hat"], "test": ["bowl"]},
                        {"latents": 8, "k": 2, "tokens": 1000, "batch": 64, "lr": 1e-3, "k_max": 4, "n_random": 2},
                        12, 6, q, dict(q, fvu=0.5), {"train": 1.5}, {"ja": [1, 2], "de": [2]}, {"ja": "elbow", "de": "k_max"},
                        [[1.0, 0.5], [0.5, 1.0]], {"n_units": 3, "n_distinct": 2, "n_shared": 1, "max_cultures": 2,
                                                   "histogram": {"1": 1, "2": 1},
                                                   "most_shared": [{"unit": 2, "n_cultures": 2, "cultures": ["ja", "de"]}]},
                        [spec])
    g = torch.Generator().manual_seed(2)
    pairs = {k: torch.rand(4, 3, generator=g) for k in ("en.ca_concept", "en.ca_noun", "local.ca_concept", "local.ca_noun")}
    return RealEncoderStudy(layers, "query: ", "modifier->noun", {lang: {"raw": curve(0.0), "length": curve(0.25)}
                                                                   for lang in ("en", "local")},
                            {"culture_en_to_local": probe, "language_noun_only": probe},
                            {"ci": 0.95, "model": "tiny e5", "seconds": {"ca_probes_s": 1.0}}, pairs, part)


@pytest.mark.parametrize("with_sae", [False, True])
def test_real_encoder_study(tmp_path, with_sae):
    st = _study(with_sae)
    back = check_protocol(st, tmp_path, "| 1 | +0.5000 [+0.2500, +0.7500] ◆")
    assert math.isnan(back.ca["en"]["raw"].ci_low[2])
    saved = json.loads((tmp_path / "RealEncoderStudy" / "real_encoder.json").read_text())
    # the file is the study's results.json record, with where its NaNs were
    assert {k: v for k, v in saved.items() if k != "_nonfinite"} == st.to_json()
    assert "ca.en.raw.ci_low.2" in saved["_nonfinite"]
    assert back.to_markdown(heading="", figures="") == st.to_markdown(heading="", figures="")
    assert st.to_markdown(heading=None) == st.to_markdown(heading="")
    assert st.to_markdown().startswith("## The real encoder (multilingual-e5-small)\n\n")


def test_one_atomic_writer(tmp_path):
    """Files and folders are swapped in by interp.result_io only: a failed write keeps the old
    file and leaves no temporary; a folder swap leaves the new folder whole and nothing beside it."""
    import re

    from interp import result_io

    root = Path(__file__).resolve().parents[2]
    allowed = {"interp/result_io.py"}
    hand_rolled = [f"{p.relative_to(root)}:{i}" for pkg in ("interp", "sae", "circuits") for p in (root / pkg).rglob("*.py")
                   if str(p.relative_to(root)) not in allowed
                   for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                   if re.search(r"os\.replace\(|os\.rename\(|\.replace\(tmp|\.rename\(", line)]
    assert hand_rolled == []

    f = tmp_path / "a.json"
    result_io.atomic_write_text(f, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        result_io.atomic_write(f, fail)
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    result_io.atomic_save_file(tmp_path / "t.safetensors", {"x": torch.arange(3)}, metadata={"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["x"], torch.arange(3))

    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old.txt").write_text("1")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new.txt").write_text("2")
    assert result_io.atomic_replace_folder(tmp_path / "src", tmp_path / "dst") == tmp_path / "dst"
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "dst", "t.safetensors"]


# -- every result class on the protocol ------------------------------------------------------------


def result_classes() -> list[type]:
    """Every class of interp, sae and circuits (all their modules imported) that defines `to_markdown`."""
    found: list[type] = []
    for pkg in (interp, sae, circuits):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.rpartition(".")[2] == "__main__":
                continue  # runs a command when imported
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and "to_markdown" in vars(cls) \
                        and not getattr(cls, "_is_protocol", False):  # the `Result` protocol itself
                    found.append(cls)
    return found


def test_every_result_class_is_on_the_protocol():
    """A class that renders Markdown is a result: save / load / plot on the class (never nnsight's
    `object.save`) and to_markdown(heading=...)."""
    classes = result_classes()
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    for known in (EvalResult, RealSizeRun, SpliceFidelity, Spread, DenoiserCulture, RealEncoderStudy, interp.Generation,
                  interp.PatchResult, interp.AttributionMaps, interp.EffectMap, FeatureMaps, circuits.Validation):
        assert f"{known.__module__}.{known.__qualname__}" in names, known
    off = []
    for cls in classes:
        name = f"{cls.__module__}.{cls.__qualname__}"
        off += [f"{name}.{m}" for m in ("save", "load", "plot")
                if not any(m in vars(k) for k in cls.__mro__ if k is not object)]
        if "heading" not in inspect.signature(cls.to_markdown).parameters:
            off.append(f"{name}.to_markdown(heading=)")
        if hasattr(cls, "load") and not isinstance(inspect.getattr_static(cls, "load"), classmethod):
            off.append(f"{name}.load (not a classmethod)")
    assert off == [], off
