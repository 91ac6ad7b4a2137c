"""`evaluate` sub-command end to end with a callable judge and a tiny CLIP judge."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from circuits.data import culturebench as cb
from circuits.data.cli import collect, evaluate, register_data
from tiny_hf import build_tiny_clip, build_tiny_llava

# The judge "recognises" a culture by the image's red channel: red = 10 * culture index.
def red_judge(images):
    out = torch.zeros(len(images), 16)
    for i, im in enumerate(images):
        out[i, min(15, round(np.asarray(im)[0, 0, 0] / 10))] = 1.0
    return out


def make_folder(root, cultures=("ja", "ar", "th"), seeds=2, wrong=("th",)):
    for c in cultures:
        (root / c).mkdir(parents=True)
        k = cb.CULTURES.index(c) if c not in wrong else 15
        for n in range(2):
            for s in range(seeds):
                Image.new("RGB", (8, 8), (10 * k, 0, 0)).save(root / c / f"p{n}_s{s}.png")
    return root


def parser():
    p = argparse.ArgumentParser(prog="culturelens")
    register_data(p.add_subparsers(dest="command", required=True))
    return p


def test_evaluate_cli_with_callable_judge(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    args = parser().parse_args(["evaluate", str(root), "--judge", "callable", "--callable",
                                "test_data_cli:red_judge", "--out", str(tmp_path / "out"), "--n-boot", "200"])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["n"] == 12 and res["accuracy"]["estimate"] == pytest.approx(8 / 12)
    assert res["per_culture"]["th"]["estimate"] == 0 and res["per_culture"]["ja"]["estimate"] == 1
    th = cb.CULTURES.index("th")
    assert res["confusion"][th][15] == 4
    assert {im["group"] for im in res["images"]} == {f"{c}/p{n}" for c in ("ja", "ar", "th") for n in range(2)}
    assert (tmp_path / "out" / "confusion.png").stat().st_size > 1000
    assert "| th | 4 | 0.000 |" in (tmp_path / "out" / "table.md").read_text()
    assert "| all | 12 | 0.667 |" in capsys.readouterr().out


def test_collect_culturebench_folder_and_errors(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    r = {**cb.bundled()[0].to_json(), "image": "img/a.png"}
    (tmp_path / "samples.jsonl").write_text(json.dumps(r, ensure_ascii=False) + "\n", encoding="utf-8")
    paths, cultures, groups = collect(tmp_path)
    assert cultures == ["ar"] and groups == [r["id"]] and paths[0].endswith("a.png")
    (tmp_path / "other" / "xx").mkdir(parents=True)
    with pytest.raises(cb.DataError, match="folder name is not a culture code"):
        collect(tmp_path / "other")


def test_evaluate_with_tiny_clip_judge(tmp_path):
    from circuits.data import judges

    root = make_folder(tmp_path / "imgs", cultures=("ko", "pl"))
    judge = judges.clip(build_tiny_clip(tmp_path / "clip"))
    res = evaluate(root, judge, tmp_path / "out", n_boot=100)
    assert res["n"] == 8 and len(res["images"][0]["probs"]) == 16
    assert abs(sum(res["images"][0]["probs"]) - 1) < 1e-4
    assert sum(map(sum, res["confusion"])) == 8


def test_clip_judge_requires_model(tmp_path):
    args = parser().parse_args(["evaluate", str(tmp_path), "--judge", "clip", "--out", str(tmp_path / "o")])
    from circuits.data.judges import JudgeError

    with pytest.raises(JudgeError, match="needs --model PATH"):
        args.func(args)


def test_evaluate_with_tiny_vlm_keeps_per_image_option_order_across_batches(tmp_path):
    from circuits.data import judges

    root = make_folder(tmp_path / "imgs", cultures=("it", "nl"), seeds=1)
    judge = judges.vlm(build_tiny_llava(tmp_path / "vlm"), seed=2, progress=False)
    one = evaluate(root, judge, tmp_path / "a", n_boot=50, batch_size=8)
    two = evaluate(root, judge, tmp_path / "b", n_boot=50, batch_size=1)
    assert one["n"] == 4
    assert [im["probs"] for im in one["images"]] == [im["probs"] for im in two["images"]]
