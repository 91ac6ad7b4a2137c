"""Bad arguments at the Python API boundary (issue 20): every one is a CultureLensError whose
message names the argument and the valid range, never a raw error, a wrap-around or a NaN.

The bad inputs live in tables so they can be counted: `PYTHONPATH=.:tests python tests/system/test_boundary_args.py`
prints how many give a clear error, a misleading one (right class, wrong message), a raw one or
none at all (silent).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import interp
from circuits.io import load_model
from interp import Amplify, Mask, Units
from interp.interventions import OnRows, Replace
from interp.model.sites import parse
from sae import Steer, TopKSAE
from inventory import outcome

TEXT = "text.blocks.0.hook_resid_post"  # tiny sd: d_model 32, 16 tokens
UNET_OUT = "unet.down.0.attn.0.attn1.hook_out"  # [B, 64 pixels, C]
UNET_K2 = "unet.down.0.attn.0.attn2.hook_k"  # [B, 16 text tokens, heads, d_head]
P = ["a Japanese-style box", "和風の箱"]
U = Units(TEXT, [0, 1])
_SAE = TopKSAE(32, 64, 4)

Case = tuple[str, Callable[[Any], Any], str]  # (id, call(ctx), regex the message must match)


class _Steps5:
    """A user's own intervention with `steps=5` (a count where step indices are expected)."""

    site = UNET_OUT
    steps = 5

    def apply(self, act: torch.Tensor) -> torch.Tensor:
        return act


# Constructors: no model needed.
CONSTRUCT: list[Case] = [
    ("units-float", lambda c: Units(TEXT, [1.5, 2]), r"integers.*1\.5"),
    ("units-float-tensor", lambda c: Units(TEXT, torch.tensor([1.0, 2.0])), r"integer indices.*float"),
    ("units-negative", lambda c: Units(TEXT, [-1]), r"negative indices \[-1\]"),
    ("units-negative-alias", lambda c: Units(TEXT, [-1, 31], dim=32), r"negative indices \[-1\]"),
    ("units-bool-mask", lambda c: Units(TEXT, torch.tensor([True, False, True])), r"bool.*nonzero"),
    ("units-bool-list", lambda c: Units(TEXT, [True, False]), r"integers.*True"),
    ("units-string", lambda c: Units(TEXT, "0,1"), r"indices: expected a list of integer"),
    ("units-none", lambda c: Units(TEXT, None), r"indices: expected a list of integer"),
    ("units-dim-zero", lambda c: Units(TEXT, [0], dim=0), r"dim: must be ≥ 1"),
    ("units-dim-float", lambda c: Units(TEXT, [0], dim=32.5), r"dim: expected an integer"),
    ("amplify-nan", lambda c: Amplify(U, lam=math.nan), r"lam: must be finite, got nan"),
    ("amplify-inf", lambda c: Amplify(U, lam=math.inf), r"lam: must be finite, got inf"),
    ("amplify-minus-inf", lambda c: Amplify(U, lam=-math.inf), r"lam: must be finite"),
    ("amplify-nan-tensor", lambda c: Amplify(U, lam=torch.tensor(float("nan"))), r"lam: must be finite"),
    ("amplify-string", lambda c: Amplify(U, lam="2"), r"lam: expected a finite number, got '2'"),
    ("amplify-none", lambda c: Amplify(U, lam=None), r"lam: expected a finite number"),
    ("amplify-bool", lambda c: Amplify(U, lam=True), r"lam: expected a finite number, got True"),
    ("mask-mean-nan", lambda c: Mask(U, mode="mean", mean=[math.nan, 0.0]), r"mean: 1 of its 2 values are NaN"),
    ("mask-mean-wrong-length-dim-known", lambda c: Mask(Units(TEXT, [0, 1], dim=32), mode="mean",
                                                        mean=torch.zeros(5)), r"mean has 5 values; expected 2 .* or 32"),
    ("mask-mean-string", lambda c: Mask(U, mode="mean", mean="abc"), r"mean: expected"),
    ("mask-mean-with-zero-mode", lambda c: Mask(U, mean=torch.zeros(2)), r"mode='mean'"),
    ("steps-int", lambda c: Mask(Units(UNET_OUT, [0]), steps=5), r"steps=: got the integer 5.*\[5\].*range\(5\)"),
    ("steps-negative", lambda c: Mask(Units(UNET_OUT, [0]), steps=[-1]), r"steps= must be non-negative"),
    ("steps-float", lambda c: Mask(Units(UNET_OUT, [0]), steps=[1.5]), r"steps=: indices must be integers.*1\.5"),
    ("steps-bool", lambda c: Amplify(Units(UNET_OUT, [0]), 1.0, steps=[True]), r"steps=: indices must be integers"),
    ("positions-float", lambda c: Amplify(U, 1.0, positions=[1.5]), r"positions=: indices must be integers"),
    ("positions-int", lambda c: Mask(U, positions=3), r"positions=: got the integer 3"),
    ("positions-string", lambda c: Mask(U, positions="3"), r"positions=: expected a list"),
    ("heads-float", lambda c: Mask(Units(UNET_K2, [0]), heads=[0.5]), r"heads=: indices must be integers"),
    ("heads-negative", lambda c: Mask(Units(UNET_K2, [0]), heads=[-1]), r"heads= must be non-negative"),
    ("replace-positions-float", lambda c: Replace(TEXT, torch.zeros(1), positions=[0.5]), r"positions=: indices"),
    ("onrows-row-numbers", lambda c: OnRows(Mask(U), [0, 2]), r"rows= takes one bool per prompt"),
    # sae.Steer: the same rules as interp's interventions
    ("steer-lam-nan", lambda c: Steer(_SAE, TEXT, [0], lam=math.nan), r"Steer\(.*\): lam: must be finite"),
    ("steer-lam-string", lambda c: Steer(_SAE, TEXT, [0], lam="2"), r"lam: expected a finite number, got '2'"),
    ("steer-value-inf", lambda c: Steer(_SAE, TEXT, [0], value=math.inf), r"value: must be finite"),
    ("steer-add-nan", lambda c: Steer(_SAE, TEXT, [0], add=[math.nan]), r"add: must be finite"),
    ("steer-latents-float", lambda c: Steer(_SAE, TEXT, [1.5]), r"latents: indices must be integers.*1\.5"),
    ("steer-latents-negative", lambda c: Steer(_SAE, TEXT, [-1]), r"latents \[-1\] outside 0\.\.63"),
    ("steer-latents-repeat", lambda c: Steer(_SAE, TEXT, [3, 3]), r"latents repeat \[3\]"),
    ("steer-positions-negative", lambda c: Steer(_SAE, TEXT, [0], positions=[-1]), r"positions \[-1\] are negative"),
    ("steer-positions-int", lambda c: Steer(_SAE, TEXT, [0], positions=2), r"positions: got the integer 2"),
    ("steer-steps-int", lambda c: Steer(_SAE, UNET_OUT, [0], steps=5), r"steps: got the integer 5"),
]


