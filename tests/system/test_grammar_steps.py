"""One argument grammar for "steps" (issue 21 item 3, culturelens 0.2.0): `num_steps` is a
denoising-step count, `steps` only ever lists step indices, `train_steps` counts training
iterations. Every public function that took a count as `steps=` takes the new name, and the old
`steps=<int>` is refused with an error naming it (also where `**kwargs` would have carried it on
to the diffusers pipeline); index lists keep working where `steps` means indices."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

import circuits
import interp
from circuits.analysis.real_encoder import fit_probe
from circuits.causal.specificity import specificity_matrix
from circuits.cli import main
from circuits.evaluate import score
from circuits.organism import build as organism_build
from circuits.organism import evaluate as organism_evaluate
from circuits.organism.judge import train_judge
from circuits.pairs import as_pairs, by_concept
from circuits.realsize import run as realsize_run
from circuits.runner import RunConfig, evaluate_enhancer
from interp.demo import run_demo
from interp.methods.generation import pipeline_kwargs
from sae.browser import steering_previews
from colour import PAIRS_BOX_HAT as PAIRS, colour_judge


#: Every public function whose denoising count was `steps` before 0.2.0.
DENOISING_COUNT = [
    interp.generate, interp.capture_generation, pipeline_kwargs, run_demo, score, circuits.validate_units,
    circuits.lambda_sweep, specificity_matrix, circuits.causal_sweep, evaluate_enhancer, realsize_run,
    organism_evaluate.generate, organism_evaluate.evaluate_organism, steering_previews,
]
#: Every public function whose training-iteration count was `steps` before 0.2.0.
TRAINING_COUNT = [circuits.train_enhancer, train_judge, organism_build.build, fit_probe]


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _takes(fn, name: str) -> bool:
    """`fn` takes `name` as a keyword, or as a field of its settings object (culturelens 0.2.0:
    `settings=circuits.ScoreSettings(num_steps=...)`, `cfg=circuits.EnhancerConfig(train_steps=...)`)."""
    params = inspect.signature(fn).parameters
    if name in params:
        return True
    holder = {"settings": circuits.ScoreSettings, "cfg": circuits.EnhancerConfig}
    return any(p in params and name in {f.name for f in dataclasses.fields(c)} for p, c in holder.items())


@pytest.mark.parametrize("fn", DENOISING_COUNT, ids=_name)
def test_denoising_count_is_num_steps(fn) -> None:
    params = inspect.signature(fn).parameters
    assert _takes(fn, "num_steps") and "steps" not in params
    # Refused before anything runs (so no model is needed), naming the new keyword and the function.
    with pytest.raises(interp.RenamedArgumentError, match=rf"{fn.__qualname__}: steps= was renamed num_steps="):
        fn(None, None, steps=4)
    with pytest.raises(TypeError, match="num_steps="):  # a TypeError too, as Python's own would be
        fn(None, None, steps=4)


@pytest.mark.parametrize("fn", TRAINING_COUNT, ids=_name)
def test_training_count_is_train_steps(fn) -> None:
    params = inspect.signature(fn).parameters
    assert _takes(fn, "train_steps") and "steps" not in params
    with pytest.raises(interp.RenamedArgumentError, match=rf"{fn.__qualname__}: steps= was renamed train_steps="):
        fn(steps=4)


def test_generate_num_steps_and_step_indices(tiny_sd) -> None:
    one = interp.generate(tiny_sd, "a box", seed=0, num_steps=1)
    two = interp.generate(tiny_sd, "a box", seed=0, num_steps=2)
    default = interp.generate(tiny_sd, "a box", seed=0)
    assert tiny_sd.defaults["steps"] == 2  # the model default's key keeps its on-disk name
    assert torch.equal(two.latents, default.latents) and not torch.equal(one.latents, two.latents)
    positional = interp.generate(tiny_sd, "a box", 0, 1)  # the count is still the 4th positional
    assert torch.equal(positional.latents, one.latents)
    # steps= as indices, on an intervention: a Mask at step 0 only changes the image
    mask = interp.Mask(interp.Units("unet.up.1.attn.0.attn2.hook_out", list(range(8))), steps=[0])
    masked = interp.generate(tiny_sd, "a box", seed=0, num_steps=2, interventions=[mask])
    assert not torch.equal(masked.latents, two.latents)
    late = interp.Mask(interp.Units("unet.up.1.attn.0.attn2.hook_out", list(range(8))), steps=[5])
    with pytest.raises(interp.CultureLensError, match=r"steps \[5\] out of range; this run has 2 denoising steps"):
        interp.generate(tiny_sd, "a box", num_steps=2, interventions=[late])


def test_generate_refuses_the_old_and_the_pipeline_names(tiny_sd) -> None:
    # `generate` forwards **pipe_kwargs to the diffusers pipeline, which would ignore steps=.
    for value in (4, [0, 1]):
        with pytest.raises(interp.RenamedArgumentError, match=r"generate: steps= was renamed num_steps=.*Mask"):
            interp.generate(tiny_sd, "a box", steps=value)
    with pytest.raises(interp.RenamedArgumentError, match="num_steps=, not the pipeline's num_inference_steps=3"):
        interp.generate(tiny_sd, "a box", num_inference_steps=3)
    with pytest.raises(interp.RenamedArgumentError, match="capture_generation: steps= was renamed num_steps="):
        interp.capture_generation(tiny_sd, "a box", ["unet.mid.0.attn.0.attn2.hook_out"], steps=2)
    assert pipeline_kwargs(tiny_sd, ["a box"], 0, num_steps=3, guidance=None)["num_inference_steps"] == 3
    with pytest.raises(interp.CultureLensError, match=r"generate: num_steps \(the number of denoising steps\)"):
        interp.generate(tiny_sd, "a box", num_steps=0)


def test_capture_generation_num_steps(tiny_sd) -> None:
    site = "unet.mid.0.attn.0.attn2.hook_out"
    g = interp.capture_generation(tiny_sd, ["a box"], [site], seed=0, num_steps=3)
    assert g.acts[site].shape[0] == 3


@pytest.fixture()
def counted(monkeypatch):
    """`interp.generate` replaced by a stand-in that records each call's num_steps and returns
    flat images: the circuits functions are checked to pass their count on, without denoising."""
    seen: list = []

    def fake_generate(model, prompts, seed=0, num_steps=None, guidance=None, **kw):
        seen.append(num_steps)
        n = len(prompts)
        return interp.Generation([Image.new("RGB", (16, 16), (40 * i % 255, 90, 160)) for i in range(n)],
                                 torch.zeros(n, 4, 2, 2))

    monkeypatch.setattr(interp, "generate", fake_generate)
    return seen


def test_circuits_pass_num_steps_on(text_model, units, counted) -> None:
    groups = by_concept(as_pairs(PAIRS))
    st = circuits.ScoreSettings(num_steps=3, n_boot=20)
    score(text_model, groups, colour_judge, settings=st)
    circuits.validate_units(text_model, units, PAIRS, colour_judge, n_random=1, settings=st, progress=False)
    circuits.lambda_sweep(text_model, units, PAIRS, colour_judge, lams=[0.0, 2.0], n_random=1, settings=st,
                          progress=False)
    specificity_matrix(text_model, units, PAIRS, colour_judge, settings=st, progress=False)
    circuits.causal_sweep(text_model, PAIRS, PAIRS, colour_judge, n_units=1, layers=[1], settings=st,
                          allow_overlap=True, progress=False)
    evaluate_enhancer(text_model, None, PAIRS, colour_judge, settings=st)
    assert counted and set(counted) == {3}


def test_run_config_num_steps() -> None:
    assert RunConfig(num_steps=3).num_steps == 3 and RunConfig.quick(num_steps=3).num_steps == 3
    with pytest.raises(TypeError, match="steps"):
        RunConfig(steps=3)


def test_train_enhancer_train_steps_and_its_record(text_model, tmp_path) -> None:
    g = np.random.default_rng(0)
    data = [("a box", Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)))]
    run = circuits.train_enhancer(text_model, data, layer=0, out=tmp_path / "e",
                                  cfg=circuits.EnhancerConfig(train_steps=2, lr=1e-3), progress=False)
    assert run.train_steps == 2 and len(run.losses) == 2
    # on disk the count keeps its pre-0.2.0 key "steps" (enhancer.json, enhancer_run.json)
    assert json.loads((tmp_path / "e" / "enhancer.json").read_text())["steps"] == 2
    run.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "enhancer_run.json").read_text())["steps"] == 2
    assert circuits.EnhancerRun.load(tmp_path / "r").train_steps == 2


def test_fit_probe_train_steps() -> None:
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    mu, sd, W, b = fit_probe(x, y, 2, train_steps=5)
    assert W.shape == (3, 2) and torch.isfinite(W).all()


@pytest.mark.parametrize("argv, new", [
    (["demo", "--out", "x", "--steps", "1"], "--num-steps"),
    (["validate-units", "--model", "tiny:sd", "--out", "x", "--judge", "j", "--units", "u", "--steps", "2"],
     "--num-steps"),
    (["circuits", "--model", "tiny:sd", "--out", "x", "--judge", "j", "--steps", "2"], "--num-steps"),
    (["train-enhancer", "--model", "tiny:sd", "--out", "x", "--layer", "0", "--steps", "2"], "--num-steps"),
    (["organism-build", "--out", "x", "--steps", "5"], "--train-steps"),
])
def test_cli_old_steps_flag_names_the_new_one(argv, new, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("culturelens: error: ") and f"--steps was renamed {new}" in err and err.count("\n") == 1


def test_cli_steps_still_lists_indices(tiny_sd, tmp_path) -> None:
    """`--steps I...` of patch / attribution / effect-map are indices, as before."""
    out = tmp_path / "attr"
    assert main(["attribution", "--prompt", "a red box", "--words", "red", "--steps", "0", "--num-steps", "2",
                 "--out", str(out)]) == 0
    maps = interp.AttributionMaps.load(out)
    assert maps.meta["steps"] == [0] and maps.meta["num_steps"] == 2


def test_attribution_steps_are_indices_and_a_lone_int_is_refused(tiny_sd) -> None:
    maps = interp.attribution(tiny_sd, "a red box", ["red"], steps=[1], num_steps=2)
    assert maps.meta["steps"] == [1] and maps.meta["num_steps"] == 2
    with pytest.raises(interp.CultureLensError, match=r"attribution: steps .*the count is num_steps.*pass \[4\]"):
        interp.attribution(tiny_sd, "a red box", ["red"], steps=4)
