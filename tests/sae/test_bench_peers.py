"""The SAE peers benchmark's SAELens path: a clear error when the named interpreter cannot train,
a clear skip message without it, and (where an interpreter with sae-lens is given) SAELens's
own saved files read back by `sae.load_saelens` and evaluated like ours."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_sae_peers as bench  # noqa: E402


def _job(n_steps: int = 3, d_in: int = 16):
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(512, d_in, generator=g), torch.randn(256, d_in, generator=g)
    index = torch.randint(0, 512, (n_steps, bench.BATCH), generator=g)
    return xtr, xte, index


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is not None,
                    reason="sae_lens is importable here, so the runner would not fail")
def test_saelens_runner_failure_is_an_error_naming_the_interpreter():
    # this venv has no sae_lens, so the runner fails on import: that must surface, not skip
    xtr, xte, index = _job()
    with pytest.raises(RuntimeError, match=rf"(?s){bench.SAELENS_ENV}=.*saelens_runner.py failed.*sae_lens"):
        bench.saelens_curve(sys.executable, xtr, index, [3], 1024, 0, xte, None)


def test_saelens_note_without_interpreter(monkeypatch):
    monkeypatch.delenv(bench.SAELENS_ENV, raising=False)
    assert "skipped" in bench.saelens_note([]) and bench.SAELENS_ENV in bench.saelens_note([])


@pytest.mark.skipif(not os.environ.get(bench.SAELENS_ENV), reason=f"{bench.SAELENS_ENV} not set")
def test_saelens_trained_files_load_and_evaluate():
    xtr, xte, index = _job()
    rows, version = bench.saelens_curve(os.environ[bench.SAELENS_ENV], xtr, index, [1, 3], 1024, 0,
                                        xte, None)
    assert version and [r["tokens"] for r in rows] == [bench.BATCH, 3 * bench.BATCH]
    assert all(0 < r["fvu"] < 10 and 0 <= r["dead"] <= 1 and r["sec"] > 0 for r in rows)
    assert rows[1]["fvu"] < rows[0]["fvu"]  # it trained: two more steps reconstruct better