def _gen(c: Any, prompts: Any = "a box", **kw: Any) -> Any:
    kw.setdefault("num_steps", 1)
    return interp.generate(c.model, prompts, **kw)


def _cap(c: Any, *ivs: Any, prompts: Any = P) -> Any:
    return interp.capture(c.model, prompts, [TEXT], interventions=list(ivs))


# Calls on a tiny SD model (16 text tokens, 64 pixels at the first UNet block).
CALLS: list[Case] = [
    ("text-position-100", lambda c: _cap(c, Mask(U, positions=[100])),
     r"'text\.blocks\.0\.hook_resid_post'.*positions: \[100\] out of range; valid are -16\.\.15 \(length 16\)"),
    ("text-position-16", lambda c: _cap(c, Amplify(U, 2.0, positions=[16])), r"\[16\] out of range.*length 16"),
    ("text-position-minus-17", lambda c: _cap(c, Mask(U, positions=[-17])), r"\[-17\] out of range.*length 16"),
    ("unet-pixel-position-64", lambda c: _gen(c, interventions=[Amplify(Units(UNET_OUT, [0]), 1.0, positions=[64])]),
     r"unet\.down\.0\.attn\.0\.attn1\.hook_out.*\[64\] out of range.*length 64"),
    ("unet-token-position-16", lambda c: _gen(c, interventions=[Mask(Units(UNET_K2, [0]), positions=[16])]),
     r"attn2\.hook_k.*\[16\] out of range.*length 16"),
    ("mask-mean-wrong-length-at-apply", lambda c: _cap(c, Mask(Units(TEXT, [0, 1]), mode="mean", mean=torch.zeros(5))),
     r"mean has 5 values; expected 2 \(one per unit\) or 32"),
    ("mask-mean-too-long-at-apply", lambda c: _cap(c, Mask(Units(TEXT, [0, 1]), mode="mean", mean=torch.zeros(40))),
     r"mean has 40 values; expected 2 .* or 32"),
    ("units-out-of-range", lambda c: _cap(c, Mask(Units(TEXT, [32]))), r"index \[32\] out of range; valid units are 0\.\.31"),
    ("user-intervention-steps-5", lambda c: _gen(c, interventions=[_Steps5()]), r"steps=: got the integer 5"),
    ("steps-out-of-range", lambda c: _gen(c, interventions=[Mask(Units(UNET_OUT, [0]), steps=[3])]),
     r"steps \[3\] out of range; this run has 1 denoising steps"),
    ("generate-steps-0", lambda c: _gen(c, num_steps=0), r"num_steps \(the number of denoising steps\): must be ≥ 1, got 0"),
    ("generate-steps-minus-1", lambda c: _gen(c, num_steps=-1), r"num_steps .*must be ≥ 1, got -1"),
    ("generate-steps-float", lambda c: _gen(c, num_steps=1.5), r"num_steps .*expected an integer ≥ 1, got 1\.5"),
    ("generate-steps-string", lambda c: _gen(c, num_steps="2"), r"num_steps .*expected an integer ≥ 1, got '2'"),
    ("generate-steps-bool", lambda c: _gen(c, num_steps=True), r"num_steps .*expected an integer ≥ 1, got True"),
    ("generate-guidance-nan", lambda c: _gen(c, guidance=math.nan), r"guidance: must be finite"),
    ("generate-guidance-string", lambda c: _gen(c, guidance="high"), r"guidance: expected a finite number"),
    ("generate-height-0", lambda c: _gen(c, height=0), r"height \(pixels\): must be ≥ 1, got 0"),
    ("generate-height-negative", lambda c: _gen(c, height=-16), r"height .*must be ≥ 1, got -16"),
    ("generate-width-float", lambda c: _gen(c, width=16.5), r"width .*expected an integer"),
    ("generate-seed-float", lambda c: _gen(c, seed=1.5), r"seed must be an integer.*1\.5"),
    ("generate-seed-string", lambda c: _gen(c, seed="0"), r"seed must be an integer"),
    ("generate-seed-list-float", lambda c: _gen(c, ["a box", "a cat"], seed=[0, 1.5]), r"seed 1 of the list is 1\.5"),
    ("generate-prompt-int", lambda c: _gen(c, 5), r"prompts must be a string or a list of strings, got 5"),
    ("generate-prompt-none", lambda c: _gen(c, None), r"prompts must be a string or a list of strings, got None"),
    ("generate-prompt-bytes", lambda c: _gen(c, b"a box"), r"prompts must be a string"),
    ("generate-prompt-list-ints", lambda c: _gen(c, [1, 2]), r"prompt 0 is int 1; prompt 1 is int 2"),
    ("generate-prompt-list-none", lambda c: _gen(c, ["a box", None]), r"prompt 1 is NoneType"),
    ("generate-negative-prompt-ints", lambda c: _gen(c, ["a box"], negative_prompt=[3]),
     r"negative_prompt: prompts must be strings: prompt 0 is int"),
    ("capture-prompt-list-ints", lambda c: _cap(c, prompts=[1, 2]), r"capture: prompts must be strings"),
    ("capture-prompt-dict", lambda c: _cap(c, prompts={"a box": 1}), r"capture: prompts must be a string"),
    ("encoder-output-prompt-int", lambda c: interp.encoder_output(c.model, 7), r"encoder_output: prompts must be"),
    ("tiny-spec-layers-abc", lambda c: load_model("tiny:sd:abc"), r"'tiny:sd:abc'.*'abc'.*(integer ≥|whole number >=) 1"),
    ("tiny-spec-layers-0", lambda c: load_model("tiny:sd:0"), r"'tiny:sd:0'.*'0'.*(integer ≥|whole number >=) 1"),
    ("tiny-spec-extra-part", lambda c: load_model("tiny:sd:2:x"), r"'tiny:sd:2:x'.*tiny:<family>\[:<layers>\]"),
    ("tiny-spec-unknown-family", lambda c: load_model("tiny:nope"), r"unknown family 'nope'"),
    ("tiny-text-layers-0", lambda c: interp.tiny("sd", text_layers=0), r"text_layers: must be ≥ 1, got 0"),
    ("tiny-seed-float", lambda c: interp.tiny("sd", seed=0.5), r"seed must be an integer"),
    ("tiny-dtype-string", lambda c: interp.tiny("sd", dtype="float16"),
     r"dtype='float16'; use one of torch\.float32, torch\.float16, torch\.bfloat16"),
    ("generate-batch-size-0", lambda c: _gen(c, ["a box", "a cat"], batch_size=0),
     r"batch_size \(prompts per pipeline call\): must be ≥ 1, got 0"),
    # Replace errors raised while the model runs (apply time): the value's shape, not its repr
    ("replace-value-wrong-shape-at-apply", lambda c: _cap(c, Replace(TEXT, torch.ones(3, 5))),
     r"Replace at 'text\.blocks\.0\.hook_resid_post': value of shape \(3, 5\) does not fit the activation "
     r"\(2, 16, 32\)"),
    ("replace-position-16-at-apply", lambda c: _cap(c, Replace(TEXT, torch.ones(32), positions=[16])),
     r"Replace\('text\.blocks\.0\.hook_resid_post', positions=.*\[16\] out of range.*length 16"),
    ("replace-per-step-value-at-text-site", lambda c: _cap(c, Replace(TEXT, torch.ones(1, 1, 2, 16, 32))),
     r"a \[T, C, B, \.\.\.\] value \(\(1, 1, 2, 16, 32\)\) needs a denoiser site during generation"),
    ("replace-per-step-value-too-few-steps", lambda c: _gen(c, num_steps=2, interventions=[
        Replace(UNET_OUT, torch.ones(1, 2, 1, 64, parse(c.model, UNET_OUT).dim))]),
     r"value holds 1 steps but this is step 1 \(of 2\)"),
    ("replace-per-step-value-wrong-width", lambda c: _gen(c, interventions=[Replace(UNET_OUT, torch.ones(1, 2, 1, 64, 3))]),
     r"value \(1, 2, 1, 64, 3\) = \[T, C, B, \.\.\.\] does not fit an activation of"),
]


