"""Settings objects for the long signatures (issue 21 item 3, culturelens 0.2.0): the generation
and judging knobs shared by the judged steps are one `circuits.ScoreSettings`, the enhancer's
training knobs one `circuits.EnhancerConfig`, the SAE trainer's one `sae.TrainConfig`. Their
defaults are the old keywords' defaults (a pure refactor: results unchanged), the old keywords
are refused with an error naming the new place, each function runs through its object, and a
field's value reaches what it decides. What is written to disk (checkpoint settings, enhancer.json)
keeps its field names, so existing checkpoints resume and the resume refusals name the same fields."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

import circuits
import interp
import sae
from circuits.causal.specificity import specificity_matrix
from circuits.data.culturebench import LABELS
from circuits.evaluate import score
from circuits.pairs import as_pairs, by_concept
from circuits.runner import RunConfig, evaluate_enhancer
from interp.checkpoint import load_checkpoint
from sae.model import dead_tokens_for
from colour import PAIRS_BOX_HAT as PAIRS


# The defaults of the keywords before they moved (culturelens 0.1, the signatures as they were).
OLD_SCORE = {"seed": 0, "num_steps": None, "batch_size": 8, "n_boot": 1000}
OLD_TRAIN = {"batch_size": 4096, "total_tokens": 10_000_000, "lr": 4e-4, "aux_coef": 1 / 32, "weight_decay": 0.0,
             "seed": 0, "checkpoint_every": 500, "init_from_data": True, "log_every": 10}
OLD_ENHANCER = {"train_steps": 2000, "lr": 5e-5, "batch_size": 1, "weight_decay": 0.01, "hidden": None,
                "norm": "softrms", "objective": "denoise", "chain_steps": 2, "seed": 0, "checkpoint_every": 100}

# (function, its name in messages, keywords that moved, the settings class, its parameter)
SCORED = ("seed", "num_steps", "batch_size", "n_boot")
MOVED = [
    (score, "circuits.evaluate.score", ("seed", "num_steps", "batch_size"), "circuits.ScoreSettings", "settings"),
    (circuits.validate_units, "circuits.validate_units", SCORED, "circuits.ScoreSettings", "settings"),
    (circuits.lambda_sweep, "circuits.lambda_sweep", SCORED, "circuits.ScoreSettings", "settings"),
    (specificity_matrix, "circuits.causal.specificity.specificity_matrix", SCORED, "circuits.ScoreSettings",
     "settings"),
    (circuits.causal_sweep, "circuits.causal_sweep", SCORED, "circuits.ScoreSettings", "settings"),
    (evaluate_enhancer, "circuits.runner.evaluate_enhancer", SCORED, "circuits.ScoreSettings", "settings"),
    (circuits.train_enhancer, "circuits.train_enhancer", tuple(OLD_ENHANCER), "circuits.EnhancerConfig", "cfg"),
    (sae.train, "sae.train", tuple(OLD_TRAIN), "sae.TrainConfig", "cfg"),
]
CASES = [(fn, where, kw, cls, param) for fn, where, kws, cls, param in MOVED for kw in kws]


def _id(case) -> str:
    return f"{case[1]}-{case[2]}"


# -- the objects --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, old", [(circuits.ScoreSettings, OLD_SCORE), (sae.TrainConfig, OLD_TRAIN),
                                      (circuits.EnhancerConfig, OLD_ENHANCER)], ids=lambda x: getattr(x, "__name__", ""))
def test_defaults_are_the_old_defaults(cls, old) -> None:
    assert dataclasses.asdict(cls()) == old
    assert [f.name for f in dataclasses.fields(cls)] == list(old)  # nothing more, nothing less
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().seed = 1  # frozen: one object can be shared by every step
    with pytest.raises(TypeError):
        cls(0)  # keyword-only: no field is set by position
    assert dataclasses.replace(cls(), seed=3).seed == 3


def test_every_field_has_a_docstring() -> None:
    """sparsify's style: a string literal after each field, read from the source."""
    import ast

    for cls in (circuits.ScoreSettings, sae.TrainConfig, circuits.EnhancerConfig):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        documented = {a.target.id for a, doc in zip(body, body[1:]) if isinstance(a, ast.AnnAssign)
                      and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)}
        assert documented == {f.name for f in dataclasses.fields(cls)}, cls


def test_exported() -> None:
    assert {"ScoreSettings", "EnhancerConfig"} <= set(circuits.__all__)
    assert "TrainConfig" in sae.__all__ and "MovedArgumentError" in interp.__all__
    assert issubclass(interp.MovedArgumentError, interp.RenamedArgumentError)
    assert issubclass(interp.MovedArgumentError, TypeError)


