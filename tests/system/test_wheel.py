"""The wheel: built from a copy of the source, it carries the organism as package data, and an
install of it (not editable) finds the organism and runs the CLI from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: an in-tree build would write build/ into the shared working tree.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("interp", "sae", "circuits"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, cwd=src)
    (whl,) = out.glob("culturelens-*.whl")
    return whl


def test_wheel_carries_the_organism_and_the_packages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    org = "circuits/organism/assets/cultureworld/"
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / org).rglob("*") if p.is_file()]
    assert shipped and set(shipped) <= names, sorted(set(shipped) - names)[:5]
    for must in (org + "pipeline/model_index.json", org + "pipeline/pipeline.py", org + "judge/judge_config.json",
                 "circuits/organism/shipped.py", "interp/zoo/registry.py", "circuits/data/culturebench/bundled.jsonl",
                 "circuits/data/culturebench/bundled_ood.jsonl", "circuits/data/culturebench/README.md"):
        assert must in names, must
    assert wheel.name.startswith("culturelens-0.2.0-"), wheel.name
    # 0.2.0 moved the culture data to circuits: no old module paths ship
    assert not any(n.startswith(("interp/culturebench/", "interp/judges/")) for n in names)
    assert not {"interp/stats.py", "interp/data_cli.py", "circuits/stats_bridge.py", "interp/hooks.py"} & names
    assert not any(n.startswith(("tests/", "assets/", "benchmarks/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "culturelens = circuits.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_finds_the_organism_from_another_directory(wheel, tmp_path):
    # A fresh virtualenv whose only culturelens is the wheel; the dependencies come from this
    # interpreter's site-packages through a plain path line (so the editable install is not seen).
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    py = env / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    envvars = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CULTURELENS_PIPELINE")}
    code = (
        "import circuits, interp\n"
        "from circuits.organism.shipped import PIPELINE, JUDGE\n"
        "from circuits.analysis.cultureworld import ASSETS\n"
        f"assert circuits.__file__.startswith({site!r}), circuits.__file__\n"
        "assert ASSETS == PIPELINE.parent and PIPELINE.is_relative_to(circuits.__path__[0])\n"
        "m = interp.load(PIPELINE, trust_remote_code=True)\n"
        "from circuits.organism.judge import CultureWorldJudge\n"
        "j = CultureWorldJudge.load(JUDGE)\n"
        "print(m.family, len(m.sites('text')), type(j).__name__)\n"
    )
    out = subprocess.run([str(py), "-c", code], cwd=work, env=envvars, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["sd", "32", "CultureWorldJudge"], out.stdout + out.stderr
    cli = subprocess.run([str(env / "bin" / "culturelens"), "analyze", "--help"], cwd=work, env=envvars,
                         check=True, capture_output=True, text=True)
    assert "--quick" in cli.stdout