def check(fn: Callable[[], Any], pattern: str) -> None:
    kind, e = outcome(fn, pattern)
    assert kind == "clear", f"{kind}: {type(e).__name__ if e else 'no error'}: {e}"
    assert "tensor(" not in str(e), f"tensor repr in the message: {e}"


@pytest.mark.parametrize("case", CONSTRUCT, ids=[c[0] for c in CONSTRUCT])
def test_bad_constructor_argument(case: Case) -> None:
    _, fn, pattern = case
    check(lambda: fn(None), pattern)


@pytest.mark.parametrize("case", CALLS, ids=[c[0] for c in CALLS])
def test_bad_call_argument(case: Case, tiny_sd: interp.Model) -> None:
    _, fn, pattern = case
    check(lambda: fn(SimpleNamespace(model=tiny_sd)), pattern)


def test_good_arguments_still_work(tiny_sd: interp.Model) -> None:
    """The boundary refuses the bad and keeps the good: in-range and end-counted positions, a
    site-wide mean, numpy indices, tensor lambda, one-index step lists."""
    base = interp.capture(tiny_sd, P, [TEXT])[TEXT]
    got = interp.capture(tiny_sd, P, [TEXT], interventions=[Mask(Units(TEXT, np.array([0, 1])), positions=[15, -1, 0])])[TEXT]
    assert torch.equal(got[:, 1:15], base[:, 1:15]) and torch.all(got[:, [0, 15]][..., [0, 1]] == 0)
    mean = torch.arange(32.0)
    got = interp.capture(tiny_sd, P, [TEXT], interventions=[Mask(Units(TEXT, [3]), mode="mean", mean=mean)])[TEXT]
    assert torch.all(got[..., 3] == 3.0)
    amp = interp.capture(tiny_sd, P, [TEXT], interventions=[Amplify(U, torch.tensor(1.0))])[TEXT]
    torch.testing.assert_close(amp[..., :2], 2 * base[..., :2])
    g = interp.generate(tiny_sd, "a box", num_steps=2, interventions=[Mask(Units(UNET_OUT, [0]), steps=[1])])
    assert len(g.images) == 1


