"""Trust nothing a folder brings (issue 20, items 1, 2 and 8): a pickle planted at any checkpoint
location never runs and is refused naming the file; a pipeline folder's own code runs only by
opt-in unless it is byte-identical to the shipped organism's; a full disk at a checkpoint is a
message naming the path; a --pipeline path reaching report.html is escaped."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from interp import result_io
from interp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from interp.errors import CultureLensError

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates the marker folder: proof that planted code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.save is what a real `.pt` checkpoint is: a zip holding a pickle
    torch.save({"step": 1, "model": _Payload(marker)}, path)
    return path


def _refused(fn, path: Path, marker: Path) -> None:
    with pytest.raises(CultureLensError) as e:
        fn()
    assert str(path) in str(e.value), e.value
    assert not marker.exists(), "the planted pickle ran"


def test_no_unsafe_torch_load_anywhere() -> None:
    hits = [f"{p}:{i + 1}" for d in ("interp", "sae", "circuits", "benchmarks") for p in (ROOT / d).rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines())
            if re.search(r"weights_only\s*=\s*False", line)]
    assert not hits, hits


def test_sae_trainer_checkpoints(tmp_path: Path) -> None:
    from sae import ActivationStore, TopKSAE, TrainConfig, train
    from sae.train import CHECKPOINT, LEGACY_CHECKPOINT

    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    store = ActivationStore.from_batches(tmp_path / "store", [x], {"site": "synthetic"}, progress=False)
    marker = tmp_path / "ran"
    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        ck = tmp_path / name.replace(".", "_")
        planted = _plant(ck / name, marker)
        _refused(lambda: train(TopKSAE(8, 16, 2, seed=0), store, TrainConfig(batch_size=32, total_tokens=256),
                               checkpoint_dir=ck, resume=True, progress=False), planted, marker)


def _refs():
    from PIL import Image

    g = np.random.default_rng(0)
    return [("a box", Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)))]


def test_enhancer_checkpoints(tiny_sd, tmp_path: Path) -> None:
    from circuits.causal.enhancer import CHECKPOINT, LEGACY_CHECKPOINT, EnhancerConfig, train_enhancer

    marker = tmp_path / "ran"
    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        out = tmp_path / name.replace(".", "_")
        planted = _plant(out / name, marker)
        # resume is the default: pointing --out at a folder someone sent you must be safe
        _refused(lambda: train_enhancer(tiny_sd, _refs(), layer=0, out=out, cfg=EnhancerConfig(train_steps=1),
                                        progress=False),
                 planted, marker)


def test_organism_checkpoints(tmp_path: Path) -> None:
    from circuits.organism.train import CKPT, LEGACY_CKPT, TrainConfig, load_checkpoint as load_run, train

    marker = tmp_path / "ran"
    for name in (CKPT, LEGACY_CKPT):
        run = tmp_path / name.replace(".", "_")
        planted = _plant(run / name, marker)
        _refused(lambda: train(run, TrainConfig(train_steps=1, batch=2, warmup=1)), planted, marker)
        _refused(lambda: load_run(run), planted, marker)  # what export.pipeline_from_run reads


def test_analyze_refuses_planted_state_before_reading_it(tmp_path: Path) -> None:
    from circuits.analysis.cultureworld import analyze

    marker = tmp_path / "ran"
    out = tmp_path / "report"
    planted = _plant(out / "sae_checkpoints" / "culture" / "last.safetensors", marker)
    with pytest.raises(CultureLensError, match="unknown run") as e:
        analyze(out, quick=True)
    assert str(planted) in str(e.value) and not marker.exists()


def test_checkpoint_file_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"w": torch.ones(2), "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "b": (0.9, 0.99)},
                           "losses": [1.5, float("nan")]}, "unit")
    back = load_checkpoint(good, "unit")
    assert list(back["opt"]["state"]) == [0] and back["opt"]["b"] == (0.9, 0.99) and np.isnan(back["losses"][1])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(good))}: a checkpoint of 'unit', not of 'other'"):
        load_checkpoint(good, "other")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=re.escape(str(cut))):
        load_checkpoint(cut, "unit")
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match=re.escape(str(raw))):
        load_checkpoint(raw, "unit")
    # a transposed tensor (an SAE's W_enc and its Adam moments) keeps its strides, as torch.save did:
    # the fused CPU AdamW takes a layout-dependent path, and a contiguous copy broke bit-identical resume
    wt = torch.randn(3, 5).t()
    save_checkpoint(good, {"wt": wt}, "unit")
    back = load_checkpoint(good, "unit")["wt"]
    assert torch.equal(back, wt) and back.stride() == wt.stride()
    with pytest.raises(CheckpointError, match="cannot store .*object"):
        save_checkpoint(tmp_path / "x.safetensors", {"x": object()}, "unit")


def test_disk_full_at_a_checkpoint_names_the_path(tmp_path: Path, monkeypatch) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")

    def full(fd, mode):  # the temporary file lands on a full disk: writes fail with ENOSPC
        os.close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(result_io.os, "fdopen", full)
    path = tmp_path / "ck" / "last.safetensors"
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: cannot write the checkpoint: the disk is full"):
        save_checkpoint(path, {"w": torch.zeros(1000)}, "unit")
    assert not path.exists() and not list(path.parent.glob(".*tmp"))


# -- remote code -------------------------------------------------------------------------------

def _copy_pipeline(tmp_path: Path) -> Path:
    from circuits.organism.shipped import PIPELINE

    if not (PIPELINE / "model_index.json").exists():
        pytest.skip("the organism has not been built")
    dst = tmp_path / "pipeline"
    shutil.copytree(PIPELINE, dst)
    return dst


def test_shipped_code_is_trusted_by_fingerprint_not_path(tmp_path: Path) -> None:
    from circuits.io import load_model
    from circuits.organism.shipped import is_shipped_code

    copy = _copy_pipeline(tmp_path)
    assert is_shipped_code(copy)  # a byte-identical copy anywhere: trusted
    assert load_model(str(copy)).family
    marker = tmp_path / "ran"
    with open(copy / "pipeline.py", "a", encoding="utf-8") as f:
        f.write(f"\nimport os\nos.mkdir({str(marker)!r})\n")
    assert not is_shipped_code(copy)
    with pytest.raises(CultureLensError, match="--trust-remote-code") as e:
        load_model(str(copy))
    assert str(copy) in str(e.value) and not marker.exists()
    extra = _copy_pipeline(tmp_path / "b")
    (extra / "unet" / "helper.py").write_text("x = 1\n")  # any other code file: not the shipped code
    assert not is_shipped_code(extra)


def test_analyze_pipeline_needs_opt_in(tmp_path: Path, capsys) -> None:
    from circuits.cli import main

    copy = _copy_pipeline(tmp_path)
    marker = tmp_path / "ran"
    with open(copy / "pipeline.py", "a", encoding="utf-8") as f:
        f.write(f"\nimport os\nos.mkdir({str(marker)!r})\n")
    rc = main(["analyze", "--quick", "--pipeline", str(copy), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "--trust-remote-code" in err and not marker.exists(), err
    assert err.count("\n") == 1 and err.startswith("culturelens: error: ")


def test_sae_and_demo_commands_trust_the_shipped_code_by_fingerprint(tmp_path: Path, capsys) -> None:
    """interp's and sae's commands open --model with circuits' loader: a byte-identical copy of the
    organism loads without --trust-remote-code, a copy with one line added is refused, its code unrun."""
    from circuits.cli import main

    copy = _copy_pipeline(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a Japanese-style box\na box\n", encoding="utf-8")
    sae_args = ["--prompts", str(prompts), "--site", "text.blocks.0.hook_resid_post", "--d-sae", "64", "--k", "4",
                "--tokens", "64", "--batch-size", "16"]
    assert main(["sae-train", "--model", str(copy), *sae_args, "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "sae" / "cfg.json").is_file()
    marker = tmp_path / "ran"
    with open(copy / "pipeline.py", "a", encoding="utf-8") as f:
        f.write(f"\nimport os\nos.mkdir({str(marker)!r})\n")
    for argv in (["sae-train", "--model", str(copy), *sae_args, "--out", str(tmp_path / "s2")],
                 ["demo", "--model", str(copy), "--out", str(tmp_path / "d")]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and "--trust-remote-code" in err and str(copy) in err and not marker.exists(), (argv, err)


def test_every_pipeline_command_takes_the_flag() -> None:
    from circuits.cli import build_parser

    parser = build_parser()
    for argv in (["analyze"], ["sae-train", "--model", "m", "--prompts", "p", "--site", "s", "--out", "o"],
                 ["demo", "--out", "o"], ["layer-scan", "--model", "m", "--out", "o"]):
        assert parser.parse_args(argv).trust_remote_code is False
        assert parser.parse_args(argv + ["--trust-remote-code"]).trust_remote_code is True


def test_pipeline_path_is_escaped_in_report_html(tmp_path: Path) -> None:
    from circuits.analysis.report import Report

    evil = "/data/x`<script>alert(1)</script>`<img src=x onerror=alert(2)>"
    r = Report(tmp_path, "t")
    r.add(f"Model: `{evil}` (a model).")
    r.finish()
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page