def test_run_and_analysis_configs_build_the_same_objects() -> None:
    from circuits.analysis.cultureworld import AnalysisConfig

    assert RunConfig().score_settings() == circuits.ScoreSettings()
    assert RunConfig(seed=2, num_steps=3, batch_size=4, n_boot=50).score_settings() == \
        circuits.ScoreSettings(seed=2, num_steps=3, batch_size=4, n_boot=50)
    assert RunConfig().enhancer_config() == circuits.EnhancerConfig()
    assert RunConfig.quick().enhancer_config() == circuits.EnhancerConfig(train_steps=4, lr=1e-3)
    a = AnalysisConfig()
    assert a.score_settings() == circuits.ScoreSettings(seed=a.seed, batch_size=a.batch_size, n_boot=a.n_boot)
    assert AnalysisConfig.quick().score_settings().n_boot == 200


def test_cli_builds_the_objects() -> None:
    from circuits.commands import _settings

    args = argparse.Namespace(seed=4, num_steps=2, batch_size=3, n_boot=77)
    assert _settings(args) == circuits.ScoreSettings(seed=4, num_steps=2, batch_size=3, n_boot=77)


# -- the old keywords ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_id)
def test_moved_keyword_names_its_new_place(case) -> None:
    fn, where, kw, cls, param = case
    params = inspect.signature(fn).parameters
    assert kw not in params and params[param].default is None
    value = {"num_steps": 4, "train_steps": 4, "hidden": 4, "norm": "none", "objective": "pixel",
             "init_from_data": False}.get(kw, 3)
    # Refused before anything runs (no model needed), naming the function, the object and the call.
    with pytest.raises(interp.MovedArgumentError) as e:
        fn(None, None, **{kw: value})
    assert str(e.value) == (f"{where}: {kw}= moved to {cls}({kw}=...) in culturelens 0.2.0; "
                            f"pass {param}={cls}({kw}={value!r})")
    assert isinstance(e.value, TypeError) and isinstance(e.value, interp.CultureLensError)


def test_several_moved_keywords_are_named_together() -> None:
    with pytest.raises(interp.MovedArgumentError,
                       match=r"^sae\.train: lr=, seed= moved to sae\.TrainConfig\(lr=\.\.\.\) in culturelens 0\.2\.0; "
                             r"pass cfg=sae\.TrainConfig\(lr=0\.001, seed=1\)$"):
        sae.train(None, None, lr=1e-3, seed=1)


@pytest.mark.parametrize("call, message", [
    # sae.train's third argument was batch_size, now the TrainConfig
    (lambda: sae.train(None, None, 256), r"sae\.train: cfg must be a sae\.TrainConfig or None; got 256 "
                                         r"\(batch_size, total_tokens, .* moved to sae\.TrainConfig"),
    (lambda: sae.train(None, None, None, 1000), r"sae\.train: takes at most 3 positional arguments \(sae, store, "
                                                r"cfg\), got 4"),
    # train_enhancer's sixth argument was train_steps, now the EnhancerConfig
    (lambda: circuits.train_enhancer(None, [], 0, "text", None, 2000),
     r"circuits\.train_enhancer: cfg must be a circuits\.EnhancerConfig or None; got 2000"),
    (lambda: circuits.validate_units(None, None, PAIRS, None, 10, None, 0),
     r"circuits\.validate_units: takes at most 6 positional arguments .* got 7; seed, num_steps, batch_size, n_boot "
     r"moved to circuits\.ScoreSettings"),
    (lambda: score(None, {}, None, None, "concept", None, 0, None, 8),
     r"circuits\.evaluate\.score: takes at most 6 positional arguments"),
    (lambda: evaluate_enhancer(None, None, PAIRS, None, 0, None, 8, 1000),
     r"circuits\.runner\.evaluate_enhancer: takes at most 4 positional arguments"),
    (lambda: circuits.causal_sweep(None, PAIRS, PAIRS, None, settings={"seed": 1}),
     r"circuits\.causal_sweep: settings must be a circuits\.ScoreSettings or None; got \{'seed': 1\}"),
])
def test_old_positional_calls_are_refused(call, message) -> None:
    with pytest.raises(interp.MovedArgumentError, match=message):
        call()


