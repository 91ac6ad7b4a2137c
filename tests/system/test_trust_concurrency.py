"""One writer per output folder (issue 20, item 4): a second writer fails at once naming the
holder's pid, a lock left by a killed process does not block, and a partial report says it is
incomplete until the run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interp.folder_lock import LOCK_NAME, FolderBusyError, lock_folder

HOLD = """
import sys, time
from interp.folder_lock import lock_folder
lock_folder(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """A second process holding the lock of tmp_path/'out'; killed (SIGKILL) by the test or at the end."""
    folder = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield folder, p
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_second_writer_fails_at_once_and_stale_lock_does_not_block(holder) -> None:
    folder, p = holder
    with pytest.raises(FolderBusyError, match=rf"{folder} is in use by another culturelens process \(pid {p.pid}"):
        lock_folder(folder).acquire()
    os.kill(p.pid, signal.SIGKILL)  # a killed run leaves its lock file ...
    p.wait()
    assert (folder / LOCK_NAME).exists()
    with lock_folder(folder):  # ... but not its lock
        assert f"pid {os.getpid()}" in (folder / LOCK_NAME).read_text()
    assert not (folder / LOCK_NAME).exists()  # a run that ends cleans up after itself


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with lock_folder(tmp_path / "a"):
        with lock_folder(tmp_path / "a"):
            pass
        # still held by the outer block: another process is refused, naming this one
        other = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", ""), str(tmp_path / "a")],
                               capture_output=True, text=True)
        assert other.returncode != 0 and "is in use by another culturelens process" in other.stderr
        assert f"pid {os.getpid()}" in other.stderr
    # released: a new process can take it
    out = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", ""), str(tmp_path / "a")],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "locked", out.stderr


def test_out_naming_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(Exception, match="exists and is not a folder"):
        lock_folder(f).acquire()


def test_cli_second_writer_exits_1_naming_the_pid(holder, capsys) -> None:
    from circuits.cli import main

    folder, p = holder
    rc = main(["layer-scan", "--model", "tiny:sd", "--out", str(folder)])
    err = capsys.readouterr().err
    assert rc == 1 and f"pid {p.pid}" in err and err.count("\n") == 1, err


def test_long_jobs_lock_their_folders(holder, tiny_sd) -> None:
    from PIL import Image

    from circuits.analysis.cultureworld import analyze
    from circuits.causal.enhancer import EnhancerConfig, train_enhancer
    from circuits.organism.train import TrainConfig, train
    from sae import ActivationStore, TopKSAE
    from sae import TrainConfig as SAETrainConfig
    from sae import train as sae_train

    import torch

    folder, p = holder
    pid = f"pid {p.pid}"
    with pytest.raises(FolderBusyError, match=pid):
        analyze(folder, quick=True)
    img = Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(FolderBusyError, match=pid):
        train_enhancer(tiny_sd, [("a box", img)], layer=0, out=folder, cfg=EnhancerConfig(train_steps=1), progress=False)
    with pytest.raises(FolderBusyError, match=pid):
        train(folder, TrainConfig(train_steps=1, batch=2, warmup=1))
    store = ActivationStore.from_batches(folder.parent / "store", [torch.randn(64, 8)], {"site": "s"}, progress=False)
    with pytest.raises(FolderBusyError, match=pid):
        sae_train(TopKSAE(8, 16, 2), store, SAETrainConfig(batch_size=32, total_tokens=64), checkpoint_dir=folder,
                  progress=False)


def test_partial_report_is_marked_incomplete(tmp_path: Path) -> None:
    from circuits.analysis.report import INCOMPLETE_BANNER, Report

    r = Report(tmp_path, "T")
    r.add("## 1. Step one\n\nmeasured")
    r.write()  # what an interrupted run leaves
    assert (tmp_path / "report.md").read_text().startswith(INCOMPLETE_BANNER)
    assert "Incomplete report" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["incomplete"] is True
    r.finish()
    assert (tmp_path / "report.md").read_text().startswith("# T")
    assert "Incomplete" not in (tmp_path / "report.html").read_text()
    assert "incomplete" not in json.loads((tmp_path / "results.json").read_text())