KEYWORD_ONLY_INTERVENTIONS = [interp.generate, interp.capture, interp.capture_generation, interp.encoder_output,
                              interp.effect_map]


def test_interventions_are_keyword_only() -> None:
    """One argument grammar: `interventions=` is never positional (a list in 4th/6th place could
    be taken for sites, seeds or steps)."""
    import inspect

    from circuits.locate.scan import culture_layer_scan
    from circuits.locate.units import culture_units

    for fn in KEYWORD_ONLY_INTERVENTIONS + [culture_units, culture_layer_scan]:
        param = inspect.signature(fn).parameters["interventions"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, fn.__qualname__
    with pytest.raises(TypeError, match="positional"):
        interp.capture(None, P, [TEXT], [Mask(U)])  # refused before the model is touched
    with pytest.raises(TypeError, match="positional"):
        interp.generate(None, P, 0, 1, None, [Mask(U)])


def _inventory() -> Counter:
    ctx = SimpleNamespace(model=interp.tiny("sd", seed=0))
    tally: Counter = Counter()
    for table, needs_model in ((CONSTRUCT, False), (CALLS, True)):
        for name, fn, pattern in table:
            kind, e = outcome(lambda: fn(ctx if needs_model else None), pattern)
            tally[kind] += 1
            if kind != "clear":
                print(f"{kind:10s} {name}: {type(e).__name__ if e else ''} {str(e)[:120]}")
    return tally


if __name__ == "__main__":
    torch.set_num_threads(1)
    t = _inventory()
    print(f"bad arguments: {sum(t.values())} tried; " + ", ".join(f"{k} {t[k]}" for k in
                                                              ("clear", "misleading", "raw", "silent")))