def test_renamed_then_moved_says_both() -> None:
    with pytest.raises(interp.RenamedArgumentError,
                       match=r"validate_units: steps= was renamed num_steps= .* num_steps is now a field of "
                             r"circuits\.ScoreSettings: pass settings=circuits\.ScoreSettings\(num_steps=4\)\."):
        circuits.validate_units(None, None, steps=4)
    with pytest.raises(interp.RenamedArgumentError,
                       match=r"train_enhancer: steps= was renamed train_steps= .* train_steps is now a field of "
                             r"circuits\.EnhancerConfig: pass cfg=circuits\.EnhancerConfig\(train_steps=4\)\."):
        circuits.train_enhancer(steps=4)


def test_moved_refuses_a_name_that_is_not_a_field() -> None:
    from interp.checks import moved

    with pytest.raises(TypeError, match="not fields of ScoreSettings"):
        moved(circuits.ScoreSettings, "seeds", param="settings")


# -- each function through its object ------------------------------------------------------------

def _parity_judge(images):
    """'ja' when an image's red channel is even, else 'de': the judgement follows the noise seed
    of the stand-in generation below, so the seed decides what is correct."""
    out = torch.zeros(len(images), len(LABELS))
    for i, im in enumerate(images):
        out[i, LABELS.index("ja" if np.asarray(im)[0, 0, 0] % 2 == 0 else "de")] = 1.0
    return out


@pytest.fixture()
def calls(monkeypatch):
    """`interp.generate` replaced by a stand-in that records (seeds, num_steps) per call and draws
    a flat image whose colour is its seed: settings are checked to reach generation, without
    denoising (each function's numbers against real generation are in tests/circuits/causal/test_validate_amplify.py)."""
    seen: list = []

    def fake_generate(model, prompts, seed=0, num_steps=None, guidance=None, **kw):
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
        seen.append((seeds, num_steps))
        return interp.Generation([Image.new("RGB", (16, 16), (s % 256, 90, 160)) for s in seeds],
                                 torch.zeros(len(prompts), 4, 2, 2))

    monkeypatch.setattr(interp, "generate", fake_generate)
    return seen


ST = circuits.ScoreSettings(seed=5, num_steps=3, batch_size=3, n_boot=37)


def _check_calls(seen, st=ST) -> None:
    assert seen and {n for _, n in seen} == {st.num_steps}
    assert max(len(s) for s, _ in seen) <= st.batch_size
    # every condition sees the noise seeds settings.seed + i (i = the prompt's rank in its culture)
    assert {x for s, _ in seen for x in s} == {st.seed, st.seed + 1}


def test_score_settings_reach_generation(text_model, calls) -> None:
    groups = by_concept(as_pairs(PAIRS))
    s = score(text_model, groups, _parity_judge, settings=ST)
    _check_calls(calls)
    # seed 5: each culture's prompts get seeds 5, 6 (odd, even: judged 'de', 'ja'); groups de, ja
    assert list(groups) == ["de", "ja"] and s.correct.tolist() == [True, False, False, True]
    assert score(text_model, groups, _parity_judge, settings=dataclasses.replace(ST, seed=6)).correct.tolist() == \
        [False, True, True, False]
    calls.clear()
    default = score(text_model, groups, _parity_judge)  # None: ScoreSettings() = the old defaults
    assert calls == [([0, 1, 0, 1], None)]
    assert torch.equal(default.correct, score(text_model, groups, _parity_judge,
                                              settings=circuits.ScoreSettings()).correct)


def test_judged_steps_run_through_settings(text_model, units, calls) -> None:
    groups = by_concept(as_pairs(PAIRS))
    base = score(text_model, groups, _parity_judge, settings=ST)
    calls.clear()
    v = circuits.validate_units(text_model, units, PAIRS, _parity_judge, n_random=1, settings=ST, progress=False)
    _check_calls(calls)
    assert v.baseline == circuits.Rate.of(base.correct, ST.n_boot, ST.seed)  # n_boot and seed reach the CIs
    calls.clear()
    sw = circuits.lambda_sweep(text_model, units, PAIRS, _parity_judge, lams=[0.0, 2.0], n_random=1,
                               prompt="concept", settings=ST, progress=False)
    _check_calls(calls)
    assert sw.detected[0] == circuits.Rate.of(base.correct, ST.n_boot, ST.seed)
    calls.clear()
    specificity_matrix(text_model, units, PAIRS, _parity_judge, settings=ST, progress=False)
    _check_calls(calls)
    calls.clear()
    cs = circuits.causal_sweep(text_model, PAIRS, PAIRS, _parity_judge, n_units=1, layers=[1], settings=ST,
                               allow_overlap=True, progress=False)
    _check_calls(calls)
    assert cs.baseline == circuits.Rate.of(base.correct, ST.n_boot, ST.seed)
    calls.clear()
    rate = evaluate_enhancer(text_model, None, PAIRS, _parity_judge, settings=ST)
    _check_calls(calls)
    noun = score(text_model, groups, _parity_judge, None, "noun", settings=ST)
    assert rate == circuits.Rate.of(noun.correct, ST.n_boot, ST.seed)


