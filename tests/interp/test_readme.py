"""The README's python code runs as written (on the tiny pipeline it builds)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert blocks, "README has no python code block"
    monkeypatch.chdir(tmp_path)  # the quickstart writes out/sae
    scope: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), scope)
    assert (tmp_path / "out" / "sae" / "cfg.json").is_file()
    assert scope["patched"].latents.shape == scope["clean"].latents.shape
    # the patching example shows a real effect: token by token, not one value everywhere
    effects = [r["effect"] for r in scope["res"].rows]
    assert len({round(e, 3) for e in effects}) > 3 and max(effects) > 0.05
