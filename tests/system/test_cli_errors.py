"""CLI errors as one line (issue 20, items 6 and 8): `culturelens: error: <message>` on stderr,
exit status 2 for usage and 1 for failure, the traceback only with --debug or
CULTURELENS_DEBUG=1; the raw errors the issue lists at the CLI boundary become messages."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from circuits.cli import DEBUG_ENV, describe, main
from interp.errors import CultureLensError

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("culturelens: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.mark.parametrize("argv, needle", [
    (["layer-scan", "--model", "tiny:sd", "--out", "x", "--n-boot", "0"], "layer-scan: argument --n-boot: expected a whole number >= 1, got 0"),
    (["sae-train", "--model", "m", "--prompts", "p", "--site", "s", "--out", "o", "--batch-size", "0"], "argument --batch-size"),
    (["organism-build"], "organism-build: the following arguments are required: --out"),
    (["no-such-command"], "invalid choice"),
    (["train-enhancer", "--model", "tiny:sd", "--out", "x", "--layer", "0", "--train-steps", "abc"], "got 'abc'"),
])
def test_usage_errors_exit_2(argv, needle, capsys) -> None:
    assert main(argv) == 2
    assert needle in _one_line(capsys)


def test_failures_exit_1_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["layer-scan", "--model", "tiny:sd:abc", "--out", str(tmp_path / "o")]) == 1
    assert "model spec 'tiny:sd:abc': layers 'abc' is not an integer" in _one_line(capsys)
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["layer-scan", "--model", "tiny:sd", "--out", str(f)]) == 1
    assert f"{f}: exists and is not a folder" in _one_line(capsys)
    bad = tmp_path / "prompts.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["sae-train", "--model", "tiny:sd", "--prompts", str(bad), "--site", "text.blocks.0.hook_resid_post",
                 "--out", str(tmp_path / "s")]) == 1
    assert f"--prompts {bad}: not UTF-8 text" in _one_line(capsys)
    assert main(["layer-scan", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 1
    _one_line(capsys)


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch) -> None:
    argv = ["layer-scan", "--model", "tiny:sd:abc", "--out", str(tmp_path / "o")]
    with pytest.raises(CultureLensError, match="tiny:sd:abc"):
        main(["--debug", *argv])
    with pytest.raises(CultureLensError):
        main([*argv, "--debug"])  # accepted after the sub-command too
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(CultureLensError):
        main(argv)


def test_describe_names_the_file_of_os_errors() -> None:
    e = OSError(errno.ENOSPC, "No space left on device", "/data/run/last.safetensors")
    assert describe(e) == "/data/run/last.safetensors: the disk is full"
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/ro/x")) == "/ro/x: Permission denied"
    assert "unexpected; rerun with --debug" in describe(ZeroDivisionError("division by zero"))
    assert describe(CultureLensError("a\n  b")) == "a b"


def test_real_process_exit_codes(tmp_path: Path) -> None:
    """The installed entry point as a user runs it: stderr one line, exit 1; --debug: traceback."""
    cmd = [sys.executable, "-m", "circuits.cli", "layer-scan", "--model", "tiny:sd:abc", "--out", str(tmp_path / "o")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.startswith("culturelens: error: model spec 'tiny:sd:abc'"), p.stderr
    assert p.stderr.count("\n") == 1
    p = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr


def test_organism_build_never_defaults_to_the_package_data() -> None:
    from circuits.cli import build_parser
    from circuits.organism.shipped import ORGANISM

    parser = build_parser()
    assert parser.parse_args(["organism-build", "--out", "x"]).out == "x"
    assert ORGANISM.name in parser._subparsers._group_actions[0].choices["organism-build"].format_help()


def test_imports_and_a_tiny_model_print_nothing_on_stderr():
    """`import interp, sae, circuits` and building `interp.tiny("sd")` are silent: no
    torchvision/transformers fallback warnings, no progress bars, no deprecation noise."""
    import os

    code = "import interp, sae, circuits\ninterp.tiny('sd')\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