def _refs(n: int = 2):
    g = np.random.default_rng(0)
    return [(p, Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8))) for p in ("a box", "a hat")[:n]]


def test_train_enhancer_through_its_config(text_model, tmp_path) -> None:
    cfg = circuits.EnhancerConfig(train_steps=2, lr=1e-3, checkpoint_every=1)
    run = circuits.train_enhancer(text_model, _refs(), 0, out=tmp_path / "a", cfg=cfg, progress=False)
    assert run.train_steps == 2 and len(run.losses) == 2
    # On disk: the same files, keys and values as before the move.
    record = json.loads((tmp_path / "a" / "enhancer.json").read_text())
    assert set(record) == {"config", "steps", "lr", "batch_size", "objective", "seed", "losses"}
    assert (record["steps"], record["lr"], record["batch_size"], record["objective"], record["seed"]) == \
        (2, 1e-3, 1, "denoise", 0)
    ck = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors", "layer-enhancer")
    assert {k: v for k, v in ck["settings"].items() if k != "inputs"} == {
        "config": run.enhancer.config(), "seed": 0, "lr": 1e-3, "weight_decay": 0.01, "batch_size": 1,
        "objective": "denoise", "chain_steps": None}
    # Other values change what they decide.
    other = circuits.train_enhancer(text_model, _refs(), 0, cfg=dataclasses.replace(cfg, seed=1), progress=False)
    assert not torch.equal(other.enhancer.W1.weight, run.enhancer.W1.weight)
    small = circuits.train_enhancer(text_model, _refs(), 0, progress=False,
                                    cfg=dataclasses.replace(cfg, hidden=4, norm="none", train_steps=1))
    assert small.enhancer.config()["hidden"] == 4 and small.enhancer.norm_kind == "none" and len(small.losses) == 1
    # None is the defaults (2000 steps): refused here only by the layer check, before training.
    with pytest.raises(interp.CultureLensError, match="layer 9 outside"):
        circuits.train_enhancer(text_model, _refs(), 9)


def test_enhancer_run_markdown_heading(text_model) -> None:
    run = circuits.train_enhancer(text_model, _refs(1), 0, cfg=circuits.EnhancerConfig(train_steps=1), progress=False)
    body = run.to_markdown()
    assert body.startswith("| enhancer at | d_model |") and body.count("\n") == 2  # unchanged without a heading
    assert run.to_markdown(None) == body
    assert run.to_markdown("## Enhancer") == "## Enhancer\n\n" + body


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = torch.randn(640, 8, generator=torch.Generator().manual_seed(0))
    return sae.ActivationStore.from_batches(tmp_path_factory.mktemp("store"), [x], {"site": "synthetic"},
                                            progress=False)


def test_sae_train_through_its_config(store, tmp_path) -> None:
    cfg = sae.TrainConfig(batch_size=32, total_tokens=32 * 6, lr=1e-3, log_every=2, checkpoint_every=3, seed=2)
    a = sae.TopKSAE(8, 16, 2, seed=0)
    rows = sae.train(a, store, cfg, checkpoint_dir=tmp_path, progress=False)
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[-1]["tokens"] == 32 * 6
    assert a.cfg.dead_tokens == dead_tokens_for(32 * 6, 32)  # from the budget, as before
    # The checkpoint records the same settings under the same names as before the move.
    ck = load_checkpoint(tmp_path / "last.safetensors", "sae-trainer")
    assert ck["step"] == 6
    assert {k: v for k, v in ck["settings"].items() if k not in ("cfg", "store")} == {
        "batch_size": 32, "seed": 2, "lr": 1e-3, "aux_coef": 1 / 32, "weight_decay": 0.0, "init_from_data": True}
    # Other values change what they decide; the same values give the same weights.
    again = sae.TopKSAE(8, 16, 2, seed=0)
    sae.train(again, store, cfg, progress=False)
    assert torch.equal(again.W_enc, a.W_enc)
    for change in ({"seed": 3}, {"lr": 1e-2}, {"init_from_data": False}):
        b = sae.TopKSAE(8, 16, 2, seed=0)
        sae.train(b, store, dataclasses.replace(cfg, **change), progress=False)
        assert not torch.equal(b.W_enc, a.W_enc), change
    assert len(sae.train(sae.TopKSAE(8, 16, 2, seed=0), store, dataclasses.replace(cfg, log_every=3),
                         progress=False)) == 2
