"""Resumes refuse other settings (issue 20, item 3): every resumable job records the settings and
input fingerprints that determine its result and refuses a resume that differs, naming the
field; an explicit flag starts over; kill-and-resume with the same settings stays bit-identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.checkpoint import ResumeMismatchError, settings_diff
from interp.errors import CultureLensError


def test_settings_diff_names_nested_fields() -> None:
    diff = settings_diff({"lr": 1e-3, "cfg": {"k": 4, "d": 8}, "gone": 1}, {"lr": 2e-3, "cfg": {"k": 4, "d": 9}})
    assert diff == ["cfg.d: 8 (checkpoint) vs 9 (this run)", "gone: 1 (checkpoint) vs '<absent>' (this run)",
                    "lr: 0.001 (checkpoint) vs 0.002 (this run)"]


# -- SAE trainer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from sae import ActivationStore

    x = torch.randn(1024, 8, generator=torch.Generator().manual_seed(0))
    return ActivationStore.from_batches(tmp_path_factory.mktemp("store"), [x], {"site": "synthetic"}, progress=False)


@pytest.mark.parametrize("change, field", [({"seed": 1}, "seed"), ({"lr": 1e-2}, "lr"),
                                           ({"aux_coef": 0.5}, "aux_coef"), ({"weight_decay": 0.1}, "weight_decay")])
def test_sae_resume_refuses_other_settings(store, tmp_path: Path, change: dict, field: str) -> None:
    from sae import SAEError, TopKSAE, TrainConfig, train

    cfg = TrainConfig(batch_size=64, total_tokens=64 * 8, lr=4e-3)
    kw = dict(checkpoint_dir=tmp_path, progress=False)
    other = dataclasses.replace(cfg, **change)
    train(TopKSAE(8, 16, 2, dead_tokens=100, seed=0), store, cfg, stop_after=4, **kw)
    with pytest.raises(SAEError, match=rf"\b{field}: "):
        train(TopKSAE(8, 16, 2, dead_tokens=100, seed=0), store, other, resume=True, **kw)
    with pytest.raises(SAEError, match="past this run's end"):
        train(TopKSAE(8, 16, 2, dead_tokens=100, seed=0), store, dataclasses.replace(cfg, total_tokens=64 * 2),
              resume=True, **kw)
    train(TopKSAE(8, 16, 2, dead_tokens=100, seed=0), store, other, resume=False, **kw)  # starts over


# -- enhancer --------------------------------------------------------------------------------------

def _refs(seed: int = 0, n: int = 2):
    from PIL import Image

    g = np.random.default_rng(seed)
    return [(p, Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8))) for p in ("a box", "a hat")[:n]]


@pytest.mark.parametrize("change, field", [
    ({"lr": 5e-2}, "lr"), ({"objective": "pixel"}, "objective"), ({"seed": 3}, "seed"),
    ({"data": "other images"}, "inputs.data"), ({"batch_size": 2}, "batch_size"),
])
def test_enhancer_resume_refuses_other_settings(tiny_sd, tmp_path: Path, change: dict, field: str) -> None:
    from circuits.causal.enhancer import EnhancerConfig, train_enhancer

    cfg = EnhancerConfig(train_steps=1, lr=1e-2, checkpoint_every=1)
    kw = dict(layer=0, out=tmp_path, progress=False)
    train_enhancer(tiny_sd, _refs(), cfg=cfg, **kw)
    new = dataclasses.replace(cfg, train_steps=2, **{k: v for k, v in change.items() if k != "data"})
    data = _refs(seed=1) if "data" in change else _refs()
    with pytest.raises(ResumeMismatchError, match=rf"{field}: .*--restart"):
        train_enhancer(tiny_sd, data, cfg=new, **kw)
    record = json.loads((tmp_path / "enhancer.json").read_text())
    assert record["steps"] == 1 and record["lr"] == 1e-2  # the refused run recorded nothing
    run = train_enhancer(tiny_sd, data, cfg=new, resume=False, **kw)  # the explicit flag starts over
    assert len(run.losses) == 2


def test_enhancer_resume_refuses_a_checkpoint_past_the_end(tiny_sd, tmp_path: Path) -> None:
    from circuits.causal.enhancer import EnhancerConfig, train_enhancer

    two = EnhancerConfig(train_steps=2, lr=1e-2, checkpoint_every=1)
    train_enhancer(tiny_sd, _refs(), layer=0, out=tmp_path, cfg=two, progress=False)
    with pytest.raises(ResumeMismatchError, match="step 2 is past this run's train_steps=1"):
        train_enhancer(tiny_sd, _refs(), layer=0, out=tmp_path, cfg=dataclasses.replace(two, train_steps=1),
                       progress=False)


def test_enhancer_refuses_another_model(tmp_path: Path) -> None:
    import interp
    from circuits.causal.enhancer import EnhancerConfig, train_enhancer

    kw = dict(layer=0, out=tmp_path, progress=False)
    train_enhancer(interp.tiny("sd", seed=0), _refs(), cfg=EnhancerConfig(train_steps=1, lr=1e-2), **kw)
    with pytest.raises(ResumeMismatchError, match=r"inputs\.model\.(text_encoder|unet)"):
        train_enhancer(interp.tiny("sd", seed=1), _refs(), cfg=EnhancerConfig(train_steps=2, lr=1e-2), **kw)


# -- organism training -----------------------------------------------------------------------------

def _cfg(**kw):
    from circuits.organism.train import TrainConfig

    return TrainConfig(**{"train_steps": 3, "batch": 2, "warmup": 1, "ckpt_every": 100, "log_every": 1, **kw})


def test_organism_resume_refuses_other_seed_and_steps(tmp_path: Path) -> None:
    from circuits.organism.train import load_checkpoint, train

    train(tmp_path, _cfg(), stop_at=1)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ResumeMismatchError, match=r"seed: 0 \(checkpoint\) vs 1 \(this run\)"):
        train(tmp_path, _cfg(seed=1))
    with pytest.raises(ResumeMismatchError, match=r"train_steps: 3 \(checkpoint\) vs 5 \(this run\).*--retotal"):
        train(tmp_path, _cfg(train_steps=5))
    with pytest.raises(ResumeMismatchError, match=r"lr: "):
        train(tmp_path, _cfg(lr=1e-3))
    assert (tmp_path / "config.json").read_text() == before  # a refused resume records nothing
    assert load_checkpoint(tmp_path)["step"] == 1
    # the explicit ways: --retotal changes the step count and says so; --no-resume starts over
    ck = train(tmp_path, _cfg(train_steps=5, retotal=2))
    assert ck["step"] == 2 and ck["sizing"]["retotal"]["new"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["train_steps"] == 3  # the run's own step setting
    ck = train(tmp_path, _cfg(seed=1, train_steps=1), resume=False)
    assert ck["step"] == 1 and ck["config"]["seed"] == 1


def test_organism_resumes_a_checkpoint_from_before_the_rename(tmp_path: Path) -> None:
    """A checkpoint written before 0.2.0 names the step count "steps": read as train_steps, it
    resumes (and a different count is refused under the new name)."""
    from interp.checkpoint import load_checkpoint as load_tree, save_checkpoint
    from circuits.organism.train import CKPT, CKPT_KIND, train

    train(tmp_path, _cfg(), stop_at=1)
    tree = load_tree(tmp_path / CKPT, CKPT_KIND)
    tree["config"] = {("steps" if k == "train_steps" else k): v for k, v in tree["config"].items()}
    save_checkpoint(tmp_path / CKPT, tree, CKPT_KIND)  # as the old code wrote it
    with pytest.raises(ResumeMismatchError, match=r"train_steps: 3 \(checkpoint\) vs 5 \(this run\)"):
        train(tmp_path, _cfg(train_steps=5))
    ck = train(tmp_path, _cfg())
    assert ck["step"] == 3 and ck["config"]["train_steps"] == 3 and "steps" not in ck["config"]
    assert json.loads((tmp_path / "config.json").read_text())["train_steps"] == 3


# -- analyze ------------------------------------------------------------------------------------

def test_analyze_records_its_run_and_refuses_another(tmp_path: Path) -> None:
    from circuits.analysis import state
    from circuits.analysis.cultureworld import AnalysisConfig, analyze
    from circuits.organism.shipped import JUDGE, PIPELINE

    import dataclasses

    if not (PIPELINE / "model_index.json").exists():
        pytest.skip("the organism has not been built")
    out = tmp_path / "r"
    out.mkdir()
    quick = state.run_settings(dataclasses.asdict(AnalysisConfig.quick()), PIPELINE, JUDGE)
    state.prepare(out, quick, restart=False)
    (out / "sae_checkpoints" / "culture").mkdir(parents=True)
    (out / "sae_checkpoints" / "culture" / "last.safetensors").write_bytes(b"x")
    assert (out / state.INCOMPLETE).exists()
    state.prepare(out, quick, restart=False)  # the same run resumes
    # `analyze` without --quick in a --quick folder: refused at once, naming the fields
    with pytest.raises(ResumeMismatchError, match=r"config\.\w+: .*--restart"):
        analyze(out)
    other = dict(quick, judge="0" * 16)
    with pytest.raises(ResumeMismatchError, match="judge: "):
        state.prepare(out, other, restart=False)
    state.prepare(out, other, restart=True)  # the explicit flag removes the old run's state
    assert not (out / "sae_checkpoints").exists()
    assert json.loads((out / state.RUN_FILE).read_text())["judge"] == "0" * 16
    state.finish(out)
    assert not (out / state.INCOMPLETE).exists()


def test_resume_errors_are_culturelens_errors() -> None:
    assert issubclass(ResumeMismatchError, CultureLensError)


def test_organism_judge_reused_only_with_the_same_seed(tmp_path: Path) -> None:
    from circuits.organism.build import JUDGE_RUN, build_judge

    (tmp_path / "judge.safetensors").write_bytes(b"not read before the check")
    with pytest.raises(ResumeMismatchError, match="settings unknown"):
        build_judge(tmp_path, seed=0)
    (tmp_path / JUDGE_RUN).write_text(json.dumps({"seed": 0}))
    with pytest.raises(ResumeMismatchError, match=r"seed: 0 \(checkpoint\) vs 1 \(this run\)"):
        build_judge(tmp_path, seed=1)
