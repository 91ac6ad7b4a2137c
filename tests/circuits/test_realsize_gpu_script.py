"""benchmarks/gpu_smoke.py runs end to end on tiny stand-ins on the CPU (the GPU run itself
needs a lent device), and refuses to pretend when CUDA is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_cpu_run_covers_every_phase(tmp_path, capsys):
    rc = _script().main(["--tiny", "--device", "cpu", "--names", "altdiffusion-m9", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out  # (the tiny stand-in has 2 text layers: patching sites 0 and 1)
    for phase in ("load", "capture", "plain generation", "masked generation", "amplified generation", "patch 2",
                  "culture-layer scan", "activation store (5,000 tokens)", "SAE training (5,000 tokens)",
                  "ratio capture/forward", "ratio masked/plain generation"):
        assert phase in out, phase
    assert "0 failure(s)" in out and (tmp_path / "altdiffusion-m9-run" / "realsize.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_without_cuda_it_exits_non_zero(capsys):
    assert _script().main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
